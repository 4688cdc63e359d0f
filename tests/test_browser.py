"""One real headless Chromium on the settings page: the show/hide toggle, a saved password that is
never shown again, and the test e-mail button, as an admin would use them.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; skipped otherwise.
"""

import shutil
from pathlib import Path

import pytest

from notifications import crypto
from notifications.models import NotificationSettings

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by the skip below
    webdriver = None

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[1] / "var" / "artifacts" / "settings-page.png"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1800",
)
PASSWORD = "Browser-typed-s3cret"

pytestmark = [
    pytest.mark.skipif(
        webdriver is None, reason="selenium is not installed (pip install -r requirements-dev.txt)"
    ),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="Chromium is not installed (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def browser(tmp_path):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # Both paths given, so Selenium Manager never looks for (or downloads) a browser or driver.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def staff(django_user_model, settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    return django_user_model.objects.create_superuser("ops", "ops@example.org", "Login-pw-123")


def wait_for(browser, css: str, text: str = ""):
    condition = (
        expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
        if text
        else expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    WebDriverWait(browser, 15).until(condition)
    return browser.find_element(By.CSS_SELECTOR, css)


def log_in(browser, live_server) -> None:
    browser.get(f"{live_server.url}/admin/notification-settings/")
    wait_for(browser, "#id_username").send_keys("ops")
    browser.find_element(By.ID, "id_password").send_keys("Login-pw-123")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, "#notificationsettings_form")


def test_settings_page_in_a_real_browser(browser, live_server, staff, smtp):
    log_in(browser, live_server)
    assert "No password set." in browser.page_source

    secret = browser.find_element(By.ID, "id_smtp_password")
    secret.send_keys(PASSWORD)
    toggle = browser.find_element(By.CSS_SELECTOR, "#id_smtp_password + button.secret-toggle")
    assert (secret.get_attribute("type"), toggle.text) == ("password", "Show")
    toggle.click()
    assert (secret.get_attribute("type"), toggle.text) == ("text", "Hide")
    assert secret.get_attribute("value") == PASSWORD  # what is being typed, nothing stored
    toggle.click()
    assert secret.get_attribute("type") == "password"

    browser.find_element(By.NAME, "_continue").click()
    wait_for(browser, ".messagelist .success", "was changed successfully")
    assert "A password is set." in browser.page_source
    assert PASSWORD not in browser.page_source
    assert browser.find_element(By.ID, "id_smtp_password").get_attribute("value") == ""
    assert NotificationSettings.objects.get().smtp_password_encrypted.startswith("v1:")

    address = browser.find_element(By.ID, "id_to")
    address.clear()
    address.send_keys("alerts@example.org")
    browser.find_element(By.ID, "send-test-email").click()
    message = wait_for(browser, ".messagelist .success", "The server answered: 250")
    assert "Test e-mail sent to alerts@example.org" in message.text
    assert smtp.messages[0].rcpt_tos == ["alerts@example.org"]

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, height + 100)  # the whole page, test e-mail form included
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))

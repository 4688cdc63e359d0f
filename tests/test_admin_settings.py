"""The notification settings page: write-only secrets, validation, the audit, the test e-mail."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from notifications import crypto
from notifications.models import AuditLogEntry, NotificationSettings
from notifications.smtp_config import update_settings
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db

PASSWORD = "Sup3r-secret-SMTP-pw"
TOKEN = "123456:telegram-token-value"
SETTINGS_URL = "/admin/notifications/notificationsettings/1/change/"
TEST_EMAIL_URL = "/admin/notifications/notificationsettings/send-test-email/"


@pytest.fixture(autouse=True)
def encryption_key(settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()


def form_data(**overrides) -> dict:
    data = {
        "smtp_host": "",
        "smtp_port": "",
        "use_tls": "",
        "use_ssl": "",
        "timeout": "",
        "smtp_username": "",
        "smtp_password": "",
        "from_email": "",
        "admin_emails": "",
        "alert_failure_rate": "0.1",
        "alert_window_minutes": "60",
        "alert_min_attempts": "20",
        "telegram_chat_id": "",
        "telegram_bot_token": "",
        "_continue": "Save and continue editing",
    }
    data.update(overrides)
    return data


def save(client, **overrides):
    return client.post(SETTINGS_URL, form_data(**overrides), follow=True)


def stored_row() -> dict:
    return NotificationSettings.objects.values().get()


def change_entries() -> list[AuditLogEntry]:
    return list(AuditLogEntry.objects.filter(action=AuditLogEntry.Action.CHANGE).order_by("id"))


def user_with(django_user_model, *codenames, username="staffer"):
    user = django_user_model.objects.create_user(username, f"{username}@example.org", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def test_the_list_and_the_short_address_lead_to_the_one_form(admin_client):
    assert admin_client.get(reverse("notification_settings")).url == SETTINGS_URL
    changelist = reverse("admin:notifications_notificationsettings_changelist")
    assert admin_client.get(changelist).url == SETTINGS_URL


def test_before_the_first_save_the_form_shows_the_environment_defaults(admin_client, settings):
    page = admin_client.get(SETTINGS_URL).content.decode()
    host = settings.NOTIFICATIONS["SMTP_HOST"]
    assert f"Blank: the environment's default, {host}." in page
    assert "No password set." in page
    assert "Environment default (off)" in page
    assert not NotificationSettings.objects.exists()  # looking creates nothing


def test_password_is_stored_encrypted_and_never_shown(admin_client):
    response = save(admin_client, smtp_host="smtp.example.org", smtp_password=PASSWORD)
    assert response.status_code == 200
    assert "was changed successfully" in response.content.decode()
    row = stored_row()
    assert row["smtp_password_encrypted"].startswith("v1:")
    assert all(PASSWORD not in str(value) for value in row.values())
    page = admin_client.get(SETTINGS_URL).content.decode()
    assert "A password is set." in page
    assert PASSWORD not in page
    assert row["smtp_password_encrypted"] not in page
    assert 'autocomplete="new-password"' in page


def test_saving_records_changed_field_names_only(admin_client):
    save(admin_client, smtp_host="smtp.example.org", smtp_password=PASSWORD)
    [entry] = change_entries()
    assert entry.actor == "admin:admin"
    assert sorted(entry.fields) == ["smtp_host", "smtp_password"]
    for entry in AuditLogEntry.objects.all():
        assert PASSWORD not in f"{entry.purpose} {entry.fields} {entry.outcome}"


def test_blank_password_keeps_the_stored_one(admin_client):
    save(admin_client, smtp_password=PASSWORD)
    token = stored_row()["smtp_password_encrypted"]
    save(admin_client, smtp_host="other.example.org")
    assert stored_row()["smtp_password_encrypted"] == token
    assert change_entries()[-1].fields == ["smtp_host"]


def test_clear_removes_the_stored_password(admin_client):
    save(admin_client, smtp_password=PASSWORD)
    response = save(admin_client, clear_smtp_password="on")
    assert stored_row()["smtp_password_encrypted"] == ""
    assert "No password set." in response.content.decode()
    assert change_entries()[-1].fields == ["smtp_password"]


def test_typing_a_password_and_clearing_it_at_once_is_refused(admin_client):
    save(admin_client, smtp_password=PASSWORD)
    token = stored_row()["smtp_password_encrypted"]
    response = save(admin_client, smtp_password="another", clear_smtp_password="on")
    assert "Either type a new value or clear the stored one, not both." in response.content.decode()
    assert stored_row()["smtp_password_encrypted"] == token


def test_telegram_token_is_write_only_too(admin_client):
    response = save(admin_client, telegram_chat_id="-100200", telegram_bot_token=TOKEN)
    page = response.content.decode()
    assert "A bot token is set." in page
    assert TOKEN not in page
    assert stored_row()["telegram_bot_token_encrypted"].startswith("v1:")
    save(admin_client, telegram_chat_id="-100200", clear_telegram_bot_token="on")
    assert stored_row()["telegram_bot_token_encrypted"] == ""


def test_secrets_are_hidden_from_error_reports(admin_client):
    response = admin_client.post(SETTINGS_URL, form_data(smtp_password=PASSWORD))
    assert set(response.wsgi_request.sensitive_post_parameters) == {
        "smtp_password",
        "telegram_bot_token",
    }


def test_starttls_and_ssl_together_are_refused_with_the_port_hint(admin_client):
    response = save(admin_client, use_tls="True", use_ssl="True", smtp_password=PASSWORD)
    page = response.content.decode()
    assert "Please correct the error below." in page
    assert "not both: port 587 usually means STARTTLS, 465 SSL/TLS." in page
    assert PASSWORD not in page  # a refused form does not echo the password either
    assert not NotificationSettings.objects.exists()


@pytest.mark.parametrize(
    ("port", "error"),
    [
        ("70000", "Ensure this value is less than or equal to 65535."),
        ("0", "Ensure this value is greater than or equal to 1."),
        ("smtp", "Enter a whole number."),
    ],
)
def test_a_port_outside_1_to_65535_is_refused(admin_client, port, error):
    page = save(admin_client, smtp_port=port).content.decode()
    assert error in page
    assert not NotificationSettings.objects.exists()


def test_addresses_are_validated(admin_client):
    response = save(admin_client, from_email="not an address", admin_emails="ok@example.org, x")
    page = response.content.decode()
    assert "&#x27;not an address&#x27; is not a valid e-mail address" in page
    assert "address: &#x27;x&#x27; is not a valid e-mail address" in page
    assert not NotificationSettings.objects.exists()


def test_alert_addresses_are_comma_separated_text(admin_client):
    page = save(admin_client, admin_emails=" a@example.org,b@example.org ,").content.decode()
    assert stored_row()["admin_emails"] == ["a@example.org", "b@example.org"]
    assert 'value="a@example.org, b@example.org"' in page


def test_tls_choice_round_trips(admin_client):
    save(admin_client, use_tls="True", smtp_port="587")
    row = stored_row()
    assert (row["use_tls"], row["use_ssl"], row["smtp_port"]) == (True, None, 587)
    page = admin_client.get(SETTINGS_URL).content.decode()
    assert '<option value="True" selected>On</option>' in page


def test_nobody_adds_or_deletes_the_settings_row(admin_client):
    assert admin_client.get("/admin/notifications/notificationsettings/add/").status_code == 403
    save(admin_client, smtp_host="smtp.example.org")
    delete = "/admin/notifications/notificationsettings/1/delete/"
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert NotificationSettings.objects.exists()


# --- The test e-mail button ------------------------------------------------------------------


def test_test_email_success_shows_the_server_reply(admin_client, smtp):
    page = admin_client.get(SETTINGS_URL).content.decode()
    assert 'value="Send test e-mail"' in page
    response = admin_client.post(TEST_EMAIL_URL, {"to": "ops@example.org"}, follow=True)
    assert response.redirect_chain[-1][0] == SETTINGS_URL
    page = response.content.decode()
    assert 'class="success"' in page
    assert "The server answered: 250 Message accepted for delivery" in page
    assert smtp.messages[0].rcpt_tos == ["ops@example.org"]
    entry = AuditLogEntry.objects.get(action=AuditLogEntry.Action.TEST_SEND)
    assert (entry.actor, entry.outcome) == ("admin:admin", "ok")


def test_test_email_to_a_closed_port_says_nothing_accepted_it(admin_client, smtp):
    port = free_port()
    update_settings(actor="test", changes={"smtp_port": port})
    response = admin_client.post(TEST_EMAIL_URL, {"to": "ops@example.org"}, follow=True)
    page = response.content.decode()
    assert 'class="error"' in page
    assert f"Nothing accepted a connection on 127.0.0.1:{port}" in page
    assert smtp.count() == 0


def test_test_email_without_an_address_is_an_error_message(admin_client, smtp):
    page = admin_client.post(TEST_EMAIL_URL, {"to": ""}, follow=True).content.decode()
    assert "Enter an address for the test e-mail." in page
    assert smtp.count() == 0


def test_test_email_is_post_only(admin_client):
    assert admin_client.get(TEST_EMAIL_URL).status_code == 405


def test_test_email_needs_its_own_permission(client, django_user_model, smtp):
    editor = user_with(
        django_user_model, "view_notificationsettings", "change_notificationsettings"
    )
    client.force_login(editor)
    page = client.get(SETTINGS_URL).content.decode()
    assert "Send test e-mail" not in page
    assert client.post(TEST_EMAIL_URL, {"to": "ops@example.org"}).status_code == 403
    assert smtp.count() == 0


def test_sender_with_only_the_test_permission_sees_no_settings(client, django_user_model, smtp):
    sender = user_with(django_user_model, "send_test_email")
    client.force_login(sender)
    assert client.get(SETTINGS_URL).status_code == 403
    response = client.post(TEST_EMAIL_URL, {"to": "ops@example.org"})
    assert response.status_code == 302
    assert smtp.count() == 1


# --- Who may see and change the settings ---------------------------------------------------


def test_a_viewer_sees_the_form_but_cannot_save_it(client, django_user_model):
    update_settings(actor="test", changes={"smtp_host": "smtp.example.org"}, smtp_password=PASSWORD)
    client.force_login(user_with(django_user_model, "view_notificationsettings"))
    page = client.get(SETTINGS_URL).content.decode()
    assert "smtp.example.org" in page
    assert "A password is set." in page
    assert 'name="smtp_password"' not in page
    assert PASSWORD not in page
    assert client.post(SETTINGS_URL, form_data(smtp_password="new")).status_code == 403
    assert stored_row()["smtp_host"] == "smtp.example.org"


SETTINGS_ENDPOINTS = [
    ("get", "/admin/notification-settings/"),
    ("get", "/admin/notifications/notificationsettings/"),
    ("get", SETTINGS_URL),
    ("post", SETTINGS_URL),
    ("get", "/admin/notifications/notificationsettings/1/history/"),
    ("post", TEST_EMAIL_URL),
]


@pytest.mark.parametrize(("method", "url"), SETTINGS_ENDPOINTS)
def test_anonymous_and_non_staff_are_sent_to_the_login(client, django_user_model, method, url):
    for user in (None, django_user_model.objects.create_user("member", password="x" * 12)):
        if user:
            client.force_login(user)
        response = getattr(client, method)(url, form_data(smtp_password=PASSWORD, to="a@b.org"))
        assert response.status_code == 302
        assert response.url.startswith("/admin/login/")
    assert not NotificationSettings.objects.exists()
    assert not AuditLogEntry.objects.exists()


@pytest.mark.parametrize(("method", "url"), SETTINGS_ENDPOINTS[1:])
def test_staff_without_permissions_are_refused(client, django_user_model, method, url):
    client.force_login(user_with(django_user_model))
    response = getattr(client, method)(url, form_data(smtp_password=PASSWORD, to="a@b.org"))
    assert response.status_code == 403
    assert not NotificationSettings.objects.exists()

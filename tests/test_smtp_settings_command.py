"""`manage.py smtp_settings show|set`: secrets masked, read only from stdin or a prompt."""

import io
import json
import sys

import pytest
from django.core.management import CommandError, call_command

from notifications import crypto, smtp_config
from notifications.models import AuditLogEntry

pytestmark = pytest.mark.django_db
PASSWORD = "cli-secret-4b7a"


@pytest.fixture(autouse=True)
def key(settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()


def run(*args, stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command("smtp_settings", *args, stdout=out)
    return out.getvalue()


def test_set_reads_the_password_from_stdin_and_show_masks_it(monkeypatch):
    output = run(
        "set",
        "--host",
        "smtp.example.org",
        "--port",
        "587",
        "--use-tls",
        "--username",
        "mailer",
        "--password-stdin",
        stdin=PASSWORD + "\n",
        monkeypatch=monkeypatch,
    )
    assert "Saved" in output and PASSWORD not in output
    shown = json.loads(run("show", "--json"))
    assert shown["host"] == "smtp.example.org" and shown["port"] == 587
    assert shown["use_tls"] is True and shown["use_ssl"] is False
    assert shown["password"] == "set (encrypted)"
    assert PASSWORD not in run("show")
    assert smtp_config.current_smtp_settings(actor="cli").password == PASSWORD
    change = AuditLogEntry.objects.get(action="change")
    assert change.actor == "cli" and "smtp_password" in change.fields


def test_the_password_is_never_an_argument():
    with pytest.raises(CommandError):
        call_command("smtp_settings", "set", "--password", PASSWORD)


def test_tls_and_ssl_together_are_refused():
    with pytest.raises(CommandError, match="not both"):
        run("set", "--use-tls", "--use-ssl")


def test_a_port_out_of_range_is_refused():
    with pytest.raises(CommandError, match="between 1 and 65535"):
        run("set", "--port", "70000")


def test_an_invalid_from_address_is_refused():
    with pytest.raises(CommandError, match="from_email"):
        run("set", "--from-email", "not an address")


def test_clear_password_removes_it(monkeypatch):
    run("set", "--password-stdin", stdin=PASSWORD, monkeypatch=monkeypatch)
    run("set", "--clear-password")
    assert json.loads(run("show", "--json"))["password"] == "not set"


def test_nothing_to_change_is_an_error():
    with pytest.raises(CommandError, match="nothing to change"):
        run("set")

"""send_test_email against real SMTP servers: what the admin reads for each outcome."""

import shlex
import shutil
import socket
import ssl
import subprocess

import pytest
from aiosmtpd.controller import Controller

from notifications import crypto
from notifications.models import AuditLogEntry
from notifications.smtp_config import update_settings
from notifications.test_email import send_test_email
from tests.support.processes import free_port
from tests.support.smtp_sink import Credentials, SinkHandler, SmtpSink

pytestmark = pytest.mark.django_db
PASSWORD = "s3cret-Pa55word"


@pytest.fixture(autouse=True)
def encryption_key(settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()


def configure(**changes):
    return update_settings(actor="test", changes=changes)


def test_success_shows_the_server_reply_and_delivers(smtp):
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert result.ok
    assert "250 Message accepted for delivery" in result.message
    assert "ops@example.org" in result.message
    [received] = smtp.messages
    assert received.rcpt_tos == ["ops@example.org"]
    assert received.message["Subject"] == "Test e-mail from vertex_email"
    entry = AuditLogEntry.objects.get(action=AuditLogEntry.Action.TEST_SEND)
    assert (entry.actor, entry.fields, entry.outcome) == ("admin:alice", [], "ok")


def test_invalid_address_sends_nothing(smtp):
    result = send_test_email(to="not an address", actor="admin:alice")
    assert not result.ok
    assert "not a valid e-mail address" in result.message
    assert smtp.count() == 0
    assert AuditLogEntry.objects.get().outcome == "failed: invalid address"


def test_refused_login_says_so_and_never_shows_the_password(smtp):
    sink = SmtpSink(free_port(), credentials=Credentials("mailer", "the-right-one"))
    sink.start()
    try:
        configure(smtp_port=sink.port, smtp_username="mailer")
        update_settings(actor="test", smtp_password=PASSWORD)
        result = send_test_email(to="ops@example.org", actor="admin:alice")
    finally:
        sink.stop()
    assert not result.ok
    assert result.message.startswith("The server refused the username or password (535")
    assert PASSWORD not in result.message
    for entry in AuditLogEntry.objects.all():
        assert PASSWORD not in f"{entry.purpose} {entry.fields} {entry.outcome}"
    test_send = AuditLogEntry.objects.get(action=AuditLogEntry.Action.TEST_SEND)
    assert test_send.outcome == "failed: authentication refused (535)"


def test_nothing_listening_names_host_and_port(smtp):
    port = free_port()
    configure(smtp_port=port)
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert result.message.startswith(f"Nothing accepted a connection on 127.0.0.1:{port}")


def test_silent_server_times_out_with_the_timeout_named(smtp):
    with socket.socket() as silent:  # accepts connections (backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        configure(smtp_port=port, timeout=0.5)
        result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert result.message.startswith(f"No answer from 127.0.0.1:{port} within 0.5 s")


def test_ssl_against_a_plain_server_explains_the_ports(smtp):
    configure(use_ssl=True)
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert "TLS handshake" in result.message
    assert "587" in result.message
    assert "465" in result.message


def test_starttls_the_server_does_not_offer(smtp):
    configure(use_tls=True)
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert "does not offer" in result.message
    assert "STARTTLS" in result.message


def test_permanent_refusal_shows_code_and_server_text(smtp):
    smtp.data_replies.append("554 5.7.1 Rejected by policy")
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert "refused the message: 554 5.7.1 Rejected by policy" in result.message


def test_temporary_refusal_shows_code_and_server_text(smtp):
    smtp.refused["ops@example.org"] = "450 4.2.1 Mailbox busy, try later"
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert (
        "temporarily refused the recipient ops@example.org: 450 4.2.1 Mailbox busy, try later"
    ) in result.message


def test_unreadable_stored_password_is_a_clear_failure(smtp, settings):
    configure(smtp_username="mailer")
    update_settings(actor="test", smtp_password=PASSWORD)
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()  # the key it was stored under is gone
    result = send_test_email(to="ops@example.org", actor="admin:alice")
    assert not result.ok
    assert "stored SMTP password cannot be read" in result.message
    assert PASSWORD not in result.message
    assert smtp.count() == 0


def test_certificate_the_client_does_not_trust_is_named(smtp, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = f"openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout {key}"
    subprocess.run([*shlex.split(command), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    server = Controller(SinkHandler(), hostname="127.0.0.1", port=port, ssl_context=context)
    server.start()
    try:
        configure(smtp_port=port, use_ssl=True)
        result = send_test_email(to="ops@example.org", actor="admin:alice")
    finally:
        server.stop()
    assert not result.ok
    assert result.message.startswith(f"The TLS certificate of 127.0.0.1:{port} was not accepted")
    assert "self-signed certificate" in result.message

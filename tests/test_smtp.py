"""The SMTP client: error classification, kept-open connections, reconnecting."""

import smtplib
import socket
import ssl

import pytest

from notifications.conf import SmtpSettings
from notifications.exceptions import PermanentSendError, SmtpConfigurationError, TransientSendError
from notifications.smtp import SmtpClient, classify
from tests.support.processes import free_port
from tests.support.smtp_sink import SmtpSink


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (smtplib.SMTPDataError(451, b"local error"), TransientSendError, 451),
        (smtplib.SMTPDataError(554, b"rejected"), PermanentSendError, 554),
        (smtplib.SMTPSenderRefused(421, b"closing", "a@x.org"), TransientSendError, 421),
        (smtplib.SMTPSenderRefused(553, b"not allowed", "a@x.org"), PermanentSendError, 553),
        (smtplib.SMTPRecipientsRefused({"a@x.org": (550, b"no")}), PermanentSendError, 550),
        (smtplib.SMTPRecipientsRefused({"a@x.org": (450, b"busy")}), TransientSendError, 450),
        (
            smtplib.SMTPRecipientsRefused({"a@x.org": (552, b"too many recipients")}),
            TransientSendError,
            552,
        ),
        (
            smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"),
            SmtpConfigurationError,
            535,
        ),
        (
            smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
            TransientSendError,
            None,
        ),
        (ConnectionRefusedError(111, "refused"), TransientSendError, None),
        (ConnectionResetError(104, "reset"), TransientSendError, None),
        (TimeoutError("timed out"), TransientSendError, None),
        (socket.gaierror(-2, "Name or service not known"), TransientSendError, None),
        (ssl.SSLEOFError(8, "EOF in violation of protocol"), TransientSendError, None),
        (
            smtplib.SMTPNotSupportedError("STARTTLS extension not supported"),
            SmtpConfigurationError,
            None,
        ),
    ],
)
def test_every_failure_is_classified_once(error, kind, code):
    classified = classify(error)
    assert type(classified) is kind
    assert classified.code == code


def test_authentication_error_text_does_not_echo_the_server_reply():
    error = classify(smtplib.SMTPAuthenticationError(535, b"5.7.8 user bob pass hunter2 bad"))
    assert "hunter2" not in str(error)
    assert "check the username and password" in str(error)


def settings_for(port: int) -> SmtpSettings:
    return SmtpSettings("127.0.0.1", port, False, False, 5.0, "from@example.org")


def send(client: SmtpClient, port: int, to: str = "to@example.org"):
    message = f"Subject: t\r\nMessage-ID: <{to}>\r\n\r\nbody\r\n".encode()
    return client.send(
        settings=settings_for(port),
        envelope_from="from@example.org",
        recipients=[to],
        message=message,
    )


@pytest.fixture
def sink():
    server = SmtpSink(free_port())
    server.start()
    yield server
    server.stop()


def test_one_connection_carries_many_messages(sink):
    client = SmtpClient()
    for i in range(5):
        assert send(client, sink.port, f"u{i}@example.org").response.startswith("250")
    client.close()
    assert (sink.handler.count(), sink.handler.greetings) == (5, 1)


def test_a_connection_the_server_dropped_is_replaced_without_losing_the_message(sink):
    client = SmtpClient()
    send(client, sink.port, "first@example.org")
    client._smtp.sock.shutdown(socket.SHUT_RDWR)  # as if the server had timed us out
    send(client, sink.port, "second@example.org")
    client.close()
    assert sink.handler.count() == 2
    assert sink.handler.greetings == 2


def test_changed_settings_open_a_new_connection(sink):
    other = SmtpSink(free_port())
    other.start()
    try:
        client = SmtpClient()
        send(client, sink.port)
        send(client, other.port)
        client.close()
        assert (sink.handler.count(), other.handler.count()) == (1, 1)
    finally:
        other.stop()


def test_nothing_listening_is_a_transient_error():
    with pytest.raises(TransientSendError, match="refused"):
        send(SmtpClient(), free_port())


def test_a_server_that_stalls_past_the_timeout_is_a_transient_error(sink):
    sink.handler.accept_delay = 3
    client = SmtpClient()
    stalled = SmtpSettings("127.0.0.1", sink.port, False, False, 0.5, "from@example.org")
    with pytest.raises(TransientSendError, match="timed out"):
        client.send(
            settings=stalled,
            envelope_from="f@example.org",
            recipients=["t@example.org"],
            message=b"Subject: t\r\n\r\nbody\r\n",
        )


def test_tls_to_a_plain_server_is_a_configuration_error(sink):
    wrong = SmtpSettings("127.0.0.1", sink.port, False, True, 2.0, "from@example.org")
    with pytest.raises(SmtpConfigurationError, match=r"TLS handshake failed.*465 is SSL"):
        SmtpClient().send(
            settings=wrong,
            envelope_from="f@example.org",
            recipients=["t@example.org"],
            message=b"Subject: t\r\n\r\nbody\r\n",
        )


def test_starttls_unsupported_is_a_configuration_error(sink):
    wrong = SmtpSettings("127.0.0.1", sink.port, True, False, 2.0, "from@example.org")
    with pytest.raises(SmtpConfigurationError, match="does not support"):
        SmtpClient().send(
            settings=wrong,
            envelope_from="f@example.org",
            recipients=["t@example.org"],
            message=b"Subject: t\r\n\r\nbody\r\n",
        )


def test_settings_repr_never_shows_the_password():
    secret = SmtpSettings("h", 25, False, False, 5, "f@example.org", "user", "hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)

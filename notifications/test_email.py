"""Send one test e-mail with the saved SMTP settings and say, in words, what the server did."""

import smtplib
import socket
import ssl
from dataclasses import dataclass, replace

from django.core.mail import EmailMessage

from .composition import envelope_address, new_message_id
from .conf import SmtpSettings
from .exceptions import (
    EmailRejected,
    PermanentSendError,
    SendError,
    SmtpConfigurationError,
    TransientSendError,
)
from .models import AuditLogEntry
from .smtp import SmtpClient
from .smtp_config import audit, current_smtp_settings

SUBJECT = "Test e-mail from vertex_email"
BODY = (
    "This is a test e-mail sent from the notification settings page.\n"
    "If you can read it, the SMTP settings work.\n"
)


@dataclass(frozen=True)
class TestEmailResult:
    __test__ = False  # not a pytest test class, despite the name

    ok: bool
    message: str
    reason: str = ""  # short, for the audit log


def send_test_email(*, to: str, actor: str) -> TestEmailResult:
    """Send a small message to `to` now, bypassing the queue; a failure is a result, not raised."""
    try:
        address = envelope_address("to", to)
    except EmailRejected as error:
        message = f"Not sent: {error}. Enter one address, such as you@example.org."
        result, purpose = TestEmailResult(False, message, "invalid address"), ""
    else:
        result, purpose = _send_to(address, actor), f" to {address}"
    audit(
        actor,
        AuditLogEntry.Action.TEST_SEND,
        purpose=f"test e-mail{purpose}",
        fields=[],
        outcome="ok" if result.ok else f"failed: {result.reason}",
    )
    return result


def _send_to(address: str, actor: str) -> TestEmailResult:
    try:
        settings = current_smtp_settings(actor=actor, purpose="test e-mail")
    except SmtpConfigurationError as error:  # the stored password cannot be decrypted
        return TestEmailResult(
            False,
            f"Not sent: the stored SMTP password cannot be read. {error}",
            "password unreadable",
        )
    try:
        result = _send(settings, address)
    except SendError as error:
        result = _failure(error, settings)
    if settings.password and settings.password in result.message:
        # Belt and braces: a server reply that echoes the password goes no further.
        result = replace(result, message=result.message.replace(settings.password, "********"))
    return result


def _send(settings: SmtpSettings, address: str) -> TestEmailResult:
    try:
        envelope_from = envelope_address("from_email", settings.from_email)
    except EmailRejected as error:
        return TestEmailResult(
            False, f"Not sent: the from address is not valid ({error}).", "invalid from address"
        )
    # A Message-ID of our own: Django's default would look up this machine's DNS name.
    headers = {"Message-ID": new_message_id()}
    message = EmailMessage(SUBJECT, BODY, settings.from_email, [address], headers=headers)
    client = SmtpClient()
    try:
        sent = client.send(
            settings=settings,
            envelope_from=envelope_from,
            recipients=[address],
            message=message.message().as_bytes(linesep="\r\n"),
        )
    finally:
        client.close()
    return TestEmailResult(
        True,
        f"Test e-mail sent to {address} through {_where(settings)}. "
        f"The server answered: {sent.response}",
    )


def _where(settings: SmtpSettings) -> str:
    return f"{settings.host}:{settings.port}"


def _causes(error: BaseException, limit: int = 10) -> list[BaseException]:
    """The exceptions behind `error`: smtplib often wraps the socket's in its own."""
    found: list[BaseException] = []
    while (error := error.__cause__ or error.__context__) is not None and len(found) < limit:
        found.append(error)
    return found


def _ssl_reason(causes: list[BaseException]) -> str:
    error = next(cause for cause in causes if isinstance(cause, ssl.SSLError))
    return getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)


def _failure(error: SendError, settings: SmtpSettings) -> TestEmailResult:
    """Words an admin can act on, for each way a send fails."""
    causes = _causes(error)
    where = _where(settings)
    if any(isinstance(cause, smtplib.SMTPAuthenticationError) for cause in causes):
        # The server's text is left out on purpose: some servers echo what was sent.
        return TestEmailResult(
            False,
            f"The server refused the username or password ({error.code} authentication "
            f"failed at {where}). Check both, save them again, and retry.",
            f"authentication refused ({error.code})",
        )
    if any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes):
        return TestEmailResult(
            False,
            f"The TLS certificate of {where} was not accepted ({_ssl_reason(causes)}). Check "
            "that the host is the name on the server's certificate.",
            "TLS certificate not accepted",
        )
    if any(isinstance(cause, ssl.SSLError) for cause in causes):
        return TestEmailResult(
            False,
            f"The TLS handshake with {where} failed ({_ssl_reason(causes)}). Port 587 usually "
            "means STARTTLS and port 465 SSL/TLS: check that the port and the STARTTLS / SSL/TLS "
            "choice match.",
            "TLS handshake failed",
        )
    if any(isinstance(cause, smtplib.SMTPNotSupportedError) for cause in causes):
        return TestEmailResult(
            False,
            f"The server at {where} does not offer what the settings ask for ({error}). If "
            "STARTTLS is on, the server may not support it (try SSL/TLS on port 465); if a "
            "username is set, the server may not accept logins on this port.",
            "not supported by the server",
        )
    return _network_or_reply(error, settings, causes)


def _network_or_reply(
    error: SendError, settings: SmtpSettings, causes: list[BaseException]
) -> TestEmailResult:
    where = _where(settings)
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return TestEmailResult(
            False,
            f"Nothing accepted a connection on {where}. Check the host and port, and that the "
            "SMTP server is running and reachable from this machine.",
            "connection refused",
        )
    if any(isinstance(cause, (TimeoutError, socket.timeout)) for cause in causes):
        hint = " Port 465 expects SSL/TLS from the start." if settings.port == 465 else ""
        return TestEmailResult(
            False,
            f"No answer from {where} within {settings.timeout:g} s. Check the host, the port "
            f"and any firewall in between.{hint}",
            "timed out",
        )
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return TestEmailResult(
            False,
            f"The host name {settings.host!r} could not be resolved. Check the SMTP host.",
            "host not found",
        )
    if error.code is not None:
        kind = "refused" if isinstance(error, PermanentSendError) else "temporarily refused"
        if error.refused:  # the one recipient was refused: show that reply, not the summary
            address, (code, text) = next(iter(error.refused.items()))
            return TestEmailResult(
                False,
                f"The server at {where} {kind} the recipient {address}: {code} {text}",
                f"recipient {kind} ({code})",
            )
        return TestEmailResult(
            False, f"The server at {where} {kind} the message: {error}", f"{kind} ({error.code})"
        )
    what = "connection failed" if isinstance(error, TransientSendError) else "failed"
    return TestEmailResult(False, f"Sending through {where} {what}: {error}", what)

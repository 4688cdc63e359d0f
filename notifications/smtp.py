"""The only SMTP code: kept-open connections (one per thread that sends), sending, and error
classification."""

import contextlib
import logging
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .composition import BARE_ADDRESS
from .conf import SmtpSettings
from .exceptions import PermanentSendError, SendError, SmtpConfigurationError, TransientSendError

logger = logging.getLogger(__name__)

IDLE_CHECK_SECONDS = 10.0  # a connection idle longer than this is checked with NOOP before use


@dataclass
class SendResult:
    response: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _by_code(code: int, text: str, **extra) -> SendError:
    # RFC 5321 4.5.3.1.10: 552 "too many recipients" is really temporary.
    if 400 <= code < 500 or (code == 552 and "recipient" in text.lower()):
        return TransientSendError(f"{code} {text}", code=code, **extra)
    return PermanentSendError(f"{code} {text}", code=code, **extra)


def classify(exc: BaseException) -> SendError:
    """Map any error from smtplib or the socket onto transient, permanent or configuration."""
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SmtpConfigurationError(
            f"SMTP authentication refused ({exc.smtp_code}); check the username and password",
            code=exc.smtp_code,
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return SmtpConfigurationError(f"the SMTP server does not support what we asked: {exc}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = {r: (c, _text(m)) for r, (c, m) in exc.recipients.items()}
        code, text = next(((c, m) for c, m in refused.values() if 400 <= c < 500), None) or next(
            iter(refused.values())
        )
        return _by_code(code, f"all recipients refused: {text}", refused=refused)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, _text(exc.smtp_error))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TransientSendError(f"timed out talking to the SMTP server: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return TransientSendError("connection to the SMTP server refused")
    if isinstance(exc, OSError):  # SMTPServerDisconnected, resets, DNS failures
        return TransientSendError(
            f"connection to the SMTP server failed: {exc or type(exc).__name__}"
        )
    return TransientSendError(f"unexpected error while sending: {type(exc).__name__}: {exc}")


class SmtpClient:
    """One SMTP connection kept open between sends; reopened when it breaks or settings change."""

    def __init__(self) -> None:
        self._smtp: smtplib.SMTP | None = None
        self._settings: SmtpSettings | None = None
        self._last_used = 0.0

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _open(self, settings: SmtpSettings) -> smtplib.SMTP:
        try:
            return self._connect(settings)
        except ssl.SSLError as exc:  # at connect time this is our TLS configuration, not the mail
            raise SmtpConfigurationError(
                f"TLS handshake failed ({getattr(exc, 'reason', None) or exc}); "
                "check SMTP_USE_TLS/SMTP_USE_SSL and the port (587 is STARTTLS, 465 is SSL)"
            ) from exc

    @staticmethod
    def _connect(settings: SmtpSettings) -> smtplib.SMTP:
        local_hostname = socket.gethostname()
        if settings.use_ssl:
            smtp = smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                local_hostname=local_hostname,
                timeout=settings.timeout,
                context=ssl.create_default_context(),
            )
        else:
            smtp = smtplib.SMTP(
                settings.host,
                settings.port,
                local_hostname=local_hostname,
                timeout=settings.timeout,
            )
        try:
            if settings.use_tls:
                _starttls(smtp)
            if settings.username:
                smtp.login(settings.username, settings.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _connection(self, settings: SmtpSettings) -> tuple[smtplib.SMTP, bool]:
        """The open connection for `settings` and whether it was reused."""
        if self._smtp is not None and self._settings != settings:
            self.close()
        if self._smtp is not None and time.monotonic() - self._last_used > IDLE_CHECK_SECONDS:
            try:
                self._smtp.noop()
            except (smtplib.SMTPException, OSError):
                self.close()
        if self._smtp is not None:
            return self._smtp, True
        self._smtp, self._settings = self._open(settings), settings
        return self._smtp, False

    def send(
        self, *, settings: SmtpSettings, envelope_from: str, recipients: list[str], message: bytes
    ) -> SendResult:
        """Send once. Raises TransientSendError, PermanentSendError or SmtpConfigurationError."""
        try:
            smtp, reused = self._connection(settings)
            try:
                return self._transaction(smtp, envelope_from, recipients, message)
            except _BeforeData:
                if not reused:
                    raise
                # A kept-open connection the server had closed: nothing was sent, so try afresh.
                self.close()
                smtp, _ = self._connection(settings)
                return self._transaction(smtp, envelope_from, recipients, message)
        except _BeforeData as failure:
            self.close()
            raise classify(failure.__cause__) from failure.__cause__
        except SendError:
            raise
        except Exception as exc:
            self.close()
            raise classify(exc) from exc
        finally:
            self._last_used = time.monotonic()

    def _transaction(
        self, smtp: smtplib.SMTP, envelope_from: str, recipients: list[str], message: bytes
    ) -> SendResult:
        """MAIL, RCPT and DATA, as smtplib.sendmail does, but knowing how far we got: a failure
        before the content goes out leaves the server with nothing of this message."""
        try:
            smtp.ehlo_or_helo_if_needed()
            options = [f"size={len(message)}"] if smtp.does_esmtp and smtp.has_extn("size") else []
            if smtp.does_esmtp and smtp.has_extn("pipelining"):
                mail, rcpts, data = _pipelined_envelope(smtp, envelope_from, options, recipients)
            else:
                mail, rcpts, data = _envelope(smtp, envelope_from, options, recipients)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if isinstance(exc, smtplib.SMTPResponseException):
                raise
            raise _BeforeData() from exc
        if mail[0] != 250:
            self._abandon(smtp, data)
            raise classify(smtplib.SMTPSenderRefused(*mail, envelope_from))
        refused = {
            recipient: (code, _text(reply))
            for recipient, (code, reply) in zip(recipients, rcpts, strict=True)
            if code not in (250, 251)
        }
        if len(refused) == len(recipients):
            self._abandon(smtp, data)
            raise classify(smtplib.SMTPRecipientsRefused(refused))
        if data[0] != 354:
            self._reset(smtp)
            raise classify(smtplib.SMTPDataError(*data))
        smtp.send(_data_block(message))
        code, reply = smtp.getreply()
        if code != 250:
            self._reset(smtp)
            raise _by_code(code, _text(reply))
        return SendResult(response=f"{code} {_text(reply)}", refused=refused)

    def _abandon(self, smtp: smtplib.SMTP, data: "Reply | None") -> None:
        """End a refused transaction. A server that took DATA anyway (pipelined, after every
        recipient was refused) gets an empty message, which goes to nobody (RFC 2920 3.1)."""
        if data is not None and data[0] == 354:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.send(b".\r\n")
                smtp.getreply()
        self._reset(smtp)

    @staticmethod
    def _reset(smtp: smtplib.SMTP) -> None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.rset()


def _starttls(smtp: smtplib.SMTP) -> None:
    """STARTTLS, where any refusal is our configuration (a server or port without TLS)."""
    try:
        smtp.starttls(context=ssl.create_default_context())
    except smtplib.SMTPResponseException as exc:
        raise SmtpConfigurationError(
            f"the SMTP server refused STARTTLS ({exc.smtp_code} {_text(exc.smtp_error)}); check "
            "SMTP_USE_TLS and the port (587 is STARTTLS, 465 is SSL)",
            code=exc.smtp_code,
        ) from exc


Reply = tuple[int, bytes]


def _envelope(
    smtp: smtplib.SMTP, envelope_from: str, options: list[str], recipients: list[str]
) -> tuple[Reply, list[Reply], Reply | None]:
    """One command at a time, each awaiting its reply: MAIL, each RCPT, then DATA unless MAIL or
    every RCPT was refused. Returns their replies (DATA's None when it was not sent)."""
    mail = smtp.mail(envelope_from, options)
    if mail[0] != 250:
        return mail, [], None
    rcpts = [smtp.rcpt(recipient) for recipient in recipients]
    if not any(code in (250, 251) for code, _ in rcpts):
        return mail, rcpts, None
    smtp.putcmd("data")
    return mail, rcpts, smtp.getreply()


def _pipelined_envelope(
    smtp: smtplib.SMTP, envelope_from: str, options: list[str], recipients: list[str]
) -> tuple[Reply, list[Reply], Reply]:
    """MAIL, every RCPT and DATA in one write, then their replies in order (RFC 2920, for a
    server that offers PIPELINING): two round trips a message instead of three and one a
    recipient. Against a relay 20 ms away that is 40 ms instead of 80 for a message to one."""
    option_list = "".join(f" {option}" for option in options)
    commands = [f"mail FROM:{_quoted(envelope_from)}{option_list}"]
    commands += [f"rcpt TO:{_quoted(recipient)}" for recipient in recipients]
    commands.append("data")
    if any("\r" in command or "\n" in command for command in commands):
        raise ValueError("a line break in an SMTP command (addresses are checked at enqueue)")
    smtp.send("".join(f"{command}\r\n" for command in commands))
    mail = smtp.getreply()
    rcpts = [smtp.getreply() for _ in recipients]
    return mail, rcpts, smtp.getreply()


def _quoted(address: str) -> str:
    """`<address>`, as smtplib.quoteaddr gives it for a bare address (the usual case: enqueue
    stores addresses bare), without its header parser: 10 us an address on this machine."""
    return f"<{address}>" if BARE_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _data_block(message: bytes) -> bytes:
    """The message as DATA carries it: a leading dot doubled, then CRLF . CRLF (smtplib.data)."""
    block = LEADING_DOT.sub(b"..", message)
    if not block.endswith(b"\r\n"):
        block += b"\r\n"
    return block + b".\r\n"


LEADING_DOT = re.compile(rb"(?m)^\.")


class _BeforeData(Exception):
    """The connection failed before DATA began, so the server has nothing of this message."""


_local = threading.local()
_clients: list[SmtpClient] = []  # every thread's, so that closing reaches them all
_clients_lock = threading.Lock()


def get_client() -> SmtpClient:
    """This thread's client: a prefork child has one, a thread pool one per thread."""
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = SmtpClient()
        with _clients_lock:
            _clients.append(client)
    return client


def close_client() -> None:
    """Close every connection of this process: the task threads' and the sending threads'."""
    with _clients_lock:
        clients = list(_clients)
    for client in clients:
        client.close()


def sending_threads(size: int) -> ThreadPoolExecutor:
    """This thread's `size` sending threads, each keeping its own connection open (get_client):
    a task sends a batch over them with `size` messages on the wire at once."""
    pool, pool_size = getattr(_local, "pool", (None, 0))
    if pool is None or pool_size != size:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="smtp-send")
        _local.pool = (pool, size)
    return pool


def _forget_after_fork() -> None:
    """A forked child (a prefork pool process) has none of the parent's threads, and its sockets
    belong to the parent: start afresh, without closing them."""
    global _local, _clients_lock
    _local, _clients_lock = threading.local(), threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_after_fork)

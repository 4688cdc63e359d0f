"""Turn a Django EmailMessage into the fields of a job, refusing bad input with a clear error.

Everything is validated here, at enqueue time, and the Message-ID fixed. A simple message (text
and/or HTML, no attachments, see `_lazy_layout`) is rendered by the worker from the job's fields
(`wire_message`), to the very bytes rendering it here would give; any other is rendered here.
"""

import copy
import functools
import os
import re
import secrets
import time
from email.generator import BytesGenerator
from email.message import Message
from email.policy import Compat32
from email.utils import formatdate, parseaddr
from io import BytesIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.message import (
    ADDRESS_HEADERS,
    EmailAlternative,
    forbid_multi_line_headers,
    sanitize_address,
)
from django.core.validators import DomainNameValidator, EmailValidator, validate_email
from django.utils.regex_helper import _lazy_re_compile

from .conf import option
from .exceptions import (
    EmailRejected,
    HeaderInjection,
    InvalidAddress,
    MessageTooLarge,
    NoRecipients,
)
from .models import EmailJob

# A plain ASCII address without display name, quotes, comments or encoded words.
BARE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
MAX_LOCAL_PART = 64  # RFC 5321 section 4.5.3.1.1
ENCODING = "utf-8"
Layout = EmailJob.Layout
# A header name as RFC 5322 has it: printable ASCII but the colon.
FIELD_NAME = re.compile(r"[!-9;-~]+")
# Most a simple message can grow when rendered: quoted-printable makes a byte "=XX" and breaks
# lines every 76 characters (3.1 times); the headers and MIME lines fit in the fixed 4 KiB.
WORST_CASE_GROWTH = 4
RENDERING_OVERHEAD = 4096


class _QuickFolding(Compat32):
    """The compat32 policy Django renders with, minus the Header machinery for a header that is
    printable ASCII and already fits on its line: it gives back "Name: value" unchanged, after a
    third of the time rendering took. The bytes are the same (tests/test_composition.py)."""

    def _fold(self, name, value, sanitize):
        if (
            isinstance(value, str)
            and self.max_line_length
            and fits_unfolded(name, value, self.max_line_length)
        ):
            return f"{name}: {value}{self.linesep}"
        return super()._fold(name, value, sanitize)


def fits_unfolded(name: str, value: str, max_line_length: int) -> bool:
    """Whether compat32 writes this header as "Name: value", as it is: printable ASCII words with
    single spaces between them, on a line of at most `max_line_length`."""
    return len(name) + 2 + len(value) <= max_line_length and bool(UNFOLDED_VALUE.fullmatch(value))


# Printable ASCII words with single spaces between them: nothing to fold, encode or collapse.
UNFOLDED_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")
QUICK_FOLDING = _QuickFolding()


class _AsciiEmailValidator(EmailValidator):
    """Django's EmailValidator for an ASCII address: its domain pattern without the range of
    non-ASCII letters, which no ASCII character matches (ASCII letters are in a-z already).

    Django compiles that range case-insensitively on a process's first check, 42 ms of its first
    send_mail(); this pattern compiles in 1.3 ms. tests/test_composition.py checks that both
    validators agree on random ASCII addresses."""

    domain_regex = _lazy_re_compile(
        "^"
        + (
            EmailValidator.hostname_re + EmailValidator.domain_re + EmailValidator.tld_no_fqdn_re
        ).replace(DomainNameValidator.ul, "")
        + r"\Z",
        re.IGNORECASE,
    )


validate_ascii_email = _AsciiEmailValidator()


def mime_bytes(mime: Message) -> bytes:
    """`mime.as_bytes(linesep="\r\n")` as Django has it, with the quicker header folding."""
    buffer = BytesIO()
    generator = BytesGenerator(buffer, mangle_from_=False, policy=QUICK_FOLDING)
    generator.flatten(mime, linesep="\r\n")
    return buffer.getvalue()


def new_message_id() -> str:
    """A Message-ID of our own domain, in make_msgid's form (<time.pid.random@domain>) but with
    the random part from `secrets`. make_msgid takes it from the `random` module, which an
    application (or a test framework) may seed: two messages queued within the same 10 ms would
    then share a Message-ID, and the second would be refused as a duplicate. Its `idstring`
    would make the header too long to stay on one line."""
    stamp = int(time.time() * 100)
    return f"<{stamp}.{os.getpid()}.{secrets.randbits(64)}@{option('MESSAGE_ID_DOMAIN')}>"


def _reject_newlines(field: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise HeaderInjection(f"{field} contains a newline (header injection refused): {value!r}")


def envelope_address(field: str, value: object) -> str:
    """The bare, SMTP-ready address for one From/To/Cc/Bcc/Reply-To entry, or InvalidAddress."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidAddress(f"{field}: expected an e-mail address, got {value!r}")
    return _checked_address(field, value)


# The same few senders, and often the same recipients, come back in every message; checking an
# address costs a fifth of rendering one. Refusals are exceptions, so they are never cached.
@functools.lru_cache(maxsize=4096)
def _checked_address(field: str, value: str) -> str:
    _reject_newlines(field, value)
    if BARE_ADDRESS.fullmatch(value):  # most are: nothing for the header parser to do
        address = value
    else:
        try:
            sanitized = sanitize_address(value, ENCODING)
        except (ValueError, IndexError, TypeError) as exc:
            raise InvalidAddress(f"{field}: {value!r} is not a valid e-mail address") from exc
        address = parseaddr(sanitized)[1]
    local_part = address.rpartition("@")[0]
    if local_part.startswith("=?") or not local_part.isascii():
        raise InvalidAddress(
            f"{field}: {value!r} has a non-ASCII local part, which plain SMTP cannot carry"
        )
    if len(local_part) > MAX_LOCAL_PART:
        raise InvalidAddress(f"{field}: {value!r} has a local part longer than 64 characters")
    try:
        (validate_ascii_email if address.isascii() else validate_email)(address)
    except ValidationError as exc:
        raise InvalidAddress(f"{field}: {value!r} is not a valid e-mail address") from exc
    return address


def _address_list(field: str, values: object) -> list[str]:
    """The envelope addresses of one list field, each validated."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InvalidAddress(f"{field} must be a list or tuple of addresses, not {values!r}")
    return [envelope_address(field, value) for value in values]


def _check_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise EmailRejected(f"{field} must be text, not {type(value).__name__}")
    return value


def _check_headers(headers: dict) -> dict[str, str]:
    checked = {}
    for name, value in headers.items():
        name, value = str(name), str(value)
        _reject_newlines(f"header name {name!r}", name)
        _reject_newlines(f"header {name}", value)
        checked[name] = value
    return checked


def _attachment_summary(message: EmailMessage) -> list[dict]:
    summary = []
    for attachment in message.attachments:
        if isinstance(attachment, tuple):
            filename, content, mimetype = attachment
            if not isinstance(content, (str, bytes)):
                raise EmailRejected(
                    f"attachment {filename!r}: content must be text or bytes, "
                    f"not {type(content).__name__}"
                )
            if not isinstance(filename, (str, type(None))) or not isinstance(
                mimetype, (str, type(None))
            ):
                raise EmailRejected(f"attachment {filename!r}: filename and type must be text")
            size = len(content.encode(ENCODING) if isinstance(content, str) else content)
        else:  # a ready MIMEBase part
            filename, mimetype = attachment.get_filename(), attachment.get_content_type()
            size = len(attachment.as_bytes())
        summary.append({"filename": filename, "mimetype": mimetype, "size": size})
    return summary


def _bodies(message: EmailMessage) -> tuple[str, str]:
    text = _check_text("body", message.body or "")
    html = ""
    for content, mimetype in getattr(message, "alternatives", []) or []:
        if mimetype == "text/html":
            html = _check_text("HTML alternative", content)
            break
    if message.content_subtype == "html":
        return "", text
    return text, html


def job_fields(message: EmailMessage) -> dict:
    """Validate `message` and return the EmailJob fields for it; raise EmailRejected otherwise."""
    subject = _check_text("subject", message.subject or "")
    _reject_newlines("subject", subject)
    envelope_from = envelope_address("from_email", message.from_email)
    recipients = [
        address
        for field in ("to", "cc", "bcc")
        for address in _address_list(field, getattr(message, field))
    ]
    _address_list("reply_to", message.reply_to)
    if not recipients:
        raise NoRecipients("the message has no recipients (to, cc and bcc are all empty)")
    headers = _check_headers(message.extra_headers)
    body, html_body = _bodies(message)

    message_id = next((v for k, v in headers.items() if k.lower() == "message-id"), None)
    if message_id is None:
        message_id = new_message_id()
        headers["Message-ID"] = message_id
    attachments = _attachment_summary(message)
    layout = _lazy_layout(message, subject, headers, body, html_body)
    if layout:
        mime, size = b"", len(subject.encode()) + len(body.encode()) + len(html_body.encode())
    else:
        mime = _render(message, subject, headers)
        size = len(mime)

    return {
        "from_email": message.from_email,
        "recipient": recipients[0],
        "to": list(message.to),
        "cc": list(message.cc),
        "bcc": list(message.bcc),
        "reply_to": list(message.reply_to),
        "subject": subject,
        "body": body,
        "html_body": html_body,
        "headers": {k: v for k, v in headers.items() if k.lower() != "message-id"},
        "attachments": attachments,
        "message_id": message_id,
        "envelope_from": envelope_from,
        "envelope_recipients": recipients,
        "mime_message": mime,
        "size_bytes": size,
        "layout": layout,
    }


def _render(message: EmailMessage, subject: str, headers: dict[str, str]) -> bytes:
    """The message's MIME bytes, as Django renders it, within the size limit."""
    rendered = copy.copy(message)
    rendered.extra_headers = headers
    rendered.subject, rendered.body = subject, message.body or ""  # None would render as "None"
    try:
        mime = mime_bytes(rendered.message())
    except (ValueError, TypeError) as exc:  # what Django finds wrong while rendering
        raise EmailRejected(f"the message cannot be rendered: {exc}") from exc
    limit = option("MAX_MESSAGE_BYTES")
    if len(mime) > limit:
        raise MessageTooLarge(f"the message is {len(mime)} bytes, over the limit of {limit} bytes")
    return mime


def _lazy_layout(
    message: EmailMessage, subject: str, headers: dict[str, str], body: str, html_body: str
) -> str:
    """The layout the worker can render `message` from, or "" (render it now) on any doubt.

    Only what the job's fields carry whole, renders the same from them, and cannot fail or
    outgrow the size limit once the checks made so far have passed.
    """
    if (
        type(message) not in (EmailMessage, EmailMultiAlternatives)  # may override message()
        or message.attachments
        or message.encoding is not None
        or settings.DEFAULT_CHARSET.lower() != ENCODING
        or message.mixed_subtype != "mixed"
        or getattr(message, "alternative_subtype", "alternative") != "alternative"
        or not _stored_whole(headers)
    ):
        return Layout.RENDERED
    layout = _content_layout(message)
    if not layout:
        return Layout.RENDERED
    addresses = [message.from_email, *message.to, *message.cc, *message.bcc, *message.reply_to]
    texts = [subject, body, html_body, *addresses, *headers, *headers.values()]
    try:
        size = sum(len(text.encode(ENCODING)) for text in texts)
    except UnicodeEncodeError:  # lone surrogates: rendering now refuses them as it should
        return Layout.RENDERED
    if WORST_CASE_GROWTH * size + RENDERING_OVERHEAD > option("MAX_MESSAGE_BYTES"):
        return Layout.RENDERED
    if not all(_renders_as_address_header(", ".join(v)) for v in _address_headers(message)):
        return Layout.RENDERED
    return layout


def _content_layout(message: EmailMessage) -> str:
    """Text, HTML, or text with one HTML alternative: what `_bodies` stores unambiguously."""
    alternatives = getattr(message, "alternatives", None) or []
    if message.content_subtype in (Layout.PLAIN, Layout.HTML) and not alternatives:
        return message.content_subtype
    if message.content_subtype != Layout.PLAIN or len(alternatives) != 1:
        return Layout.RENDERED
    alternative = alternatives[0]
    if (
        isinstance(alternative, EmailAlternative)  # a tuple appended by hand fails to render
        and alternative.mimetype == "text/html"
        and isinstance(alternative.content, str)
        and alternative.content  # stored "", it would read as "no alternative"
    ):
        return Layout.PLAIN_HTML
    return Layout.RENDERED


def _stored_whole(headers: dict[str, str]) -> bool:
    """Whether the job's `headers` and `message_id` give back these headers, in this order.

    The Message-ID must be the last, spelled so (it is stored apart and put back last); no
    address header (Django renders those from the address fields). PostgreSQL's jsonb keeps
    object keys shorter first, then by bytes: the others must already be in that order.
    """
    names = list(headers)
    if names[-1] != "Message-ID" or any(name.lower() == "message-id" for name in names[:-1]):
        return False
    names.pop()
    if any(not FIELD_NAME.fullmatch(name) or name.lower() in ADDRESS_HEADERS for name in names):
        return False
    keys = [(len(name), name.encode()) for name in names]  # names are ASCII (FIELD_NAME)
    return keys == sorted(keys)


def _address_headers(message: EmailMessage) -> list[list[str]]:
    """The address lists Django joins into From, To, Cc and Reply-To; bare addresses need no
    look, they render as they are."""
    lists = [[message.from_email], message.to, message.cc, message.reply_to]
    return [
        values for values in lists if values and not all(BARE_ADDRESS.fullmatch(v) for v in values)
    ]


@functools.lru_cache(maxsize=4096)
def _renders_as_address_header(value: str) -> bool:
    """Whether Django renders this address header without an error. Each address was checked
    alone; Django parses the joined list again (getaddresses), which may refuse it."""
    try:
        forbid_multi_line_headers("To", value, ENCODING)
    except (ValueError, TypeError, IndexError):
        return False
    return True


def wire_message(job: EmailJob) -> bytes:
    """The bytes to send: those stored at enqueue, or the simple message rendered from the
    fields, dated when it was queued. Raises what Django raises if the fields cannot render."""
    if not job.layout:
        return bytes(job.mime_message)
    headers = dict(job.headers)
    if not any(name.lower() == "date" for name in headers):  # Django puts it before the others
        date = formatdate(job.created_at.timestamp(), localtime=settings.EMAIL_USE_LOCALTIME)
        headers = {"Date": date, **headers}
    headers["Message-ID"] = job.message_id
    if job.layout == Layout.PLAIN:
        quick = plain_text_bytes(job, headers)
        if quick is not None:
            return quick
    return rendered_by_django(job, headers)


def rendered_by_django(job: EmailJob, headers: dict[str, str]) -> bytes:
    html = job.layout == Layout.HTML
    message = EmailMultiAlternatives(
        subject=job.subject,
        body=job.html_body if html else job.body,
        from_email=job.from_email,
        to=job.to,
        cc=job.cc,
        bcc=job.bcc,
        reply_to=job.reply_to,
        headers=headers,
    )
    if html:
        message.content_subtype = "html"
    elif job.layout == Layout.PLAIN_HTML:
        message.attach_alternative(job.html_body, "text/html")
    return mime_bytes(message.message())


# A bare address whose local part is a dot-atom: Django's sanitize_address gives it back as is.
DOT_ATOM_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
LINE_BREAKS = re.compile(r"\r\n|\r|\n")  # what the generator writes as CRLF
MAX_LINE_BYTES = 998  # a longer body line makes Django use quoted-printable
TEXT_PLAIN = 'Content-Type: text/plain; charset="utf-8"\r\nMIME-Version: 1.0\r\n'


def plain_text_bytes(job: EmailJob, headers: dict[str, str]) -> bytes | None:
    """What Django renders for a text-only message, written out directly, when every header is
    printable ASCII that fits its line unfolded and every address is bare (the usual
    notification); None for any other message, which Django then renders. Rendering through
    Django's classes is 0.1-0.2 ms a message, a tenth of a worker's time per message; the bytes
    are the same (tests/test_composition.py compares them on random messages)."""
    lines = [("Subject", job.subject), ("From", job.from_email)]
    for name, addresses in (("To", job.to), ("Cc", job.cc), ("Reply-To", job.reply_to)):
        if addresses:
            lines.append((name, ", ".join(addresses)))
    for address in (job.from_email, *job.to, *job.cc, *job.reply_to):
        if not DOT_ATOM_ADDRESS.fullmatch(address):
            return None
    lines += headers.items()
    for name, value in lines:
        if not fits_unfolded(name, value, QUICK_FOLDING.max_line_length):
            return None
    body = job.body
    if any(len(line.encode()) > MAX_LINE_BYTES for line in body.splitlines()):
        return None
    encoding = "7bit" if body.isascii() else "8bit"
    head = "".join(f"{name}: {value}\r\n" for name, value in lines)
    text = f"{TEXT_PLAIN}Content-Transfer-Encoding: {encoding}\r\n{head}\r\n"
    return text.encode("ascii") + LINE_BREAKS.sub("\r\n", body).encode(ENCODING)

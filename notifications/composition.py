"""Turn a Django EmailMessage into the fields of a job, refusing bad input with a clear error.

The MIME message is rendered once, here, at enqueue time: the Message-ID and every header are
fixed before the job exists, and the worker sends exactly these bytes.
"""

import copy
import functools
import re
from email.utils import make_msgid, parseaddr

from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.core.mail.message import sanitize_address
from django.core.validators import validate_email

from .conf import option
from .exceptions import (
    EmailRejected,
    HeaderInjection,
    InvalidAddress,
    MessageTooLarge,
    NoRecipients,
)

# A plain ASCII address without display name, quotes, comments or encoded words.
BARE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
MAX_LOCAL_PART = 64  # RFC 5321 section 4.5.3.1.1
ENCODING = "utf-8"


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
        validate_email(address)
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
        message_id = make_msgid(domain=option("MESSAGE_ID_DOMAIN"))
        headers["Message-ID"] = message_id
    attachments = _attachment_summary(message)
    rendered = copy.copy(message)
    rendered.extra_headers = headers
    rendered.subject, rendered.body = subject, message.body or ""  # None would render as "None"
    try:
        mime = rendered.message().as_bytes(linesep="\r\n")
    except (ValueError, TypeError) as exc:  # what Django finds wrong while rendering
        raise EmailRejected(f"the message cannot be rendered: {exc}") from exc
    limit = option("MAX_MESSAGE_BYTES")
    if len(mime) > limit:
        raise MessageTooLarge(f"the message is {len(mime)} bytes, over the limit of {limit} bytes")

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
        "size_bytes": len(mime),
    }

"""A logging filter that masks anything shaped like a credential, whatever logged it.

Our own code never logs a secret; this is the net under third-party messages (smtplib debug
output, HTTP client URLs with a Telegram bot token, tracebacks that print locals).
"""

import logging
import re

MASK = "[redacted]"
PATTERNS = (
    # password=..., "token": "...", Authorization: Bearer ...
    re.compile(
        r"(?i)((?:password|passwd|secret|token|api[_-]?key|authorization)[\"']?\s*[:=]\s*"
        r"[\"']?(?:bearer\s+|basic\s+)?)([^\s\"',;]+)"
    ),
    # Telegram bot tokens inside API URLs: /bot123456:ABC-DEF.../sendMessage
    re.compile(r"(bot)(\d{5,}:[A-Za-z0-9_-]{20,})"),
    # SMTP AUTH PLAIN/LOGIN payloads in protocol traces
    re.compile(r"(?i)(AUTH\s+(?:PLAIN|LOGIN)\s+)(\S+)"),
)


def redact(text: str) -> str:
    for pattern in PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True

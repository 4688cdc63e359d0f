"""Typed access to the app's options, read at call time; SMTP settings come through one provider."""

from dataclasses import dataclass

from django.conf import settings


def option(name: str):
    return settings.NOTIFICATIONS[name]


def batch_size() -> int:
    """Jobs a worker claims at once: EMAIL_BATCH_SIZE, and over several SMTP connections at
    least 16 a connection, so that they are not left idle while the end of each batch is
    awaited, settled and the next claimed. Draining to a 20 ms relay over 10 connections in one
    process: 209/s in batches of 20, 276/s of 80; two processes: 469-480/s in batches of 80,
    614-615/s of 160 (benchmarks/compare.py, backlog)."""
    connections = option("SMTP_CONNECTIONS")
    if connections == 1:
        return option("BATCH_SIZE")
    return max(option("BATCH_SIZE"), 16 * connections)


@dataclass(frozen=True)
class SmtpSettings:
    """Everything needed to open an SMTP connection. Never logged: it may carry a password."""

    host: str
    port: int
    use_tls: bool
    use_ssl: bool
    timeout: float
    from_email: str
    username: str = ""
    password: str = ""

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"SmtpSettings(host={self.host!r}, port={self.port}, user set={bool(self.username)})"


def get_smtp_settings(*, actor: str = "email_service", purpose: str = "send email"):
    """The SMTP settings in force now: the admin's settings row over the environment defaults."""
    from .smtp_config import current_smtp_settings

    return current_smtp_settings(actor=actor, purpose=purpose)

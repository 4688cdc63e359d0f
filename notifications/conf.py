"""Typed access to the app's options, read at call time; SMTP settings come through one provider."""

from dataclasses import dataclass

from django.conf import settings


def option(name: str):
    return settings.NOTIFICATIONS[name]


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


def get_smtp_settings() -> SmtpSettings:
    """The SMTP settings in force now: the environment defaults (the admin row overrides later)."""
    return SmtpSettings(
        host=option("SMTP_HOST"),
        port=option("SMTP_PORT"),
        use_tls=option("SMTP_USE_TLS"),
        use_ssl=option("SMTP_USE_SSL"),
        timeout=option("SMTP_TIMEOUT"),
        from_email=option("FROM_EMAIL"),
    )

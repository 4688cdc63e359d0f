"""One small exception tree: bad input, send failures (transient or permanent), configuration."""

from django.core.mail import BadHeaderError


class NotificationError(Exception):
    """Base of every error this app raises."""


class EmailRejected(NotificationError, ValueError):
    """The message cannot be queued as given; nothing was written."""


class InvalidAddress(EmailRejected):
    pass


class HeaderInjection(EmailRejected, BadHeaderError):
    pass


class MessageTooLarge(EmailRejected):
    pass


class NoRecipients(EmailRejected):
    pass


class SendError(NotificationError):
    """An SMTP attempt failed. `code` is the server's reply code when there was one."""

    def __init__(self, message: str, *, code: int | None = None, refused: dict | None = None):
        super().__init__(message)
        self.code = code
        self.refused = refused or {}


class TransientSendError(SendError):
    """Worth trying again later: 4xx replies, dropped or refused connections, timeouts."""


class PermanentSendError(SendError):
    """The server refused this message for good (5xx); retrying cannot help."""


class SmtpConfigurationError(SendError):
    """Our own SMTP configuration is wrong (authentication refused, TLS unsupported).

    Not the message's fault: the job goes back to pending without using up an attempt.
    """


class ConfigurationError(NotificationError):
    """The service itself is misconfigured; never the fault of a message."""


class EncryptionKeyError(ConfigurationError):
    """The encryption key is missing, unreadable or malformed."""


class SecretDecryptionError(ConfigurationError):
    """A stored secret cannot be decrypted with the loaded keys."""


class SearchIndexUnavailable(NotificationError):
    """The database offers no search index (SQLite); the admin's text search reads every job."""

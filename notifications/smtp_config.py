"""The notification settings row: reading it as SmtpSettings, changing it, its secrets, the audit.

Running workers see a change without a restart: each send compares the row's `version` with the
one it decrypted last (one indexed read), and a new version means new settings, a new SMTP
connection and one audited decryption.
"""

import functools
import logging
from dataclasses import replace

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F

from . import crypto, throttle
from .composition import envelope_address
from .conf import SmtpSettings, option
from .exceptions import ConfigurationError, EmailRejected, SmtpConfigurationError
from .models import AuditLogEntry, NotificationSettings

logger = logging.getLogger(__name__)

PASSWORD_CONTEXT = "notificationsettings.smtp_password"  # noqa: S105 - a label, not a secret
TELEGRAM_CONTEXT = "notificationsettings.telegram_bot_token"
CLEAR = object()  # pass as a secret to remove it
PLAIN_FIELDS = (
    "smtp_host",
    "smtp_port",
    "smtp_username",
    "from_email",
    "use_tls",
    "use_ssl",
    "timeout",
    "admin_emails",
    "telegram_chat_id",
    "alert_failure_rate",
    "alert_window_minutes",
    "alert_min_attempts",
)

_cache: dict[str, tuple[tuple, SmtpSettings]] = {}  # actor -> (row stamp, settings)


def load_row() -> NotificationSettings:
    """The settings row, or an unsaved one with the defaults when none was saved yet."""
    return NotificationSettings.objects.filter(pk=NotificationSettings.SINGLETON_ID).first() or (
        NotificationSettings()
    )


def environment_defaults() -> SmtpSettings:
    return SmtpSettings(
        host=option("SMTP_HOST"),
        port=option("SMTP_PORT"),
        use_tls=option("SMTP_USE_TLS"),
        use_ssl=option("SMTP_USE_SSL"),
        timeout=option("SMTP_TIMEOUT"),
        from_email=option("FROM_EMAIL"),
    )


def merge_settings(row: NotificationSettings, password: str) -> SmtpSettings:
    defaults = environment_defaults()
    use_ssl = defaults.use_ssl if row.use_ssl is None else row.use_ssl
    use_tls = defaults.use_tls if row.use_tls is None else row.use_tls
    return replace(
        defaults,
        host=row.smtp_host or defaults.host,
        port=row.smtp_port or defaults.port,
        use_tls=use_tls and not use_ssl,
        use_ssl=use_ssl,
        timeout=row.timeout or defaults.timeout,
        from_email=row.from_email or defaults.from_email,
        username=row.smtp_username,
        password=password,
    )


def audit(actor: str, action: str, *, purpose: str = "", fields=(), outcome: str = "") -> None:
    AuditLogEntry.objects.create(
        actor=actor,
        action=action,
        purpose=purpose[:255],
        fields=list(fields),
        outcome=outcome[:255],
    )


def decrypt_secret(token: str, context: str, *, actor: str, purpose: str) -> str:
    """Decrypt one stored secret, leaving an audit entry whatever the outcome."""
    try:
        value = crypto.decrypt(token, context=context)
    except ConfigurationError as error:
        audit(
            actor, AuditLogEntry.Action.DECRYPT, purpose=purpose, fields=[context], outcome="failed"
        )
        logger.critical("ALERT: %s (actor %s, purpose %s)", error, actor, purpose)
        raise
    audit(actor, AuditLogEntry.Action.DECRYPT, purpose=purpose, fields=[context], outcome="ok")
    return value


def current_smtp_settings(*, actor: str = "email_service", purpose: str = "send email"):
    """The SMTP settings in force now; SmtpConfigurationError if the password cannot be read."""
    stamp = _row_stamp()
    if stamp is None:
        return merge_settings(NotificationSettings(), "")
    cached = _cache.get(actor)
    if cached and cached[0] == stamp:
        return cached[1]
    row = load_row()  # changed since: a newer row than `stamp` is read again at the next call
    password = ""
    if row.smtp_password_encrypted:
        try:
            password = decrypt_secret(
                row.smtp_password_encrypted, PASSWORD_CONTEXT, actor=actor, purpose=purpose
            )
        except ConfigurationError as error:
            raise SmtpConfigurationError(str(error)) from None
    merged = merge_settings(row, password)
    _cache[actor] = (stamp, merged)
    return merged


def _row_stamp() -> tuple | None:
    """The row's (version, updated_at), or None without a row: the read every claim makes.

    A statement written once, not a queryset: compiling `.first()` took 0.5 ms a call, ten
    times the read itself. The values are only compared with those of an earlier call."""
    with connection.cursor() as cursor:
        cursor.execute(_stamp_sql(), [NotificationSettings.SINGLETON_ID])
        return cursor.fetchone()


@functools.cache
def _stamp_sql() -> str:
    meta, quote = NotificationSettings._meta, connection.ops.quote_name
    columns = ", ".join(quote(meta.get_field(name).column) for name in ("version", "updated_at"))
    return f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s"  # noqa: S608


def default_from_email() -> str:
    row = (
        NotificationSettings.objects.filter(pk=NotificationSettings.SINGLETON_ID)
        .values_list("from_email", flat=True)
        .first()
    )
    return row or option("FROM_EMAIL")


def validate_changes(changes: dict) -> None:
    """Raise ValidationError (by field) for values the settings row must not hold."""
    errors = {}
    port = changes.get("smtp_port")
    if port is not None and not 1 <= int(port) <= 65535:
        errors["smtp_port"] = "The port must be between 1 and 65535."
    if changes.get("use_tls") and changes.get("use_ssl"):
        errors["use_ssl"] = (
            "Choose STARTTLS or SSL/TLS, not both: port 587 usually means STARTTLS, 465 SSL/TLS."
        )
    if changes.get("from_email"):
        try:
            envelope_address("from_email", changes["from_email"])
        except EmailRejected as error:
            errors["from_email"] = str(error)
    for address in changes.get("admin_emails") or []:
        try:
            envelope_address("admin_emails", address)
        except EmailRejected as error:
            errors["admin_emails"] = str(error)
    if errors:
        raise ValidationError(errors)


def update_settings(
    *,
    actor: str,
    changes: dict | None = None,
    smtp_password: str | object | None = None,
    telegram_bot_token: str | object | None = None,
) -> NotificationSettings:
    """Save plain fields and secrets (None keeps a secret, CLEAR removes it) and audit the names."""
    changes = changes or {}
    unknown = set(changes) - set(PLAIN_FIELDS)
    if unknown:
        raise ValueError(f"not settings fields: {sorted(unknown)}")
    with transaction.atomic():
        row, _ = NotificationSettings.objects.select_for_update().get_or_create(
            pk=NotificationSettings.SINGLETON_ID
        )
        validate_changes({name: getattr(row, name) for name in PLAIN_FIELDS} | changes)
        changed = [name for name, value in changes.items() if getattr(row, name) != value]
        for name in changed:
            setattr(row, name, changes[name])
        for field, context, secret in (
            ("smtp_password_encrypted", PASSWORD_CONTEXT, smtp_password),
            ("telegram_bot_token_encrypted", TELEGRAM_CONTEXT, telegram_bot_token),
        ):
            if secret is CLEAR and getattr(row, field):
                setattr(row, field, "")
                changed.append(field.removesuffix("_encrypted"))
            elif isinstance(secret, str) and secret:
                setattr(row, field, crypto.encrypt(secret, context=context))
                changed.append(field.removesuffix("_encrypted"))
        if changed:
            row.updated_by = actor
            row.version = F("version") + 1
            row.save()
            row.refresh_from_db()
            audit(actor, AuditLogEntry.Action.CHANGE, fields=changed)
            # New settings deserve a try now, not after the circuit breaker's backoff.
            transaction.on_commit(throttle.close_circuit)
    return row


SECRET_FIELDS = (
    ("smtp_password_encrypted", PASSWORD_CONTEXT),
    ("telegram_bot_token_encrypted", TELEGRAM_CONTEXT),
)


def secrets_needing_rotation(ring: crypto.KeyRing) -> list[str]:
    """Names of the stored secrets not encrypted under the ring's primary key."""
    row = load_row()
    return [
        field
        for field, _ in SECRET_FIELDS
        if getattr(row, field) and crypto.token_key_id(getattr(row, field)) != ring.primary_id
    ]


def reencrypt_secrets(*, ring: crypto.KeyRing, actor: str) -> list[str]:
    """Re-encrypt every stored secret under the ring's primary key; returns the fields changed."""
    with transaction.atomic():
        row = NotificationSettings.objects.select_for_update().filter(pk=1).first()
        if row is None:
            return []
        changed = []
        for field, context in SECRET_FIELDS:
            token = getattr(row, field)
            if not token or crypto.token_key_id(token) == ring.primary_id:
                continue
            plaintext = crypto.decrypt(token, context=context, ring=ring)
            audit(
                actor,
                AuditLogEntry.Action.DECRYPT,
                purpose="key rotation",
                fields=[context],
                outcome="ok",
            )
            setattr(row, field, crypto.encrypt(plaintext, context=context, ring=ring))
            changed.append(field)
        if changed:
            row.version = F("version") + 1
            row.updated_by = actor
            row.save()
            audit(
                actor,
                AuditLogEntry.Action.ROTATE,
                fields=changed,
                outcome=f"now under key {ring.primary_id}",
            )
    return changed

"""System checks: no SMTP credentials in the environment, a usable encryption key.

Django runs them before most management commands; `startup.refuse_unsafe_configuration()` runs
them where Django doesn't (gunicorn, Celery worker and beat) and stops the process on an error.
"""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from . import crypto
from .exceptions import EncryptionKeyError

MIGRATE_HINT = (
    "Move them into the encrypted settings row once with `python manage.py smtp_settings "
    "import-env`, then remove SMTP_USERNAME and SMTP_PASSWORD from the environment (.env, "
    "service unit, compose file) and restart."
)


_tolerated = {"credentials_in_environment": False}


def tolerate_credentials_in_environment() -> None:
    """For the commands that must run while they are set: `migrate` and `import-env`."""
    _tolerated["credentials_in_environment"] = True


@register(Tags.security, deploy=False)
def check_no_smtp_credentials_in_environment(app_configs=None, **kwargs):
    names = [
        name
        for name, value in (
            ("SMTP_USERNAME", settings.SMTP_USERNAME_FROM_ENV),
            ("SMTP_PASSWORD", settings.SMTP_PASSWORD_FROM_ENV),
        )
        if value is not None
    ]
    if not names:
        return []
    message = (
        f"{' and '.join(names)} set in the environment: SMTP credentials belong encrypted in "
        "the database."
    )
    if settings.IS_PRODUCTION and not _tolerated["credentials_in_environment"]:
        return [Error(message, hint=MIGRATE_HINT, id="notifications.E001")]
    return [Warning(message, hint=MIGRATE_HINT, id="notifications.W001")]


@register(Tags.security)
def check_encryption_key(app_configs=None, **kwargs):
    creatable = not settings.IS_PRODUCTION and not settings.EMAIL_ENCRYPTION_KEY
    if creatable and not crypto.key_file_path().exists():
        return []  # development: created, with a warning, on first use
    try:
        crypto.load_keyring()
    except EncryptionKeyError as error:
        return [
            Error(
                str(error),
                hint="Restore the key file from your backup, or set EMAIL_ENCRYPTION_KEY.",
                id="notifications.E002",
            )
        ]
    return []

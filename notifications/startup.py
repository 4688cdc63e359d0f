"""Refuse to start with an unsafe configuration, from every entry point."""

import sys

from django.core.exceptions import ImproperlyConfigured

from .checks import check_encryption_key, check_no_smtp_credentials_in_environment

# `migrate` touches no credential, and `smtp_settings import-env` is how they leave the environment.
ALLOWED_COMMANDS = (("migrate",), ("smtp_settings", "import-env"))


def refuse_unsafe_configuration(entry_point: str, *, print_warnings: bool = True) -> None:
    """Raise ImproperlyConfigured listing every blocking problem; print the warnings."""
    findings = check_no_smtp_credentials_in_environment() + check_encryption_key()
    errors = [finding for finding in findings if finding.is_serious()]
    for warning in findings:
        if print_warnings and not warning.is_serious():
            print(f"WARNING {warning.id}: {warning.msg}\n  {warning.hint}", file=sys.stderr)
    if errors:
        details = "\n".join(f"  {e.id}: {e.msg}\n    {e.hint}" for e in errors)
        raise ImproperlyConfigured(f"{entry_point} refuses to start:\n{details}")


def exit_if_unsafe(entry_point: str, *, print_warnings: bool = True) -> None:
    """For entry points where an exception would only be logged: print and exit."""
    try:
        refuse_unsafe_configuration(entry_point, print_warnings=print_warnings)
    except ImproperlyConfigured as refusal:
        print(refusal, file=sys.stderr)
        raise SystemExit(1) from None


def command_is_allowed(argv: list[str]) -> bool:
    words = tuple(word for word in argv[1:] if not word.startswith("-"))
    return any(words[: len(allowed)] == allowed for allowed in ALLOWED_COMMANDS)

#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")
    import django
    from django.core.management import execute_from_command_line

    django.setup()
    from notifications.checks import tolerate_credentials_in_environment
    from notifications.startup import command_is_allowed, exit_if_unsafe

    if command_is_allowed(sys.argv):
        tolerate_credentials_in_environment()
    exit_if_unsafe("manage.py", print_warnings=False)  # Django's checks print the warnings
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

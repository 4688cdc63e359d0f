"""smtp_settings: show, change, test the SMTP settings, and move credentials out of the env."""

import getpass
import json
import sys

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from notifications import smtp_config
from notifications.exceptions import ConfigurationError
from notifications.models import AuditLogEntry

ACTOR = "cli"


class Command(BaseCommand):
    help = "Show, change and test the SMTP settings; import credentials from the environment."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        show = commands.add_parser("show", help="Print the settings in force, secrets masked.")
        show.add_argument("--json", action="store_true")
        commands.add_parser(
            "import-env",
            help="Move SMTP_USERNAME/SMTP_PASSWORD (and host, port, from) into the encrypted row.",
        )
        change = commands.add_parser("set", help="Change settings; unnamed ones stay as they are.")
        change.add_argument("--host")
        change.add_argument("--port", type=int)
        change.add_argument("--username")
        change.add_argument("--from-email")
        change.add_argument("--timeout", type=float)
        for name in ("tls", "ssl"):
            toggle = change.add_mutually_exclusive_group()
            toggle.add_argument(
                f"--use-{name}", dest=f"use_{name}", action="store_const", const=True
            )
            toggle.add_argument(
                f"--no-{name}", dest=f"use_{name}", action="store_const", const=False
            )
        secret = change.add_mutually_exclusive_group()
        secret.add_argument(
            "--password-stdin", action="store_true", help="Read the password from standard input."
        )
        secret.add_argument(
            "--password-prompt", action="store_true", help="Ask for the password, hidden."
        )
        secret.add_argument("--clear-password", action="store_true")
        test = commands.add_parser("test", help="Send a test e-mail with the saved settings.")
        test.add_argument("--to", required=True)

    def handle(self, *args, **options):
        handler = getattr(self, "handle_" + options["command"].replace("-", "_"))
        try:
            handler(options)
        except ValidationError as error:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
            ) from None
        except ConfigurationError as error:
            raise CommandError(str(error)) from None

    def handle_show(self, options):
        row = smtp_config.load_row()
        effective = smtp_config.merge_settings(row, password="")
        shown = {
            "host": effective.host,
            "port": effective.port,
            "username": effective.username,
            "password": "set (encrypted)" if row.has_smtp_password else "not set",
            "from_email": effective.from_email,
            "use_tls": effective.use_tls,
            "use_ssl": effective.use_ssl,
            "timeout": effective.timeout,
            "telegram_bot_token": "set (encrypted)" if row.has_telegram_token else "not set",
            "updated_by": row.updated_by,
        }
        if options["json"]:
            self.stdout.write(json.dumps(shown))
            return
        for name, value in shown.items():
            self.stdout.write(f"{name:<20} {value}")

    def handle_import_env(self, options):
        username, password = settings.SMTP_USERNAME_FROM_ENV, settings.SMTP_PASSWORD_FROM_ENV
        if username is None and password is None:
            raise CommandError("neither SMTP_USERNAME nor SMTP_PASSWORD is set: nothing to import")
        row = smtp_config.load_row()
        if row.has_smtp_password:
            raise CommandError(
                "the settings row already holds a password; nothing imported. Remove SMTP_USERNAME "
                "and SMTP_PASSWORD from the environment, or change the password with "
                "`smtp_settings set --password-prompt`."
            )
        defaults = smtp_config.environment_defaults()
        changes = {
            "smtp_host": row.smtp_host or defaults.host,
            "smtp_port": row.smtp_port or defaults.port,
            "from_email": row.from_email or defaults.from_email,
        }
        if username is not None:
            changes["smtp_username"] = username
        smtp_config.update_settings(actor=ACTOR, changes=changes, smtp_password=password or None)
        smtp_config.audit(ACTOR, AuditLogEntry.Action.IMPORT_ENV, fields=sorted(changes))
        self.stdout.write(
            "Imported the SMTP credentials into the encrypted settings row. Now remove "
            "SMTP_USERNAME and SMTP_PASSWORD from the environment (.env, service unit, compose "
            "file) and restart every process: in production nothing starts while they are set."
        )

    def handle_set(self, options):
        fields = {
            "host": "smtp_host",
            "port": "smtp_port",
            "username": "smtp_username",
            "from_email": "from_email",
            "timeout": "timeout",
            "use_tls": "use_tls",
            "use_ssl": "use_ssl",
        }
        changes = {
            field: options[name] for name, field in fields.items() if options[name] is not None
        }
        if changes.get("use_tls"):
            changes.setdefault("use_ssl", False)
        if changes.get("use_ssl"):
            changes.setdefault("use_tls", False)
        password = None
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
        elif options["password_prompt"]:
            password = getpass.getpass("SMTP password: ")
        elif options["clear_password"]:
            password = smtp_config.CLEAR
        if password == "":
            raise CommandError("the password read was empty; nothing changed")
        if not changes and password is None:
            raise CommandError("nothing to change: name at least one option (see --help)")
        smtp_config.update_settings(actor=ACTOR, changes=changes, smtp_password=password)
        self.stdout.write("Saved. Running workers pick the change up with their next message.")

    def handle_test(self, options):
        from notifications.test_email import send_test_email

        result = send_test_email(to=options["to"], actor=ACTOR)
        if not result.ok:
            raise CommandError(result.message)
        self.stdout.write(result.message)

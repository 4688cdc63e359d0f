"""rotate_encryption_key: re-encrypt every stored secret under a new key."""

from django.core.management.base import BaseCommand, CommandError

from notifications import crypto
from notifications.exceptions import ConfigurationError
from notifications.smtp_config import reencrypt_secrets, secrets_needing_rotation


class Command(BaseCommand):
    help = (
        "Re-encrypt the stored SMTP password and Telegram token under a new key. With a key file, "
        "a new key is generated and put first in the file, the old ones kept until you drop them. "
        "With EMAIL_ENCRYPTION_KEY, put a new key first in it (see --print-new-key) and run this."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--print-new-key", action="store_true", help="Print a fresh key and change nothing."
        )
        group.add_argument(
            "--drop-old-keys",
            action="store_true",
            help="Remove every key but the first from the key file, once nothing needs them.",
        )

    def handle(self, *args, print_new_key=False, drop_old_keys=False, **options):
        if print_new_key:
            self.stdout.write(crypto.generate_key())
            return
        try:
            ring = crypto.load_keyring()
            from_file = ring.source.startswith("key file")
            if drop_old_keys:
                return self._drop_old_keys(ring, from_file)
            if from_file:
                ring = self._add_new_key(ring)
            changed = reencrypt_secrets(ring=ring, actor="cli")
        except ConfigurationError as error:
            raise CommandError(str(error)) from None
        old = [key for key in ring.keys if key != ring.primary_id]
        self.stdout.write(
            f"Re-encrypted {len(changed)} secret(s) under key {ring.primary_id} ({ring.source})."
        )
        if from_file:
            self.stdout.write(
                f"The old key(s) {old} stay in the file so running processes keep working. Back "
                "up the key file now; once every process uses it, run "
                "`python manage.py rotate_encryption_key --drop-old-keys` and destroy old backups."
            )
        elif old:
            self.stdout.write(
                "Now set EMAIL_ENCRYPTION_KEY to the first key alone on every process, restart "
                "them, and destroy the old key once no backup of the database needs it."
            )
        else:
            self.stdout.write(
                "To rotate, put a new key (from --print-new-key) first in EMAIL_ENCRYPTION_KEY, "
                "comma-separated before the current one, on every process; then run this again."
            )

    def _add_new_key(self, ring: crypto.KeyRing) -> crypto.KeyRing:
        crypto.prepend_key_to_file(crypto.generate_key())
        return crypto.load_keyring()

    def _drop_old_keys(self, ring: crypto.KeyRing, from_file: bool) -> None:
        if not from_file:
            raise CommandError(
                "the keys come from EMAIL_ENCRYPTION_KEY: edit that variable instead"
            )
        pending = secrets_needing_rotation(ring)
        if pending:
            raise CommandError(
                f"{pending} not yet under key {ring.primary_id}: run rotate_encryption_key first"
            )
        crypto.keep_only_primary_key_in_file()
        self.stdout.write(f"The key file now holds only key {ring.primary_id}.")

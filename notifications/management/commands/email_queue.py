"""email_queue: look at the queue from the shell (`stats`; later issues add repair commands)."""

import json

from django.core.management.base import BaseCommand

from notifications.selectors import queue_stats


class Command(BaseCommand):
    help = "Inspect the e-mail queue."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        stats = commands.add_parser("stats", help="Jobs by status and the oldest pending age.")
        stats.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        getattr(self, f"handle_{options['command']}")(options)

    def handle_stats(self, options):
        stats = queue_stats()
        if options["json"]:
            self.stdout.write(json.dumps(stats))
            return
        for status in ("pending", "sending", "sent", "failed", "cancelled"):
            self.stdout.write(f"{status:<10} {stats[status]}")
        age = stats["oldest_pending_age_seconds"]
        self.stdout.write(f"oldest pending: {'none' if age is None else f'{age:.1f}s ago'}")

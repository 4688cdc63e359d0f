"""email_queue: inspect and repair the queue (stats, failed, retry, cancel, purge), and turn the
admin's search index on or off (search-index)."""

import argparse
import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError
from django.utils import timezone

from notifications import search_index, selectors, services
from notifications.exceptions import SearchIndexUnavailable
from notifications.models import EmailJob

Status = EmailJob.Status


def _count(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return number

    return parse


class Progress:
    """One line on stderr, redrawn in place, while long work runs; silent unless it is a TTY."""

    def __init__(self, stream: OutputWrapper, label: str, total: int):
        self.stream, self.label, self.total, self.done = stream, label, total, 0
        self.shown = stream.isatty() and total > 0

    def __call__(self, count: int) -> None:
        self.done += count
        if self.shown:
            share = min(self.done / self.total, 1.0)
            line = f"\r{self.label}: {self.done:,}/{self.total:,} ({share:.0%})"
            self.stream.write(line, style_func=str, ending="")
            self.stream.flush()

    def close(self) -> None:
        if self.shown and self.done:
            self.stream.write("", style_func=str)


class Command(BaseCommand):
    help = "Inspect and repair the e-mail queue."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        json_flag = argparse.ArgumentParser(add_help=False)
        json_flag.add_argument("--json", action="store_true", help="Print one JSON document.")
        batch_flag = argparse.ArgumentParser(add_help=False)
        batch_flag.add_argument(
            "--batch-size", type=_count(1), default=5000, help="Jobs per transaction (5000)."
        )

        commands.add_parser(
            "stats",
            parents=[json_flag],
            help="Jobs by status, oldest pending age, the last hour's attempts and throughput.",
        )
        failed = commands.add_parser(
            "failed", parents=[json_flag], help="The newest failed jobs and why they failed."
        )
        failed.add_argument("--limit", type=_count(1), default=20, help="How many (20).")

        retry = commands.add_parser(
            "retry",
            parents=[json_flag, batch_flag],
            help="Failed jobs back to pending with a fresh attempt budget, published again.",
        )
        which = retry.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--max", type=_count(1), help="Up to this many failed jobs, oldest first."
        )
        which.add_argument(
            "--id", dest="ids", type=int, nargs="+", metavar="ID", help="These jobs."
        )

        cancel = commands.add_parser(
            "cancel", parents=[json_flag], help="Pending jobs become cancelled and are not sent."
        )
        cancel.add_argument("--id", dest="ids", type=int, nargs="+", metavar="ID", required=True)

        purge = commands.add_parser(
            "purge",
            parents=[json_flag],
            help="Delete old finished jobs and their attempts, in batches of short transactions.",
        )
        purge.add_argument(
            "--batch-size",
            type=_count(1),
            default=1000,
            help="Jobs per transaction (1000): on SQLite a sender may wait for one batch.",
        )
        purge.add_argument("--status", required=True, choices=[s.value for s in services.PURGEABLE])
        purge.add_argument(
            "--older-than",
            type=_count(0),
            required=True,
            metavar="DAYS",
            help="Jobs created more than DAYS days ago (by created_at, which the "
            "(status, created_at) index serves; not by when they were sent).",
        )
        purge.add_argument("--dry-run", action="store_true", help="Only count what would go.")

        search = commands.add_parser(
            "search-index",
            parents=[json_flag],
            help="PostgreSQL: show, build (--on) or drop (--off) the trigram indexes that make "
            "the admin's text search fast, at a cost to every job written.",
        )
        switch = search.add_mutually_exclusive_group()
        switch.add_argument("--on", action="store_true", help="Build them (CONCURRENTLY).")
        switch.add_argument("--off", action="store_true", help="Drop them.")

    def handle(self, *args, **options):
        getattr(self, f"handle_{options['command'].replace('-', '_')}")(options)

    def emit(self, options, data, text: str) -> None:
        self.stdout.write(json.dumps(data, cls=DjangoJSONEncoder) if options["json"] else text)

    def handle_stats(self, options):
        stats = selectors.queue_stats()
        age = stats["oldest_pending_age_seconds"]
        lines = [f"{status:<10} {stats[status]}" for status in Status.values]
        lines += [
            f"oldest pending: {'none' if age is None else f'{age:.1f}s ago'}",
            f"last {stats['window_seconds'] // 60} min: {stats['sent_last_window']} sent, "
            f"{stats['failed_last_window']} failed, {stats['attempts_last_window']} attempts, "
            f"failure rate {stats['failure_rate_last_window']:.1%}",
            f"throughput: {stats['throughput_per_second']} sent/s",
        ]
        self.emit(options, stats, "\n".join(lines))

    def handle_failed(self, options):
        jobs = selectors.failed_jobs(limit=options["limit"])
        lines = [
            f"#{job['id']}  {job['attempts']} attempt(s)  code {job['last_smtp_code'] or '-'}  "
            f"{job['recipient']}  {job['subject'][:60]!r}\n    {_one_line(job['last_error'])}"
            for job in jobs
        ]
        self.emit(options, jobs, "\n".join(lines) or "No failed jobs.")

    def handle_retry(self, options):
        if options["max"] is not None:
            total = min(options["max"], selectors.job_count(status=Status.FAILED))
            progress = Progress(self.stderr, "retry", total)
            retried = services.retry_failed_jobs(
                limit=options["max"], batch_size=options["batch_size"], on_batch=progress
            )
            progress.close()
            self.emit(options, {"retried": retried}, f"Retried {retried} failed job(s).")
            return
        self._by_id(options, Status.FAILED, services.retry_jobs, "retried", "retry")

    def handle_cancel(self, options):
        self._by_id(options, Status.PENDING, services.cancel_jobs, "cancelled", "cancel")

    def _by_id(self, options, status: str, service, done: str, verb: str) -> None:
        """Apply a service to the given jobs in `status`; report the others and exit 1."""
        ids = list(dict.fromkeys(options["ids"]))
        statuses = selectors.job_statuses(job_ids=ids)
        count = service(job_ids=[pk for pk in ids if statuses.get(pk) == status])
        skipped = [
            {"id": pk, "status": statuses.get(pk)} for pk in ids if statuses.get(pk) != status
        ]
        self.emit(
            options, {done: count, "skipped": skipped}, f"{done.capitalize()} {count} job(s)."
        )
        if skipped:
            reasons = ", ".join(
                f"#{s['id']} is {s['status']}" if s["status"] else f"#{s['id']} does not exist"
                for s in skipped
            )
            raise CommandError(
                f"Did not {verb} {len(skipped)} job(s), only {status} ones: {reasons}"
            )

    def handle_purge(self, options):
        status, days = options["status"], options["older_than"]
        created_before = timezone.now() - timedelta(days=days)
        matching = selectors.job_count(status=status, created_before=created_before)
        report = {"status": status, "created_before": created_before, "dry_run": options["dry_run"]}
        if options["dry_run"]:
            self.emit(
                options,
                {**report, "jobs": matching},
                f"Would delete {matching} {status} job(s) created more than {days} day(s) ago.",
            )
            return
        progress = Progress(self.stderr, "purge", matching)
        deleted = services.purge_jobs(
            status=status,
            created_before=created_before,
            batch_size=options["batch_size"],
            on_batch=progress,
        )
        progress.close()
        self.emit(
            options,
            {**report, **deleted},
            f"Deleted {deleted['jobs']} {status} job(s) created more than {days} day(s) ago "
            f"and their {deleted['attempts']} attempt(s).",
        )

    def handle_search_index(self, options):
        try:
            if options["on"]:
                search_index.create_search_index()
            elif options["off"]:
                search_index.drop_search_index()
            state = search_index.search_index_state()
        except SearchIndexUnavailable as error:
            raise CommandError(str(error)) from None
        except DatabaseError as error:  # e.g. no right to create the pg_trgm extension
            raise CommandError(f"The search index could not be changed: {error}") from None
        lines = [f"{name:<24} {status}" for name, status in state.items()]
        self.emit(options, state, "\n".join(lines))


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""What every scenario does: enqueue a batch, wait for it to drain, count losses and duplicates."""

import time
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

from django.core.mail import send_mass_mail
from django.db.models import Count

from notifications.models import EmailAttempt, EmailJob
from tests.support.processes import wait_until

Status = EmailJob.Status
FINAL = (Status.SENT, Status.FAILED, Status.CANCELLED)


def enqueue(count: int, prefix: str = "m") -> set[str]:
    """`count` messages, one recipient each, through send_mass_mail; their Message-IDs."""
    batch = [
        (f"Fault test {prefix}{i}", "Body\n", "from@example.org", [f"{prefix}{i}@example.org"])
        for i in range(count)
    ]
    for start in range(0, count, 500):
        send_mass_mail(batch[start : start + 500])
    return set(EmailJob.objects.values_list("message_id", flat=True))


def statuses() -> dict[str, int]:
    rows = EmailJob.objects.order_by().values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def wait_drained(total: int, timeout: float, status: str | None = None) -> float:
    """Wait until `total` jobs are settled (or all in `status`); returns the seconds it took."""
    started = time.monotonic()
    wanted = [status] if status else list(FINAL)

    def drained():
        return EmailJob.objects.filter(status__in=wanted).count() >= total

    try:
        wait_until(drained, timeout, 0.25, f"{total} jobs to be {'/'.join(wanted)}")
    except AssertionError as error:
        raise AssertionError(f"{error}; statuses now {statuses()}") from None
    return round(time.monotonic() - started, 1)


@dataclass
class Tally:
    """What reached the SMTP server, against the jobs that should have."""

    expected: set[str]
    copies: Counter

    @property
    def lost(self) -> int:
        return len(self.expected - set(self.copies))

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.copies.values() if n > 1)

    @property
    def strangers(self) -> set[str]:
        return set(self.copies) - self.expected

    def explain(self, server) -> str:
        """For a failure message: each duplicate or stranger, its job's attempts and the server's
        events for it (accepted, refused, dropped ...)."""
        suspects = {m: n for m, n in self.copies.items() if n > 1 or m not in self.expected}
        lines = []
        for message_id, copies in sorted(suspects.items()):
            job = EmailJob.objects.filter(message_id=message_id).first()
            attempts = (
                [(a.number, a.outcome, a.smtp_code, a.error) for a in job.attempt_log.all()]
                if job
                else "no such job"
            )
            events = [e.kind for e in server.events if e.message_id == message_id]
            lines.append(f"{message_id!r}: {copies} copies; attempts {attempts}; events {events}")
        return "\n".join(lines) or "nothing lost or repeated"


def tally(server, expected: set[str]) -> Tally:
    return Tally(expected, server.copies())


def attempts_by_job() -> dict[int, list[EmailAttempt]]:
    attempts: dict[int, list[EmailAttempt]] = {}
    for attempt in EmailAttempt.objects.order_by("job_id", "number", "started_at"):
        attempts.setdefault(attempt.job_id, []).append(attempt)
    return attempts


def schedule_violations(delays: list[float], floor: float = 0.8) -> list[str]:
    """Retries that started sooner than `floor` x the configured delay after the failed attempt."""
    violations = []
    for job_id, attempts in attempts_by_job().items():
        for before, after in pairwise(attempts):
            if before.outcome != EmailAttempt.Outcome.RETRY:
                continue
            delay = delays[min(before.number, len(delays)) - 1]
            gap = (after.started_at - before.started_at).total_seconds()
            # started_at is taken before the SMTP conversation, the delay counts from its end
            if gap < floor * delay - 0.05:
                violations.append(
                    f"job {job_id}: attempt {after.number} {gap:.2f}s after a "
                    f"retry, configured delay {delay}s"
                )
    return violations


def error_texts() -> list[str]:
    return list(
        EmailJob.objects.exclude(last_error="").values_list("last_error", flat=True)
    ) + list(EmailAttempt.objects.exclude(error="").values_list("error", flat=True))

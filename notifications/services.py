"""Writes and state changes of the queue outside sending: enqueue, recover, operator actions.

State machine of a job: pending -> sending (claimed, attempts+1, leased) -> sent | failed |
pending (retry later); pending -> cancelled. Sending lives in delivery.py.
"""

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from time import monotonic, sleep

import redis
from django.core.mail import EmailMessage
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from . import delivery, inserts, journal, metrics, publishing, selectors, wakeups
from .composition import job_fields
from .conf import option
from .exceptions import EmailRejected
from .models import EmailAttempt, EmailJob
from .retry import should_retry

logger = logging.getLogger(__name__)
Status = EmailJob.Status
Outcome = EmailAttempt.Outcome


def enqueue_emails(
    *,
    messages: Iterable[EmailMessage],
    priority: str | int | None = None,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> list[EmailJob]:
    """Validate every message, write the jobs in the caller's transaction, publish on commit.

    All or nothing: one invalid message raises EmailRejected and no job is written. A message's
    own `priority`, `send_at` and `expires_at` attributes, when set, win over the arguments.
    """
    now = timezone.now()
    scheduling = {"priority": priority, "send_at": send_at, "expires_at": expires_at}
    jobs = inserts.new_jobs(
        (
            {**job_fields(message), **_scheduling(message, now, **scheduling), "dispatched_at": now}
            for message in messages
        ),
        now=now,
    )
    database = connections[EmailJob.objects.db]
    try:  # the unique Message-ID column refuses a reused one; no SELECT before every INSERT
        # Values are prepared before the INSERT takes SQLite's one write lock
        # (0.03 ms for send_mail()'s one row).
        rows = inserts.prepared_rows(jobs, database)
        if len(jobs) == 1 and _one_statement_commits(database):
            with _writer_turn(database):  # outside the caller's transaction: it commits
                inserts.insert(jobs, rows, database)
            _publish_new(jobs, now)
        else:
            with transaction.atomic(using=database.alias):
                inserts.insert(jobs, rows, database)
                transaction.on_commit(lambda: _publish_new(jobs, now), using=database.alias)
    except IntegrityError:
        _refuse_reused_message_ids([job.message_id for job in jobs])
        raise
    return jobs


def _one_statement_commits(database) -> bool:
    """Whether a lone INSERT may run in autocommit, outside the caller's transaction, as its own
    transaction. BEGIN and COMMIT would be two more round trips to a PostgreSQL server
    (send_mail() 791/s, against 1,050/s for django-mailer's one INSERT), and on SQLite two more
    statements and Django's atomic() around them (0.1 ms of 0.6). SQLite's INSERT still queues
    on the writer lock (`_writer_turn`)."""
    if database.in_atomic_block:
        return False
    if database.vendor == "sqlite" and not hasattr(database, "writer_turn"):
        return False  # a plain SQLite backend: the transaction's BEGIN is what queues writers
    return database.get_autocommit()


def _writer_turn(database):
    """Our SQLite backend's writer lock (vertex_email/sqlite_backend); nothing elsewhere."""
    writer_turn = getattr(database, "writer_turn", None)
    return writer_turn() if writer_turn else contextlib.nullcontext()


def _refuse_reused_message_ids(message_ids: list[str]) -> None:
    """A Message-ID names one message: a second job with it would be a duplicate by design."""
    seen, repeated = set(), set()
    for message_id in message_ids:
        (repeated if message_id in seen else seen).add(message_id)
    taken = EmailJob.objects.filter(message_id__in=seen).values_list("message_id", "pk")
    for message_id, pk in taken[:1]:
        raise EmailRejected(f"Message-ID {message_id} is already queued as job {pk}")
    if repeated:
        raise EmailRejected(f"Message-ID {sorted(repeated)[0]} is given to two messages")


def _scheduling(message: EmailMessage, now: datetime, **defaults) -> dict:
    priority = getattr(message, "priority", None) or defaults["priority"]
    send_at = getattr(message, "send_at", None) or defaults["send_at"] or now
    expires_at = getattr(message, "expires_at", None) or defaults["expires_at"]
    for name, moment in (("send_at", send_at), ("expires_at", expires_at)):
        if moment is not None and timezone.is_naive(moment):
            raise EmailRejected(f"{name} must be an aware datetime (with a time zone)")
    if expires_at is not None and expires_at <= send_at:
        raise EmailRejected("expires_at must be later than send_at (or now)")
    return {
        "priority": _priority(priority),
        "next_attempt_at": send_at,
        "expires_at": expires_at,
    }


def _priority(value: str | int | None) -> int:
    if value is None:
        return EmailJob.Priority.NORMAL
    if isinstance(value, str) and value.upper() in EmailJob.Priority.names:
        return EmailJob.Priority[value.upper()]
    if value in EmailJob.Priority.values:
        return int(value)
    raise EmailRejected(f"priority must be one of high, normal, low; not {value!r}")


def _publish_new(jobs: list[EmailJob], now: datetime) -> None:
    wakeups.wake_workers_soon([job.pk for job in jobs if job.next_attempt_at <= now])
    for job in jobs:
        if job.next_attempt_at > now:  # scheduled: a countdown, or the sweeper when it is far off
            publishing.publish_jobs([job.pk], countdown=(job.next_attempt_at - now).total_seconds())


def enqueue_email(*, message: EmailMessage, **scheduling) -> EmailJob:
    """One message; `priority`, `send_at` and `expires_at` as for enqueue_emails."""
    return enqueue_emails(messages=[message], **scheduling)[0]


def recover_jobs(*, now: datetime | None = None) -> dict[str, int]:
    """Return jobs of dead workers to the queue (or record them as sent, when the journal says
    the server took them), republish due jobs whose message was lost, and cancel pending jobs past
    their expiry."""
    now = now or timezone.now()
    settled, released = _release_expired_leases(now)
    expired = EmailJob.objects.filter(status=Status.PENDING, expires_at__lte=now).update(
        status=Status.CANCELLED,
        last_error="expired before it could be sent",
        updated_at=now,
    )
    # While a worker drains, due jobs are published by nobody on purpose: it claims them all.
    lost = [] if publishing.worker_draining() else _redispatch_stale(now)
    republish = released + lost
    if republish:
        publishing.wake_workers(republish)
    if republish or expired or settled:
        logger.info(
            "recovery: %d expired lease(s) released, %d settled as sent from the journal, "
            "%d job(s) republished, %d expired",
            len(released),
            settled,
            len(lost),
            expired,
        )
    return {
        "released": len(released),
        "settled": settled,
        "republished": len(lost),
        "expired": expired,
    }


def _redispatch_stale(now: datetime) -> list[int]:
    """Due jobs published longer ago than EMAIL_REDISPATCH_AFTER, their message presumably lost:
    stamped again and returned. Rows a claim holds are skipped (PostgreSQL), not waited for, so
    the sweeper never deadlocks with a claim."""
    stale_before = now - timedelta(seconds=option("REDISPATCH_AFTER"))
    with transaction.atomic():
        lost = list(
            EmailJob.objects.filter(
                status=Status.PENDING, next_attempt_at__lte=now, dispatched_at__lt=stale_before
            )
            .order_by("next_attempt_at")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)[: option("SWEEP_BATCH")]
        )
        if lost:
            EmailJob.objects.filter(pk__in=lost, status=Status.PENDING).update(dispatched_at=now)
    return lost


def _release_expired_leases(now: datetime) -> tuple[int, list[int]]:
    """Jobs whose worker was lost: those the server had accepted (the journal says so) are
    recorded as sent; the others go back to pending, their attempt recorded as lost. Returns how
    many were settled, and the ids released for a retry. While the journal cannot be read,
    nothing is released: a job sent just before its worker died would go out twice."""
    expired = EmailJob.objects.filter(status=Status.SENDING, lease_expires_at__lt=now)
    leases = list(expired.values_list("pk", "attempts", "claim_token")[: option("SWEEP_BATCH")])
    if not leases:
        return 0, []
    try:
        accepted = journal.find((pk, token) for pk, _, token in leases)
    except (redis.RedisError, OSError) as error:
        logger.warning(
            "recovery: %d expired lease(s) left until the journal can be read: %s",
            len(leases),
            error,
        )
        return 0, []
    settled = _settle_from_journal(leases, accepted)
    released = []
    for pk, attempts, _ in leases:
        if pk in accepted:
            continue
        exhausted = not should_retry(attempts, option("RETRY_MAX_ATTEMPTS"))
        error = f"worker lost during attempt {attempts} (lease expired)"
        with transaction.atomic():
            held = expired.filter(pk=pk, attempts=attempts).update(
                status=Status.FAILED if exhausted else Status.PENDING,
                lease_expires_at=None,
                next_attempt_at=now,
                dispatched_at=now,
                last_error=error,
                updated_at=now,
            )
            if held:
                EmailAttempt.objects.create(
                    job_id=pk, number=attempts, started_at=now, outcome=Outcome.LOST, error=error
                )
        if held:
            metrics.observe_attempt(outcome=Outcome.LOST, duration=0.0)
        if held and not exhausted:
            released.append(pk)
    return settled, released


def _settle_from_journal(
    leases: list[tuple[int, int, str]], accepted: dict[int, journal.Acceptance]
) -> int:
    by_claim = defaultdict(list)
    for pk, _, token in leases:
        if pk in accepted:
            by_claim[token].append(accepted[pk])
    settled = sum(delivery.settle_accepted(token, group) for token, group in by_claim.items())
    if settled:
        logger.warning(
            "recovery: %d job(s) whose worker was lost after the server accepted them recorded "
            "as sent, from the journal, not sent again",
            settled,
        )
    return settled


def retry_jobs(*, job_ids: Sequence[int]) -> int:
    """Failed jobs back to pending with a fresh attempt budget, published on commit."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            EmailJob.objects.filter(pk__in=job_ids, status=Status.FAILED).values_list(
                "pk", flat=True
            )
        )
        EmailJob.objects.filter(pk__in=ids, status=Status.FAILED).update(
            status=Status.PENDING,
            attempts=0,
            next_attempt_at=now,
            dispatched_at=now,
            lease_expires_at=None,
            updated_at=now,
        )
        transaction.on_commit(lambda: publishing.publish_jobs(ids))
    return len(ids)


def cancel_jobs(*, job_ids: Sequence[int]) -> int:
    """Pending jobs become cancelled; a job already being sent is left to finish."""
    return EmailJob.objects.filter(pk__in=job_ids, status=Status.PENDING).update(
        status=Status.CANCELLED, updated_at=timezone.now()
    )


def retry_failed_jobs(
    *, limit: int, batch_size: int = 5000, on_batch: Callable[[int], None] | None = None
) -> int:
    """Up to `limit` failed jobs, oldest first, back to pending: one short transaction a batch."""
    job_ids = selectors.failed_job_ids(limit=limit)
    retried = 0
    for start in range(0, len(job_ids), batch_size):
        batch = job_ids[start : start + batch_size]
        retried += retry_jobs(job_ids=batch)
        if on_batch:
            on_batch(len(batch))
    return retried


PURGEABLE = (Status.SENT, Status.FAILED, Status.CANCELLED)


def purge_jobs(
    *,
    status: str,
    created_before: datetime,
    batch_size: int = 1000,
    rest: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Delete finished jobs created before a time, with their attempts, a batch a transaction.

    Batches are taken in (status, created_at) index order and each is deleted in its own short
    transaction, so workers and the admin wait at most for one batch, never for the whole purge.
    After each batch the purge rests `rest` times as long as the batch took. On SQLite each batch
    holds the one write lock (the writer flock, then SQLite's), which is not fair: let go and
    taken again at once, it went back to the purge before a waiting sender ran, and back to back
    batches left a sender one write in 200 ms for the whole purge.
    """
    if status not in PURGEABLE:
        raise ValueError(f"only sent, failed or cancelled jobs can be purged, not {status!r}")
    old = EmailJob.objects.filter(status=status, created_at__lt=created_before)
    deleted = {"jobs": 0, "attempts": 0}
    since = None
    while True:
        started = monotonic()
        with transaction.atomic():
            # Locked rows cannot be retried (failed -> pending) between this read and the delete.
            batch = (old.filter(created_at__gte=since) if since else old).select_for_update()
            rows = list(batch.order_by("created_at").values_list("pk", "created_at")[:batch_size])
            if not rows:
                break
            job_ids = [pk for pk, _ in rows]
            deleted["attempts"] += _delete(EmailAttempt.objects.filter(job_id__in=job_ids))
            deleted["jobs"] += _delete(EmailJob.objects.filter(pk__in=job_ids))
        # Continue from the last creation time instead of rescanning deleted index entries.
        since = rows[-1][1]
        if on_batch:
            on_batch(len(job_ids))
        sleep(rest * (monotonic() - started))
    if deleted["jobs"]:
        _vacuum(EmailJob, EmailAttempt)
    return deleted


def _vacuum(*models) -> None:
    """On PostgreSQL, VACUUM what a purge emptied now, not when autovacuum gets to it: until then
    the pages it touched are not all-visible, and counting jobs by status reads them as well as
    the index (stats took 0.5-0.9 s after purging 480,000 of a million jobs, 0.05 s after this).
    A plain VACUUM blocks neither reads nor writes; outside a transaction only, as it must be."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    tables = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in models)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {tables}")


def _delete(rows) -> int:
    """Delete in one statement; Django's collector fetches the rows first (a purge took 2x as long).

    Safe because the attempts go first and nothing listens for their deletion; should a new model
    point at EmailJob, the database's foreign key refuses the purge rather than orphaning rows.
    """
    return rows._raw_delete(rows.db)

"""Writes and state changes of the queue: enqueue, claim, settle an attempt, recover.

State machine of a job: pending -> sending (claimed, attempts+1, leased) -> sent | failed |
pending (retry later). A claim is one conditional UPDATE, so only one worker ever holds a job; the
attempt number is the fencing token with which the holder settles it.
"""

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import metrics, publishing, selectors
from .composition import job_fields
from .conf import get_smtp_settings, option
from .exceptions import PermanentSendError, SendError, SmtpConfigurationError
from .models import EmailAttempt, EmailJob
from .retry import retry_delay, should_retry
from .smtp import client as smtp_client

logger = logging.getLogger(__name__)
Status = EmailJob.Status
Outcome = EmailAttempt.Outcome


def enqueue_emails(*, messages: Iterable[EmailMessage]) -> list[EmailJob]:
    """Validate every message, write the jobs in the caller's transaction, publish on commit.

    All or nothing: one invalid message raises EmailRejected and no job is written.
    """
    fields = [job_fields(message) for message in messages]
    now = timezone.now()
    jobs = [EmailJob(**f, next_attempt_at=now, dispatched_at=now) for f in fields]
    with transaction.atomic():
        EmailJob.objects.bulk_create(jobs, batch_size=500)
        job_ids = [job.pk for job in jobs]
        transaction.on_commit(lambda: publishing.publish_jobs(job_ids))
    return jobs


def enqueue_email(*, message: EmailMessage) -> EmailJob:
    return enqueue_emails(messages=[message])[0]


def claim_job(*, job_id: int, now: datetime) -> EmailJob | None:
    """Take a due pending job for sending; None when it is not pending, not due or gone."""
    claimed = EmailJob.objects.filter(
        pk=job_id, status=Status.PENDING, next_attempt_at__lte=now
    ).update(
        status=Status.SENDING,
        attempts=F("attempts") + 1,
        lease_expires_at=now + timedelta(seconds=option("LEASE_SECONDS")),
        updated_at=now,
    )
    if not claimed:
        return None
    return EmailJob.objects.only(
        "pk", "attempts", "envelope_from", "envelope_recipients", "mime_message"
    ).get(pk=job_id)


def deliver_job(*, job_id: int) -> str | None:
    """Claim and send one job; returns the attempt's outcome, or None when nothing was claimed."""
    job = claim_job(job_id=job_id, now=timezone.now())
    if job is None:
        _republish_if_early(job_id)
        return None
    started_at, started = timezone.now(), time.monotonic()
    try:
        result = smtp_client.send(
            settings=get_smtp_settings(),
            envelope_from=job.envelope_from,
            recipients=job.envelope_recipients,
            message=bytes(job.mime_message),
        )
    except SendError as error:
        outcome = _settle_failure(job, error, started_at, time.monotonic() - started)
    else:
        outcome = Outcome.SENT
        refused = {address: list(reply) for address, reply in result.refused.items()}
        _settle(
            job,
            Outcome.SENT,
            started_at,
            time.monotonic() - started,
            code=int(result.response[:3]),
            error=_refusal_summary(refused),
            status=Status.SENT,
            sent_at=timezone.now(),
            smtp_response=result.response,
            refused_recipients=refused,
        )
    return outcome


def _refusal_summary(refused: dict) -> str:
    return "; ".join(f"{address}: {code} {text}" for address, (code, text) in refused.items())


def _republish_if_early(job_id: int) -> None:
    """A message that arrived before its job is due (clock skew) is sent back with a countdown."""
    job = EmailJob.objects.filter(pk=job_id, status=Status.PENDING).only("next_attempt_at").first()
    if job is not None:
        wait = (job.next_attempt_at - timezone.now()).total_seconds()
        if wait > 0:
            publishing.publish_jobs([job_id], countdown=wait)


def _settle_failure(job: EmailJob, error: SendError, started_at: datetime, duration: float) -> str:
    now = timezone.now()
    common = {"code": error.code, "error": str(error)}
    if isinstance(error, SmtpConfigurationError):
        # Our configuration, not the message: give the attempt back and wait for a fix.
        delay = option("CONFIG_ERROR_DELAY")
        logger.error("SMTP configuration error, job %s deferred %.0fs: %s", job.pk, delay, error)
        _settle(
            job,
            Outcome.DEFERRED,
            started_at,
            duration,
            **common,
            status=Status.PENDING,
            attempts=F("attempts") - 1,
            next_attempt_at=now + timedelta(seconds=delay),
            dispatched_at=now,
            publish_countdown=delay,
        )
        return Outcome.DEFERRED
    if isinstance(error, PermanentSendError) or not should_retry(
        job.attempts, option("RETRY_MAX_ATTEMPTS")
    ):
        _settle(
            job,
            Outcome.FAILED,
            started_at,
            duration,
            **common,
            status=Status.FAILED,
            refused_recipients={a: list(r) for a, r in error.refused.items()},
        )
        return Outcome.FAILED
    delay = retry_delay(job.attempts, option("RETRY_DELAYS"))
    _settle(
        job,
        Outcome.RETRY,
        started_at,
        duration,
        **common,
        status=Status.PENDING,
        next_attempt_at=now + timedelta(seconds=delay),
        dispatched_at=now,
        publish_countdown=delay,
    )
    return Outcome.RETRY


def _settle(
    job: EmailJob,
    outcome: str,
    started_at: datetime,
    duration: float,
    *,
    code: int | None,
    error: str,
    publish_countdown: float | None = None,
    **changes,
) -> None:
    """Record the attempt and move the job on, but only if we still hold its claim."""
    with transaction.atomic():
        held = EmailJob.objects.filter(
            pk=job.pk, status=Status.SENDING, attempts=job.attempts
        ).update(
            lease_expires_at=None,
            last_smtp_code=code,
            last_error=error,
            updated_at=timezone.now(),
            **changes,
        )
        EmailAttempt.objects.create(
            job_id=job.pk,
            number=job.attempts,
            started_at=started_at,
            duration_seconds=duration,
            outcome=outcome,
            smtp_code=code,
            error=error,
        )
        if held and publish_countdown is not None:
            transaction.on_commit(
                lambda: publishing.publish_jobs([job.pk], countdown=publish_countdown)
            )
    metrics.observe_attempt(outcome=outcome, duration=duration)
    logger.info(
        "email job=%s attempt=%s outcome=%s code=%s duration=%.3fs%s",
        job.pk,
        job.attempts,
        outcome,
        code,
        duration,
        f" error={error!r}" if error else "",
        extra={
            "job_id": job.pk,
            "attempt": job.attempts,
            "outcome": str(outcome),
            "smtp_code": code,
            "duration_seconds": round(duration, 4),
        },
    )
    if not held:
        logger.warning("job %s was taken over while attempt %s ran", job.pk, job.attempts)


def recover_jobs(*, now: datetime | None = None) -> dict[str, int]:
    """Return jobs of dead workers to the queue and republish due jobs whose message was lost."""
    now = now or timezone.now()
    released = _release_expired_leases(now)
    stale_before = now - timedelta(seconds=option("REDISPATCH_AFTER"))
    lost = list(
        EmailJob.objects.filter(
            status=Status.PENDING, next_attempt_at__lte=now, dispatched_at__lt=stale_before
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[: option("SWEEP_BATCH")]
    )
    if lost:
        EmailJob.objects.filter(pk__in=lost, status=Status.PENDING).update(dispatched_at=now)
    republish = released + lost
    if republish:
        publishing.publish_jobs(republish)
        logger.info(
            "recovery: %d expired lease(s) released, %d job(s) republished",
            len(released),
            len(lost),
        )
    return {"released": len(released), "republished": len(lost)}


def _release_expired_leases(now: datetime) -> list[int]:
    expired = EmailJob.objects.filter(status=Status.SENDING, lease_expires_at__lt=now)
    released = []
    for pk, attempts in expired.values_list("pk", "attempts")[: option("SWEEP_BATCH")]:
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
        if held and not exhausted:
            released.append(pk)
    return released


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
    batch_size: int = 5000,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Delete finished jobs created before a time, with their attempts, a batch a transaction.

    Batches are taken in (status, created_at) index order and each is deleted in its own short
    transaction, so workers and the admin wait at most for one batch, never for the whole purge.
    """
    if status not in PURGEABLE:
        raise ValueError(f"only sent, failed or cancelled jobs can be purged, not {status!r}")
    old = EmailJob.objects.filter(status=status, created_at__lt=created_before)
    deleted = {"jobs": 0, "attempts": 0}
    since = None
    while True:
        with transaction.atomic():
            # Locked rows cannot be retried (failed -> pending) between this read and the delete.
            batch = (old.filter(created_at__gte=since) if since else old).select_for_update()
            rows = list(batch.order_by("created_at").values_list("pk", "created_at")[:batch_size])
            if not rows:
                return deleted
            job_ids = [pk for pk, _ in rows]
            deleted["attempts"] += _delete(EmailAttempt.objects.filter(job_id__in=job_ids))
            deleted["jobs"] += _delete(EmailJob.objects.filter(pk__in=job_ids))
        # Continue from the last creation time instead of rescanning deleted index entries.
        since = rows[-1][1]
        if on_batch:
            on_batch(len(job_ids))


def _delete(rows) -> int:
    """Delete in one statement; Django's collector fetches the rows first (a purge took 2x as long).

    Safe because the attempts go first and nothing listens for their deletion; should a new model
    point at EmailJob, the database's foreign key refuses the purge rather than orphaning rows.
    """
    return rows._raw_delete(rows.db)

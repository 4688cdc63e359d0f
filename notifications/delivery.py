"""Sending: claim due jobs, send them over the process's SMTP connection(s), settle each attempt.

A task claims its own job first and, in the same go, up to EMAIL_BATCH_SIZE - 1 other due jobs
(highest priority, longest waiting first), so a lone job goes out at once and a backlog drains in
batches over one connection (or EMAIL_SMTP_CONNECTIONS at once) instead of paying the broker and
the database per message. The other jobs' broker messages then find nothing to claim, or claim the
next batch.

Each claim (claiming.py) is conditional (status='pending'), stamped with a claim token, and
leased. A failed attempt is settled at once; the sent jobs of a batch are settled together once
the batch is over, fenced by the claim token (settling.py), and each acceptance is journaled in
Redis as the server gives it (journal.py), so a crash can still repeat at most the one message that
was on the wire (one per connection).
"""

import logging
import time
from collections import Counter, defaultdict, deque
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from . import journal, metrics, publishing, settling, throttle
from .claiming import claim_jobs, due_jobs, queue_head
from .composition import wire_message
from .conf import SmtpSettings, batch_size, get_smtp_settings, option
from .exceptions import PermanentSendError, SendError, SmtpConfigurationError
from .models import EmailAttempt, EmailJob
from .retry import retry_delay, should_retry
from .settling import refusal_summary, reply_code
from .smtp import get_client, sending_threads

logger = logging.getLogger(__name__)
Status = EmailJob.Status
Outcome = EmailAttempt.Outcome


def deliver_job(*, job_id: int) -> str | None:
    """Claim and send this one job; returns the attempt's outcome, or None if none was made."""
    wait, probing = throttle.circuit_wait()
    if wait:
        return None  # sending is paused; the job stays pending with its attempts unused
    jobs = claim_jobs(job_id=job_id, now=timezone.now(), limit=1, others=False)
    if not jobs:
        _republish_if_early(job_id)
        return None
    sender = _Sender(deadline=None, probing=probing)
    try:
        sender.add(jobs)
        sender.send()
    finally:
        sender.finish()
    return sender.outcomes[0] if sender.outcomes else None


def deliver_due_jobs(*, job_id: int | None) -> int:
    """The send task: this job first, then due jobs in batches, within half a lease of time.

    While sending is paused nothing is claimed: the jobs stay pending, and the message that paused
    everyone scheduled the wake-up. A probe is one job; once it goes through, batches resume.
    """
    wait, probing = throttle.circuit_wait()
    if wait:
        _wake_after_pause(job_id, wait)
        return 0
    deadline = time.monotonic() + option("LEASE_SECONDS") / 2
    sender, first = _Sender(deadline=deadline, probing=probing), True
    try:
        while True:
            if time.monotonic() >= deadline:  # out of time: another task carries on
                publishing.mark_draining(False)  # first, so that the hand-over sees every job
                _hand_over()
                break
            publishing.mark_draining(True)
            probing = sender.probing
            limit = 1 if probing else batch_size()
            jobs = claim_jobs(job_id=job_id if first else None, now=timezone.now(), limit=limit)
            if first and (not jobs or jobs[0].pk != job_id):
                _republish_if_early(job_id)
            first = False
            if len(jobs) == limit and not probing:
                publishing.call_for_help(jobs[-1].pk)
            sender.add(jobs)
            # Over several connections, the next batch is claimed while the last replies of this
            # one are awaited, so that the connections do not stand idle in between.
            sender.send(until_room=not probing)
            if sender.stopped:
                break  # a pause or out of time, which published what follows
            if probing and not sender.probing:
                continue  # the probe went through: carry on in full batches
            if len(jobs) == limit or _any_due():
                continue  # jobs keep coming in: they need no wake-up of their own
            sender.send()  # the last replies, then a last look
            if sender.stopped:
                break
            publishing.mark_draining(False)
            if not _any_due():  # the last look: whatever was committed while we were marked
                break
    finally:
        sender.finish()
        publishing.mark_draining(False)
    return len(sender.outcomes)


def _any_due() -> bool:
    return due_jobs(timezone.now()).exists()


def _hand_over() -> None:
    head = queue_head(timezone.now())
    if head is not None:
        publishing.publish_jobs([head])


class _Sender:
    """Claimed jobs on their way out, over EMAIL_SMTP_CONNECTIONS connections at once.

    With more than one, the SMTP conversations run on this thread's sending threads, each with a
    connection of its own, which journal each acceptance in Redis as they get it; the database is
    written here alone, as each reply comes in. With one, each message is sent here, in order.
    A task's batches (claims) all go through one sender; the sent jobs of a claim are settled
    together once its last job is done.
    """

    def __init__(self, *, deadline: float | None, probing: bool) -> None:
        self.deadline, self.probing = deadline, probing
        self.width = 1 if probing else option("SMTP_CONNECTIONS")
        self.smtp_settings, self.settings_error = None, None
        self.waiting: deque[EmailJob] = deque()  # claimed, not started
        self.in_flight: dict[Future, EmailJob] = {}
        self.unfinished: Counter[str] = Counter()  # jobs of each claim not done yet
        self.accepted: defaultdict[str, list[journal.Acceptance]] = defaultdict(list)
        self.outcomes: list[str] = []
        self.stopped = self.paused = False

    def add(self, jobs: list[EmailJob]) -> None:
        """A claim's jobs, to be sent after those already waiting."""
        if not jobs:
            return
        try:
            self.smtp_settings = get_smtp_settings()  # once a claim: a change applies next claim
            self.settings_error = None
        except SmtpConfigurationError as error:
            self.smtp_settings, self.settings_error = None, error
        self.unfinished.update(job.claim_token for job in jobs)
        self.waiting.extend(jobs)

    def send(self, *, until_room: bool = False) -> None:
        """Send what is waiting; with `until_room`, return as soon as there is room for more
        (see _has_room; with one connection: once all is done)."""
        while self._start_more():
            if until_room and self._has_room():
                return
            done, _ = futures.wait(self.in_flight, return_when=futures.FIRST_COMPLETED)
            for future in [f for f in self.in_flight if f in done]:  # in the order started
                self._record(self.in_flight.pop(future), future.result())

    def _has_room(self) -> bool:
        """Time to claim more: over several connections, as soon as every claimed job has
        started, so that the next claim's jobs take each connection the moment it is free. Never
        after a stop: then everything on the wire is awaited."""
        return self.width > 1 and not (self.waiting or self.stopped)

    def finish(self) -> None:
        """Wait for the conversations still on the wire and settle every claim, also after an
        error here: an acceptance that went unrecorded would be sent again."""
        for future, job in list(self.in_flight.items()):
            try:
                accepted = self.accepted[job.claim_token]
                self.outcomes.append(_settle_transmission(job, future.result(), accepted)[0])
            except Exception:
                logger.exception("job %s: recording its attempt failed", job.pk)
        self.in_flight.clear()
        for token in list(self.accepted):
            self._settle_claim(token)

    def _start_more(self) -> bool:
        """Start jobs until `width` are on the wire; whether any is on the wire."""
        while not self.stopped and self.waiting and len(self.in_flight) < self.width:
            job = self.waiting[0]
            if self.deadline is not None and time.monotonic() > self.deadline:
                self._stop()
            elif self.smtp_settings is None:
                self.waiting.popleft()
                outcome = _settle_failure(job, self.settings_error, timezone.now(), 0.0)
                self._done(job)
                self._react(job, outcome, self.settings_error)
            elif wait := throttle.acquire_send_slot(self.smtp_settings):
                self._stop(delay=wait)
            else:
                self.in_flight[self._transmit(self.waiting.popleft())] = job
        return bool(self.in_flight)

    def _transmit(self, job: EmailJob) -> Future:
        if self.width == 1:
            future = Future()
            future.set_result(_transmit(job, self.smtp_settings))
            return future
        return sending_threads(self.width).submit(_transmit, job, self.smtp_settings)

    def _record(self, job: EmailJob, transmission: "_Transmission") -> None:
        outcome, error = _settle_transmission(job, transmission, self.accepted[job.claim_token])
        self._done(job)
        self._react(job, outcome, error)

    def _done(self, job: EmailJob) -> None:
        """One job of its claim is done; the claim's sent jobs are settled after its last."""
        self.unfinished[job.claim_token] -= 1
        if self.unfinished[job.claim_token] <= 0:
            del self.unfinished[job.claim_token]
            self._settle_claim(job.claim_token)

    def _settle_claim(self, token: str) -> None:
        accepted = self.accepted.pop(token, [])
        settle_accepted(token, accepted)
        if accepted:
            throttle.record_success()
            wal_checkpoints.after_batch()

    def _react(self, job: EmailJob, outcome: str, error: SendError | None) -> None:
        self.outcomes.append(outcome)
        if self.paused:
            return  # a message that was on the wire when we paused: the pause counts it already
        if _affects_every_message(error):
            # The server is unreachable or refuses us: the others would fail the same way and
            # lose an attempt each. Everyone pauses (the circuit breaker) and they wait; one
            # dropped connection alone pauses nobody.
            paused = throttle.record_connection_failure(
                str(error),
                certain=self.probing or isinstance(error, SmtpConfigurationError),
            )
            if paused or not option("CIRCUIT_BREAKER"):
                delay = paused or _delay_after(outcome, job)
                # One wake-up for everyone at the end of the pause, not one per release.
                self.paused = True
                self._stop(delay=delay, publish=False)
                _wake_after_pause(job.pk, delay)
        elif self.probing:
            throttle.close_circuit()
            self.probing = False
            self.width = option("SMTP_CONNECTIONS")

    def _stop(self, *, delay: float = 0.0, publish: bool = True) -> None:
        """Start nothing more: the jobs not started go back to the queue, their attempt unused.
        Those on the wire finish and are recorded."""
        if self.stopped:
            return
        released = list(self.waiting)
        self.waiting.clear()
        self.stopped = True
        _release(released, delay=delay, publish=publish)
        for job in released:
            self._done(job)


CHECKPOINT_INTERVAL = 0.2  # seconds: at most one WAL checkpoint this often a process


class _WalCheckpoints:
    """SQLite (our backend): fold the WAL into the database file after a batch and outside the
    writer lock, rather than in some producer's commit (5-6 ms every ~140 of them). At most
    once every CHECKPOINT_INTERVAL a process: most of a checkpoint's cost is its two fsyncs, not
    the pages it copies. What a skipped one would have copied waits in the WAL (committed and
    durable) for the next checkpoint, any process's."""

    def __init__(self) -> None:
        self.last = float("-inf")

    def after_batch(self) -> None:
        now = time.monotonic()
        if now - self.last < CHECKPOINT_INTERVAL:
            return
        self.last = now
        checkpoint = getattr(connection, "wal_checkpoint", None)
        if checkpoint is None:
            return
        try:
            checkpoint()
        except DatabaseError as error:  # the batch is settled; a later commit checkpoints instead
            logger.warning("WAL checkpoint after a batch failed: %s", error)


wal_checkpoints = _WalCheckpoints()


def _wake_after_pause(job_id: int | None, wait: float) -> None:
    """One message, for everyone, to try again when the pause ends."""
    if job_id is not None and throttle.claim_wakeup(wait):
        publishing.publish_jobs([job_id], countdown=wait + 0.05)


def _affects_every_message(error: SendError | None) -> bool:
    return isinstance(error, SmtpConfigurationError) or (
        error is not None
        and not isinstance(error, PermanentSendError)
        and error.code in (None, 421)
    )


def _delay_after(outcome: str, job: EmailJob) -> float:
    if outcome == Outcome.DEFERRED:
        return option("CONFIG_ERROR_DELAY")
    return retry_delay(max(job.attempts, 1), option("RETRY_DELAYS"))


def _release(jobs: list[EmailJob], *, delay: float = 0.0, publish: bool = True) -> None:
    """Give claimed, unattempted jobs back: attempts restored, due after `delay`, republished."""
    if not jobs:
        return
    now = timezone.now()
    for job in jobs:
        EmailJob.objects.filter(pk=job.pk, status=Status.SENDING, attempts=job.attempts).update(
            status=Status.PENDING,
            attempts=F("attempts") - 1,
            lease_expires_at=None,
            next_attempt_at=now + timedelta(seconds=delay),
            dispatched_at=now,
            updated_at=now,
        )
    if publish:
        publishing.publish_jobs([jobs[0].pk], countdown=delay or None)


@dataclass(frozen=True)
class _Transmission:
    """What one SMTP conversation gave: the server's refusal, or its acceptance and whether the
    journal took it."""

    started_at: datetime
    duration: float
    error: SendError | None = None
    acceptance: journal.Acceptance | None = None
    journaled: bool = False


def _transmit(job: EmailJob, smtp_settings: SmtpSettings) -> _Transmission:
    """Send one job over this thread's connection and journal an acceptance at once. It writes
    Redis but not the database, so that it may run on a sending thread."""
    started_at, started = timezone.now(), time.monotonic()
    try:
        result = get_client().send(
            settings=smtp_settings,
            envelope_from=job.envelope_from,
            recipients=job.envelope_recipients,
            message=_wire_bytes(job),
        )
    except SendError as error:
        return _Transmission(started_at, time.monotonic() - started, error=error)
    duration = time.monotonic() - started
    acceptance = journal.Acceptance(
        job_id=job.pk,
        attempt=job.attempts,
        started_at=started_at,
        duration=duration,
        sent_at=started_at + timedelta(seconds=duration),
        response=result.response,
        refused={address: list(reply) for address, reply in result.refused.items()},
    )
    journaled = journal.record(job.claim_token, acceptance)
    return _Transmission(started_at, duration, acceptance=acceptance, journaled=journaled)


def _settle_transmission(
    job: EmailJob, transmission: _Transmission, accepted: list[journal.Acceptance]
) -> tuple[str, SendError | None]:
    """A failure is settled at once; a journaled acceptance joins `accepted`, to be settled with
    the batch, one the journal could not take is settled at once."""
    if transmission.error is not None:
        error = transmission.error
        return _settle_failure(job, error, transmission.started_at, transmission.duration), error
    if transmission.journaled:
        accepted.append(transmission.acceptance)
    else:
        settle_accepted(job.claim_token, [transmission.acceptance], journaled=False)
    return Outcome.SENT, None


def _wire_bytes(job: EmailJob) -> bytes:
    """The job's message; one that cannot be rendered (enqueue checked it could) fails for good,
    as a refusal would: retrying renders the same fields again."""
    try:
        return wire_message(job)
    except (ValueError, TypeError, LookupError, AttributeError) as exc:  # bad fields, not SMTP
        raise PermanentSendError(f"the message cannot be rendered: {exc}") from exc


def settle_accepted(
    claim_token: str, accepted: list[journal.Acceptance], *, journaled: bool = True
) -> int:
    """Record jobs of one claim that the server accepted as sent; returns how many were still
    held by that claim.

    One statement for the batch (settling.py): per message, a small part of what an ORM update
    and a transaction of its own cost. A job no longer held keeps what its new holder wrote.
    """
    if not accepted:
        return 0
    held = settling.record_sent(claim_token, accepted, timezone.now())
    taken_over = [acceptance for acceptance in accepted if acceptance.job_id not in held]
    if taken_over:
        # The attempt happened either way; the sweeper may have recorded it from the journal.
        with transaction.atomic():
            EmailAttempt.objects.bulk_create(map(settling.attempt, _unrecorded(taken_over)))
    metrics.observe_attempts(
        [
            (Outcome.SENT, acceptance.duration)
            for acceptance in accepted
            if acceptance.job_id in held
        ]
    )
    for acceptance in accepted:
        _log_attempt(
            acceptance.job_id,
            acceptance.attempt,
            Outcome.SENT,
            reply_code(acceptance.response),
            acceptance.duration,
            refusal_summary(acceptance.refused),
            held=acceptance.job_id in held,
        )
    if journaled:
        journal.forget(claim_token, [acceptance.job_id for acceptance in accepted])
    return len(held)


def _unrecorded(accepted: list[journal.Acceptance]) -> list[journal.Acceptance]:
    recorded = set(
        EmailAttempt.objects.filter(
            job_id__in=[acceptance.job_id for acceptance in accepted], outcome=Outcome.SENT
        ).values_list("job_id", "number")
    )
    return [a for a in accepted if (a.job_id, a.attempt) not in recorded]


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
    _log_attempt(job.pk, job.attempts, outcome, code, duration, error, held=held)


def _log_attempt(
    job_id: int, attempt: int, outcome: str, code: int | None, duration: float, error: str, *, held
) -> None:
    logger.info(
        "email job=%s attempt=%s outcome=%s code=%s duration=%.3fs%s",
        job_id,
        attempt,
        outcome,
        code,
        duration,
        f" error={error!r}" if error else "",
        extra={
            "job_id": job_id,
            "attempt": attempt,
            "outcome": str(outcome),
            "smtp_code": code,
            "duration_seconds": round(duration, 4),
        },
    )
    if not held:
        logger.warning("job %s was taken over while attempt %s ran", job_id, attempt)


def _republish_if_early(job_id: int | None) -> None:
    """A message that arrived before its job is due (clock skew) is sent back with a countdown."""
    job = EmailJob.objects.filter(pk=job_id, status=Status.PENDING).only("next_attempt_at").first()
    if job is not None:
        wait = (job.next_attempt_at - timezone.now()).total_seconds()
        if wait > 0:
            publishing.publish_jobs([job_id], countdown=wait)

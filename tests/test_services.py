"""The job state machine, run in this process against the real SMTP server (no worker)."""

import json
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from notifications import claiming, delivery, journal, metrics, publishing, services
from notifications.models import EmailAttempt, EmailJob
from tests.factories import EmailJobFactory
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)
Status = EmailJob.Status


def test_a_job_is_claimed_once_and_sent_once(smtp, broker):
    job = EmailJobFactory()
    assert delivery.deliver_job(job_id=job.pk) == "sent"
    # A redelivered or duplicated task for the same job finds nothing to claim.
    assert delivery.deliver_job(job_id=job.pk) is None
    assert smtp.by_message_id() == {job.message_id: 1}
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_smtp_code) == (Status.SENT, 1, 250)
    assert job.smtp_response.startswith("250 ")
    assert job.sent_at is not None and job.lease_expires_at is None


def test_claim_is_exclusive():
    job = EmailJobFactory()
    now = timezone.now()
    assert claiming.claim_jobs(job_id=job.pk, now=now, limit=1)
    assert claiming.claim_jobs(job_id=job.pk, now=now, limit=1) == []
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.SENDING, 1)


def test_a_claimer_whose_picked_jobs_were_taken_claims_the_next_ones(monkeypatch):
    if connection.features.has_select_for_update_skip_locked:
        pytest.skip("PostgreSQL picks and claims in one statement: no read to race with")
    first, second = EmailJobFactory(index=1), EmailJobFactory(index=2)
    now = timezone.now()
    real_pick, picks = claiming._pick, []

    def pick_then_lose_the_race(*args, **kwargs):
        ids = real_pick(*args, **kwargs)
        picks.append(ids)
        if len(picks) == 1:  # another claimer takes what we picked before our UPDATE runs
            monkeypatch.setattr(claiming, "_pick", real_pick)
            assert [job.pk for job in claiming.claim_jobs(job_id=None, now=now, limit=1)] == ids
            monkeypatch.setattr(claiming, "_pick", pick_then_lose_the_race)
        return ids

    monkeypatch.setattr(claiming, "_pick", pick_then_lose_the_race)
    claimed = claiming.claim_jobs(job_id=None, now=now, limit=1)
    assert picks[0] == [first.pk]
    # The pick was a plain read, so it is made again under the lock.
    assert [job.pk for job in claimed] == [second.pk]
    assert set(EmailJob.objects.values_list("attempts", flat=True)) <= {0, 1}


def test_a_job_not_yet_due_is_not_claimed():
    job = EmailJobFactory(next_attempt_at=timezone.now() + timedelta(minutes=5))
    assert claiming.claim_jobs(job_id=job.pk, now=timezone.now(), limit=1) == []


def test_451_sets_the_job_back_to_pending_with_the_next_delay(smtp, broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "RETRY_DELAYS": [30, 60]}
    smtp.data_replies.append("451 4.3.0 try again later")
    job = EmailJobFactory()
    before = timezone.now()
    assert delivery.deliver_job(job_id=job.pk) == "retry"
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_smtp_code) == (Status.PENDING, 1, 451)
    assert "try again later" in job.last_error
    wait = (job.next_attempt_at - before).total_seconds()
    assert 0.8 * 30 <= wait <= 31
    (raw,) = broker.client().lrange("email", 0, -1)
    eta = json.loads(raw)["headers"]["eta"]
    assert abs((datetime.fromisoformat(eta) - job.next_attempt_at).total_seconds()) < 1


def test_transient_failures_stop_after_the_maximum(smtp, broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "RETRY_MAX_ATTEMPTS": 2}
    smtp.data_replies.extend(["451 busy", "451 busy"])
    job = EmailJobFactory()
    assert delivery.deliver_job(job_id=job.pk) == "retry"
    EmailJob.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())
    assert delivery.deliver_job(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_smtp_code) == (Status.FAILED, 2, 451)
    assert list(job.attempt_log.values_list("outcome", flat=True)) == ["retry", "failed"]


def test_smtp_server_down_is_transient(smtp, broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "SMTP_PORT": 1}  # nothing listens there
    job = EmailJobFactory()
    assert delivery.deliver_job(job_id=job.pk) == "retry"
    job.refresh_from_db()
    assert job.status == Status.PENDING
    assert "connection to the SMTP server refused" in job.last_error


def test_expired_lease_returns_the_job_and_records_the_lost_attempt(broker):
    job = EmailJobFactory()
    claiming.claim_jobs(job_id=job.pk, now=timezone.now(), limit=1)
    result = services.recover_jobs(now=timezone.now() + timedelta(minutes=5))
    assert result == {"released": 1, "settled": 0, "republished": 0, "expired": 0}
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.PENDING, 1)
    assert job.attempt_log.get().outcome == EmailAttempt.Outcome.LOST
    assert broker.client().llen("email") == 1


class WorkerDied(BaseException):
    """Stands for a SIGKILL between the SMTP server's acceptance and the settle."""


def _die(*args, **kwargs):
    raise WorkerDied


def test_a_batch_is_settled_together_and_leaves_no_journal(smtp, broker):
    jobs = [EmailJobFactory(index=i) for i in range(5)]
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 5
    assert smtp.by_message_id() == {job.message_id: 1 for job in jobs}
    assert set(EmailJob.objects.values_list("status", "attempts", "last_smtp_code")) == {
        (Status.SENT, 1, 250)
    }
    assert EmailAttempt.objects.filter(outcome=EmailAttempt.Outcome.SENT).count() == 5
    assert not broker.client().keys(f"{journal.KEY_PREFIX}*")
    assert metrics.read_tallies()[f"attempts:{EmailAttempt.Outcome.SENT}"] == 5


def test_a_job_accepted_before_its_worker_died_is_recorded_sent_not_sent_again(
    smtp, broker, monkeypatch
):
    job = EmailJobFactory()
    monkeypatch.setattr(delivery, "settle_accepted", _die)
    with pytest.raises(WorkerDied):
        delivery.deliver_due_jobs(job_id=job.pk)
    monkeypatch.undo()
    job.refresh_from_db()
    assert job.status == Status.SENDING  # the server has it; the database does not say so yet

    result = services.recover_jobs(now=timezone.now() + timedelta(minutes=5))
    assert result == {"released": 0, "settled": 1, "republished": 0, "expired": 0}
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_smtp_code) == (Status.SENT, 1, 250)
    assert job.smtp_response.startswith("250 ") and job.sent_at is not None
    assert list(job.attempt_log.values_list("outcome", flat=True)) == ["sent"]
    assert broker.client().llen("email") == 0  # nothing to send again
    assert smtp.by_message_id() == {job.message_id: 1}
    assert not broker.client().keys(f"{journal.KEY_PREFIX}*")


def test_without_redis_for_the_journal_each_job_is_settled_at_once(smtp, broker, settings):
    settings.EMAIL_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    jobs = [EmailJobFactory(index=i) for i in range(3)]
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 3
    assert smtp.by_message_id() == {job.message_id: 1 for job in jobs}
    assert set(EmailJob.objects.values_list("status", flat=True)) == {Status.SENT}
    assert EmailAttempt.objects.filter(outcome=EmailAttempt.Outcome.SENT).count() == 3


def test_expired_leases_wait_while_the_journal_cannot_be_read(broker, settings):
    job = EmailJobFactory()
    claiming.claim_jobs(job_id=job.pk, now=timezone.now(), limit=1)
    settings.EMAIL_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    result = services.recover_jobs(now=timezone.now() + timedelta(minutes=5))
    assert result["released"] == 0 and result["settled"] == 0
    job.refresh_from_db()
    assert job.status == Status.SENDING  # released once the journal says it was never sent
    assert not job.attempt_log.exists()


def test_a_live_lease_is_left_alone(broker):
    job = EmailJobFactory()
    claiming.claim_jobs(job_id=job.pk, now=timezone.now(), limit=1)
    assert services.recover_jobs() == {"released": 0, "settled": 0, "republished": 0, "expired": 0}
    job.refresh_from_db()
    assert job.status == Status.SENDING


def test_due_jobs_whose_message_was_lost_are_republished_once(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "REDISPATCH_AFTER": 60}
    old = timezone.now() - timedelta(minutes=5)
    lost = EmailJobFactory(index=1, dispatched_at=old, next_attempt_at=old)
    EmailJobFactory(index=2)  # just published: its message is still on its way
    assert services.recover_jobs() == {"released": 0, "settled": 0, "republished": 1, "expired": 0}
    assert broker.client().llen("email") == 1
    assert services.recover_jobs() == {"released": 0, "settled": 0, "republished": 0, "expired": 0}
    lost.refresh_from_db()
    assert lost.dispatched_at > old


def test_nothing_is_republished_while_a_worker_drains(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "REDISPATCH_AFTER": 60}
    old = timezone.now() - timedelta(minutes=5)
    EmailJobFactory(index=1, dispatched_at=old, next_attempt_at=old)
    publishing.mark_draining(True)  # that worker claims every due job before it stops
    assert services.recover_jobs()["republished"] == 0
    assert broker.client().llen("email") == 0
    publishing.mark_draining(False)
    assert services.recover_jobs()["republished"] == 1

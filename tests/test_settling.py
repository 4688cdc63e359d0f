"""Settling a claim's sent jobs: what the rows and attempts say afterwards, for jobs the claim
still holds and for one taken over meanwhile."""

from datetime import timedelta

import pytest
from django.utils import timezone

from notifications import claiming, delivery, settling
from notifications.journal import Acceptance
from notifications.models import EmailAttempt, EmailJob
from tests.factories import EmailJobFactory

pytestmark = pytest.mark.django_db(transaction=True)
Status = EmailJob.Status


def _acceptance(job: EmailJob, *, refused: dict | None = None, index: int = 0) -> Acceptance:
    started = timezone.now() - timedelta(seconds=5)
    return Acceptance(
        job_id=job.pk,
        attempt=job.attempts,
        started_at=started,
        duration=0.25 + index,
        sent_at=started + timedelta(seconds=0.25 + index),
        response=f"250 2.0.0 Ok: queued as Q{index}",
        refused=refused or {},
    )


def test_held_jobs_are_recorded_sent_and_a_taken_over_one_is_left_alone(broker):
    for index in range(3):
        EmailJobFactory(index=index)
    jobs = claiming.claim_jobs(job_id=None, now=timezone.now(), limit=3)
    token = jobs[0].claim_token
    refused = {"gone@example.org": [550, "5.1.1 Mailbox gone"]}
    accepted = [_acceptance(job, index=i) for i, job in enumerate(jobs[:2])]
    accepted[1] = _acceptance(jobs[1], refused=refused, index=1)
    EmailJob.objects.filter(pk=jobs[2].pk).update(claim_token="another-claim")
    accepted.append(_acceptance(jobs[2], index=2))

    before = timezone.now()
    assert delivery.settle_accepted(token, accepted, journaled=False) == 2

    for acceptance in accepted[:2]:
        job = EmailJob.objects.get(pk=acceptance.job_id)
        assert (job.status, job.last_smtp_code, job.lease_expires_at) == (Status.SENT, 250, None)
        assert job.sent_at == acceptance.sent_at
        assert job.smtp_response == acceptance.response
        assert job.updated_at >= before
        attempt = job.attempt_log.get()
        assert (attempt.number, attempt.outcome, attempt.smtp_code) == (1, "sent", 250)
        assert attempt.started_at == acceptance.started_at
        assert attempt.duration_seconds == acceptance.duration
    partly = EmailJob.objects.get(pk=accepted[1].job_id)
    assert partly.refused_recipients == refused
    assert partly.last_error == "gone@example.org: 550 5.1.1 Mailbox gone"
    assert partly.attempt_log.get().error == partly.last_error

    taken = EmailJob.objects.get(pk=jobs[2].pk)
    assert (taken.status, taken.claim_token, taken.sent_at) == (
        Status.SENDING,
        "another-claim",
        None,
    )
    assert list(taken.attempt_log.values_list("outcome", flat=True)) == ["sent"]
    # Settled again (a retried settle, or the sweeper from the journal): recorded once only.
    assert delivery.settle_accepted(token, accepted, journaled=False) == 0
    assert EmailAttempt.objects.count() == 3


def test_a_settle_larger_than_one_statement_records_every_job(broker, monkeypatch):
    monkeypatch.setattr(settling, "ROWS_PER_STATEMENT", 2)
    for index in range(5):
        EmailJobFactory(index=index)
    jobs = claiming.claim_jobs(job_id=None, now=timezone.now(), limit=5)
    accepted = [_acceptance(job, index=i) for i, job in enumerate(jobs)]
    assert delivery.settle_accepted(jobs[0].claim_token, accepted, journaled=False) == 5
    assert set(EmailJob.objects.values_list("status", flat=True)) == {Status.SENT}
    assert EmailAttempt.objects.filter(outcome="sent").count() == 5

"""Priority, scheduled sends and expiry: what a worker claims first, later, or never."""

from datetime import timedelta

import pytest
from django.core.mail import EmailMessage
from django.utils import timezone

from notifications import claiming, services
from notifications.exceptions import EmailRejected
from notifications.models import EmailJob
from tests.factories import make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_high_priority_job_is_claimed_before_a_backlog(broker):
    services.enqueue_emails(messages=[make_message(i) for i in range(50)], priority="low")
    urgent = make_message(999, subject="Password reset")
    urgent.priority = "high"
    services.enqueue_email(message=urgent)
    claimed = claiming.claim_jobs(job_id=None, now=timezone.now(), limit=5)
    assert claimed[0].pk == EmailJob.objects.get(subject="Password reset").pk


def test_the_task_s_own_job_goes_first_whatever_else_is_due(broker):
    jobs = services.enqueue_emails(messages=[make_message(i) for i in range(10)])
    claimed = claiming.claim_jobs(job_id=jobs[7].pk, now=timezone.now(), limit=3)
    assert [job.pk for job in claimed] == [jobs[7].pk, jobs[0].pk, jobs[1].pk]


def test_a_scheduled_job_waits_for_its_time(broker):
    later = timezone.now() + timedelta(minutes=10)
    job = services.enqueue_email(message=make_message(), send_at=later)
    assert job.next_attempt_at == later
    assert claiming.claim_jobs(job_id=job.pk, now=timezone.now(), limit=10) == []
    assert broker.client().llen("email") == 0  # 10 minutes is past the countdown horizon
    assert services.recover_jobs(now=later + timedelta(minutes=2))["republished"] == 1
    claimed = claiming.claim_jobs(job_id=job.pk, now=later + timedelta(seconds=1), limit=1)
    assert [j.pk for j in claimed] == [job.pk]


def test_a_near_schedule_is_published_with_its_countdown(broker):
    services.enqueue_email(message=make_message(), send_at=timezone.now() + timedelta(seconds=30))
    assert broker.client().llen("email") == 1


def test_an_expired_job_is_cancelled_not_sent(broker):
    soon = timezone.now() + timedelta(seconds=5)
    job = services.enqueue_email(message=make_message(), expires_at=soon)
    after = soon + timedelta(seconds=1)
    assert claiming.claim_jobs(job_id=job.pk, now=after, limit=1) == []
    assert services.recover_jobs(now=after)["expired"] == 1
    job.refresh_from_db()
    assert job.status == EmailJob.Status.CANCELLED
    assert job.last_error == "expired before it could be sent"


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"priority": "urgent"}, "priority must be one of"),
        ({"send_at": timezone.now().replace(tzinfo=None)}, "aware datetime"),
        ({"expires_at": timezone.now() - timedelta(seconds=1)}, "later than send_at"),
    ],
)
def test_bad_scheduling_is_refused_and_writes_nothing(kwargs, text, broker):
    with pytest.raises(EmailRejected, match=text):
        services.enqueue_email(message=make_message(), **kwargs)
    assert EmailJob.objects.count() == 0


def test_priority_through_send(broker):
    message = EmailMessage("s", "b", "from@example.org", ["to@example.org"])
    message.priority = "low"
    message.send()
    assert EmailJob.objects.get().priority == EmailJob.Priority.LOW

"""Claiming: what one claim marks and gives back, how many it takes, and (PostgreSQL) that rows
another transaction holds are skipped, not waited for."""

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from notifications import claiming, services
from notifications.models import EmailJob
from tests.conftest import _database_url
from tests.factories import make_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_claim_marks_its_jobs_and_returns_what_sending_reads(broker):
    message = make_message(1, subject="Claimed")
    message.extra_headers = {"X-Campaign": "spring"}
    queued = services.enqueue_email(message=message)
    now = timezone.now()
    (claimed,) = claiming.claim_jobs(job_id=queued.pk, now=now, limit=5)
    stored = EmailJob.objects.get(pk=queued.pk)
    assert stored.status == EmailJob.Status.SENDING
    assert stored.attempts == 1
    assert stored.claim_token == claimed.claim_token
    assert stored.lease_expires_at > now
    assert stored.updated_at == now
    for name in claiming.SEND_FIELDS:  # as the database holds them, converted as the ORM does
        assert getattr(claimed, name) == getattr(stored, name), name
    assert claimed.headers == {"X-Campaign": "spring"}
    assert claimed.created_at.tzinfo is not None


def test_a_claim_takes_its_limit_when_the_task_s_own_job_is_gone(broker):
    jobs = services.enqueue_emails(messages=[make_message(i) for i in range(6)])
    EmailJob.objects.filter(pk=jobs[0].pk).update(status=EmailJob.Status.SENT)
    claimed = claiming.claim_jobs(job_id=jobs[0].pk, now=timezone.now(), limit=3)
    assert [job.pk for job in claimed] == [jobs[1].pk, jobs[2].pk, jobs[3].pk]
    assert EmailJob.objects.filter(status=EmailJob.Status.SENDING).count() == 3


def test_a_claim_of_its_own_job_only_leaves_the_others(broker):
    jobs = services.enqueue_emails(messages=[make_message(i) for i in range(3)])
    claimed = claiming.claim_jobs(job_id=jobs[2].pk, now=timezone.now(), limit=1, others=False)
    assert [job.pk for job in claimed] == [jobs[2].pk]
    again = claiming.claim_jobs(job_id=jobs[2].pk, now=timezone.now(), limit=1, others=False)
    assert again == []
    pending = EmailJob.objects.filter(status=EmailJob.Status.PENDING)
    assert sorted(pending.values_list("pk", flat=True)) == [jobs[0].pk, jobs[1].pk]


def test_jobs_not_due_or_past_their_expiry_are_not_claimed(broker):
    now = timezone.now()
    later = services.enqueue_email(message=make_message(1), send_at=now + timedelta(minutes=5))
    expired = services.enqueue_email(message=make_message(2), expires_at=now + timedelta(seconds=1))
    due = services.enqueue_email(message=make_message(3))
    claimed = claiming.claim_jobs(job_id=later.pk, now=now + timedelta(seconds=2), limit=10)
    assert [job.pk for job in claimed] == [due.pk]
    assert EmailJob.objects.get(pk=expired.pk).status == EmailJob.Status.PENDING


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SKIP LOCKED is PostgreSQL's")
def test_rows_another_transaction_holds_are_skipped_not_waited_for(broker):
    jobs = services.enqueue_emails(messages=[make_message(i) for i in range(4)])
    with psycopg.connect(_database_url(), connect_timeout=10) as other:
        # The claim must not wait for this lock: it fails after 5 s instead of hanging.
        other.execute(
            "SELECT id FROM notifications_emailjob WHERE id IN (%s, %s) FOR UPDATE",
            (jobs[0].pk, jobs[1].pk),
        )
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")
            try:
                claimed = claiming.claim_jobs(job_id=jobs[0].pk, now=timezone.now(), limit=3)
            finally:
                cursor.execute("RESET lock_timeout")
        other.rollback()
    assert [job.pk for job in claimed] == [jobs[2].pk, jobs[3].pk]
    held = EmailJob.objects.filter(pk__in=[jobs[0].pk, jobs[1].pk])
    assert set(held.values_list("status", flat=True)) == {EmailJob.Status.PENDING}

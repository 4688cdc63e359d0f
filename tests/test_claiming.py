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


def test_claims_follow_the_queue_order_across_priorities(broker):
    """High before normal before low; within one, the longest waiting first, then by id."""
    now = timezone.now()
    queued = {}
    for name, priority, minutes_ago in [
        ("low old", "low", 30),
        ("normal new", "normal", 1),
        ("high new", "high", 1),
        ("normal old", "normal", 20),
        ("high old", "high", 10),
        ("normal new too", "normal", 1),
        ("high later", "high", -5),  # scheduled: not due yet
    ]:
        job = services.enqueue_email(
            message=make_message(len(queued), subject=name),
            priority=priority,
            send_at=now - timedelta(minutes=minutes_ago),
        )
        queued[name] = job
    same_time = now - timedelta(minutes=1)
    EmailJob.objects.filter(subject__endswith="new too").update(next_attempt_at=same_time)
    EmailJob.objects.filter(subject="normal new").update(next_attempt_at=same_time)

    first = claiming.claim_jobs(job_id=queued["low old"].pk, now=now, limit=4)
    rest = claiming.claim_jobs(job_id=None, now=now, limit=10)
    assert [job.subject for job in first] == ["low old", "high old", "high new", "normal old"]
    assert [job.subject for job in rest] == ["normal new", "normal new too"]
    assert EmailJob.objects.get(pk=queued["high later"].pk).status == EmailJob.Status.PENDING


def _scans_of_the_job_table(plan: dict) -> list[dict]:
    """The plan nodes of a PostgreSQL EXPLAIN that read rows of the job table."""
    found = [plan] if plan.get("Relation Name") == EmailJob._meta.db_table else []
    for child in plan.get("Plans", []):
        found += _scans_of_the_job_table(child)
    return found


def test_a_claim_reads_its_limit_from_the_queue_index_not_the_whole_backlog(broker):
    """A bulk call's jobs share one due time: a claim must not sort all of them (on PostgreSQL
    nor SQLite) nor read the jobs scheduled for later, a priority at a time."""
    services.enqueue_emails(messages=[make_message(i) for i in range(3000)])
    later = timezone.now() + timedelta(hours=1)
    services.enqueue_emails(messages=[make_message(i) for i in range(1000)], send_at=later)
    now = timezone.now()
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            due = claiming._due(now)
            branches = [[*due, p, 20] for p in claiming.PRIORITIES]
            cursor.execute(
                "EXPLAIN QUERY PLAN " + claiming._pick_sql(),
                [None, *due, *[v for branch in branches for v in branch], 21],
            )
            plan = [row[3] for row in cursor.fetchall()]
        ranges = [step for step in plan if "emailjob_pending_order" in step]
        assert len(ranges) == 3, plan
        assert all("(status=? AND priority=? AND next_attempt_at<?)" in step for step in ranges)
        assert not any("emailjob_pending_due" in step for step in plan), plan
        assert len(claiming.claim_jobs(job_id=None, now=now, limit=20)) == 20
        return
    due = claiming._due(now)
    branches = [[None, *due, p, 20] for p in claiming.PRIORITIES]
    with connection.cursor() as cursor:
        # With statistics of this table (autovacuum's, in production): left with those of an
        # earlier test's few rows, the planner may take a bitmap scan and sort, as it would
        # until autovacuum analyzes the table again.
        cursor.execute(f"ANALYZE {EmailJob._meta.db_table}")
        cursor.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + claiming._pick_and_claim_sql(),
            [
                None,
                *due,
                *[v for branch in branches for v in branch],
                "sending",
                now + timedelta(minutes=5),
                "token",
                now,
                20,
            ],
        )
        (plan,) = cursor.fetchone()[0]
    scans = _scans_of_the_job_table(plan["Plan"])
    assert scans, plan
    # Each scan reads at most the limit (and one more row, where LIMIT stops), not 3,000.
    assert max(scan["Actual Rows"] for scan in scans) <= 21, scans
    assert EmailJob.objects.filter(status=EmailJob.Status.SENDING).count() == 20


def test_the_queue_head_is_the_first_due_job_and_is_not_claimed(broker):
    """What a task out of time publishes for the next: the job a claim would take first."""
    now = timezone.now()
    assert claiming.queue_head(now) is None
    normal = services.enqueue_email(message=make_message(1), send_at=now - timedelta(minutes=9))
    high = services.enqueue_email(message=make_message(2), priority="high", send_at=now)
    expired = make_message(3)  # high and waiting longest, but past its expiry
    services.enqueue_email(
        message=expired, priority="high", send_at=now - timedelta(minutes=5), expires_at=now
    )
    assert claiming.queue_head(now + timedelta(seconds=1)) == high.pk
    EmailJob.objects.filter(pk=high.pk).update(status=EmailJob.Status.SENT)
    assert claiming.queue_head(now + timedelta(seconds=1)) == normal.pk
    assert set(EmailJob.objects.values_list("status", flat=True)) == {
        EmailJob.Status.PENDING,
        EmailJob.Status.SENT,
    }

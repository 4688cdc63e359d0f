"""`manage.py email_queue`: stats, failed, retry, cancel and purge, as an operator sees them."""

import json
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from notifications import delivery, services
from notifications.models import EmailAttempt, EmailJob
from tests.factories import EmailJobFactory
from tests.support.processes import ROOT

pytestmark = pytest.mark.django_db
Status = EmailJob.Status


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def run(*args: str, stderr=None) -> str:
    out = StringIO()
    call_command("email_queue", *args, stdout=out, stderr=stderr or StringIO())
    return out.getvalue()


def run_stats(*args: str) -> str:
    return run("stats", *args)


def make_jobs():
    for i, status in enumerate(["pending", "pending", "sent", "sent", "sent", "failed"]):
        EmailJobFactory(index=i, status=status)
    EmailJob.objects.filter(status="pending").update(
        created_at=timezone.now() - timedelta(minutes=10)
    )


def attempt(job: EmailJob, outcome: str, *, ago: timedelta = timedelta(minutes=1), **fields):
    return EmailAttempt.objects.create(
        job=job, number=1, started_at=timezone.now() - ago, outcome=outcome, **fields
    )


def failed_job(index: int = 0, *, created_ago: timedelta = timedelta(0), **fields) -> EmailJob:
    fields = {"attempts": 5, "last_smtp_code": 550, "last_error": "550 5.1.1 no such user"} | fields
    job = EmailJobFactory(index=index, status=Status.FAILED, **fields)
    EmailJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - created_ago)
    return job


def aged(status: str, days: float, index: int = 0) -> EmailJob:
    job = EmailJobFactory(index=index, status=status)
    EmailJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=days))
    attempt(
        job, EmailAttempt.Outcome.SENT if status == Status.SENT else EmailAttempt.Outcome.FAILED
    )
    return job


# stats ---------------------------------------------------------------------------------------


def test_stats_json_has_every_status_and_the_oldest_pending_age():
    make_jobs()
    stats = json.loads(run_stats("--json"))
    assert {k: stats[k] for k in ("pending", "sending", "sent", "failed", "cancelled")} == {
        "pending": 2,
        "sending": 0,
        "sent": 3,
        "failed": 1,
        "cancelled": 0,
    }
    assert 600 <= stats["oldest_pending_age_seconds"] < 660


def test_stats_text_lists_each_status():
    make_jobs()
    text = run_stats()
    assert "pending    2" in text and "sent       3" in text and "cancelled  0" in text
    assert "oldest pending: 6" in text  # 600-odd seconds ago


def test_stats_of_an_empty_queue():
    stats = json.loads(run_stats("--json"))
    assert stats["pending"] == 0 and stats["oldest_pending_age_seconds"] is None
    assert "oldest pending: none" in run_stats()


def test_stats_show_the_last_hours_attempts_failure_rate_and_throughput():
    job = EmailJobFactory()
    for outcome in ["sent"] * 6 + ["retry", "retry", "failed", "deferred"]:
        attempt(job, outcome)
    attempt(job, "failed", ago=timedelta(hours=2))  # outside the window
    stats = json.loads(run_stats("--json"))
    assert (stats["sent_last_window"], stats["failed_last_window"]) == (6, 1)
    assert stats["attempts_last_window"] == 10
    assert stats["failure_rate_last_window"] == 0.4
    assert stats["throughput_per_second"] == round(6 / 3600, 3)
    text = run_stats()
    assert "last 60 min: 6 sent, 1 failed, 10 attempts, failure rate 40.0%" in text
    assert "throughput: 0.002 sent/s" in text


# failed --------------------------------------------------------------------------------------


def test_failed_lists_the_newest_failed_jobs_with_code_and_error():
    old = failed_job(1, created_ago=timedelta(hours=2), last_error="554 5.7.1 spam")
    new = failed_job(2, created_ago=timedelta(minutes=5), last_smtp_code=None, last_error="x")
    EmailJobFactory(index=3, status=Status.SENT)
    text = run("failed")
    assert text.index(f"#{new.pk} ") < text.index(f"#{old.pk} ")
    assert f"#{old.pk}  5 attempt(s)  code 550  user1@example.org  'Message 1'" in text
    assert "    554 5.7.1 spam" in text
    assert f"#{new.pk}  5 attempt(s)  code -" in text
    assert text.count("#") == 2


def test_failed_json_and_limit():
    jobs = [failed_job(i, created_ago=timedelta(minutes=10 - i)) for i in range(3)]
    rows = json.loads(run("failed", "--limit", "2", "--json"))
    assert [row["id"] for row in rows] == [jobs[2].pk, jobs[1].pk]
    assert rows[0] | {"created_at": None, "updated_at": None} == {
        "id": jobs[2].pk,
        "recipient": "user2@example.org",
        "subject": "Message 2",
        "attempts": 5,
        "last_smtp_code": 550,
        "last_error": "550 5.1.1 no such user",
        "created_at": None,
        "updated_at": None,
    }


def test_failed_with_none():
    assert run("failed") == "No failed jobs.\n"
    assert json.loads(run("failed", "--json")) == []


# retry ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_by_id_sends_a_really_failed_job_again(smtp, broker):
    smtp.data_replies.append("554 5.7.1 rejected for now")
    job = EmailJobFactory()
    assert delivery.deliver_job(job_id=job.pk) == "failed"

    assert run("retry", "--id", str(job.pk)) == "Retried 1 job(s).\n"
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.PENDING, 0)
    (message,) = broker.client().lrange("email", 0, -1)
    assert json.loads(message)["headers"]["argsrepr"] == f"({job.pk},)"
    assert delivery.deliver_job(job_id=job.pk) == "sent"
    assert smtp.by_message_id() == {job.message_id: 1}


@pytest.mark.django_db(transaction=True)
def test_retry_by_id_reports_jobs_that_are_not_failed_and_exits_1(broker):
    failed, pending = failed_job(1), EmailJobFactory(index=2)
    out = StringIO()
    with pytest.raises(CommandError) as error:
        call_command(
            "email_queue", "retry", "--id", str(failed.pk), str(pending.pk), "999999", stdout=out
        )
    assert error.value.returncode == 1
    assert str(error.value) == (
        f"Did not retry 2 job(s), only failed ones: #{pending.pk} is pending, "
        "#999999 does not exist"
    )
    assert out.getvalue() == "Retried 1 job(s).\n"
    assert EmailJob.objects.get(pk=failed.pk).status == Status.PENDING
    assert broker.client().llen("email") == 1


@pytest.mark.django_db(transaction=True)
def test_retry_max_takes_the_oldest_failed_jobs_in_batches(broker):
    jobs = [failed_job(i, created_ago=timedelta(minutes=10 - i)) for i in range(5)]
    terminal = Terminal()
    result = json.loads(run("retry", "--max", "3", "--batch-size", "2", "--json", stderr=terminal))
    assert result == {"retried": 3}
    statuses = dict(EmailJob.objects.values_list("pk", "status"))
    assert [statuses[job.pk] for job in jobs] == ["pending"] * 3 + ["failed"] * 2
    assert EmailJob.objects.filter(status=Status.PENDING, attempts=0).count() == 3
    assert broker.client().llen("email") == 3
    assert terminal.getvalue() == "\rretry: 2/3 (67%)\rretry: 3/3 (100%)\n"


@pytest.mark.django_db(transaction=True)
def test_retry_json_by_id_lists_what_was_skipped(broker):
    sent = EmailJobFactory(status=Status.SENT)
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("email_queue", "retry", "--json", "--id", str(sent.pk), stdout=out)
    assert json.loads(out.getvalue()) == {
        "retried": 0,
        "skipped": [{"id": sent.pk, "status": "sent"}],
    }
    assert broker.client().llen("email") == 0


def test_retry_needs_max_or_ids():
    with pytest.raises(CommandError, match="one of the arguments --max --id is required"):
        run("retry")
    with pytest.raises(CommandError, match="must be at least 1"):
        run("retry", "--max", "0")


# cancel --------------------------------------------------------------------------------------


def test_cancel_stops_pending_jobs():
    jobs = [EmailJobFactory(index=i) for i in range(2)]
    assert run("cancel", "--id", *(str(job.pk) for job in jobs)) == "Cancelled 2 job(s).\n"
    assert set(EmailJob.objects.values_list("status", flat=True)) == {Status.CANCELLED}


def test_cancel_leaves_jobs_being_sent_and_says_so():
    sending = EmailJobFactory(status=Status.SENDING)
    pending = EmailJobFactory(index=1)
    out = StringIO()
    with pytest.raises(CommandError, match=f"only pending ones: #{sending.pk} is sending"):
        call_command(
            "email_queue", "cancel", "--json", "--id", str(pending.pk), str(sending.pk), stdout=out
        )
    assert json.loads(out.getvalue()) == {
        "cancelled": 1,
        "skipped": [{"id": sending.pk, "status": "sending"}],
    }
    assert EmailJob.objects.get(pk=sending.pk).status == Status.SENDING


# purge ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # each batch really commits, foreign keys checked
def test_purge_deletes_only_old_jobs_of_the_status_and_their_attempts():
    old_sent = [aged(Status.SENT, 40, i) for i in range(5)]
    kept = [
        aged(Status.SENT, 20, 10),
        aged(Status.FAILED, 40, 11),
        aged(Status.CANCELLED, 40, 12),
        aged(Status.PENDING, 40, 13),
    ]
    text = run("purge", "--status", "sent", "--older-than", "30", "--batch-size", "2")
    assert text == "Deleted 5 sent job(s) created more than 30 day(s) ago and their 5 attempt(s).\n"
    assert set(EmailJob.objects.values_list("pk", flat=True)) == {job.pk for job in kept}
    assert set(EmailAttempt.objects.values_list("job_id", flat=True)) == {job.pk for job in kept}
    assert not EmailAttempt.objects.filter(job_id__in=[job.pk for job in old_sent]).exists()


@pytest.mark.django_db(transaction=True)
def test_purge_rests_after_each_batch_as_long_as_the_batch_took(monkeypatch):
    # On SQLite a batch holds the one write lock; the rest lets a waiting sender in.
    for i in range(5):
        aged(Status.SENT, 40, i)
    clock = iter([0.0, 0.1, 1.0, 1.3, 2.0, 2.05, 3.0])  # start and end of 3 batches, then none
    rests = []
    monkeypatch.setattr(services, "monotonic", lambda: next(clock))
    monkeypatch.setattr(services, "sleep", rests.append)
    deleted = services.purge_jobs(status=Status.SENT, created_before=timezone.now(), batch_size=2)
    assert deleted == {"jobs": 5, "attempts": 5}
    assert rests == pytest.approx([0.1, 0.3, 0.05])


def test_purge_dry_run_counts_and_deletes_nothing():
    for i in range(3):
        aged(Status.FAILED, 10, i)
    aged(Status.FAILED, 1, 9)
    text = run("purge", "--status", "failed", "--older-than", "7", "--dry-run")
    assert text == "Would delete 3 failed job(s) created more than 7 day(s) ago.\n"
    report = json.loads(
        run("purge", "--status", "failed", "--older-than", "7", "--dry-run", "--json")
    )
    assert (report["dry_run"], report["jobs"], report["status"]) == (True, 3, "failed")
    assert EmailJob.objects.count() == EmailAttempt.objects.count() == 4


def test_purge_json_and_progress_on_a_terminal():
    for i in range(3):
        aged(Status.CANCELLED, 3, i)
    terminal = Terminal()
    report = json.loads(
        run(
            "purge",
            "--status",
            "cancelled",
            "--older-than",
            "0",
            "--batch-size",
            "2",
            "--json",
            stderr=terminal,
        )
    )
    assert (report["dry_run"], report["jobs"], report["attempts"]) == (False, 3, 3)
    assert terminal.getvalue() == "\rpurge: 2/3 (67%)\rpurge: 3/3 (100%)\n"
    assert not EmailJob.objects.exists()


def test_purge_is_quiet_on_stderr_when_it_is_not_a_terminal():
    aged(Status.SENT, 3)
    stderr = StringIO()
    run("purge", "--status", "sent", "--older-than", "1", stderr=stderr)
    assert stderr.getvalue() == ""


@pytest.mark.parametrize("status", ["pending", "sending"])
def test_purge_refuses_unfinished_jobs(status):
    with pytest.raises(CommandError, match="invalid choice"):
        run("purge", "--status", status, "--older-than", "30")


# the real command line -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_exit_codes_on_the_command_line(worker_env):
    job = failed_job()

    def manage(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "manage.py", "email_queue", *args]
        return subprocess.run(
            command, cwd=ROOT, env=worker_env, capture_output=True, text=True, timeout=60
        )

    ok = manage("purge", "--status", "failed", "--older-than", "0", "--dry-run")
    assert (ok.returncode, ok.stdout) == (
        0,
        "Would delete 1 failed job(s) created more than 0 day(s) ago.\n",
    )
    not_pending = manage("cancel", "--id", str(job.pk))
    assert not_pending.returncode == 1
    assert f"CommandError: Did not cancel 1 job(s), only pending ones: #{job.pk} is failed" in (
        not_pending.stderr
    )
    assert manage("purge", "--status", "pending", "--older-than", "1").returncode == 2


@pytest.mark.skipif(connection.vendor == "postgresql", reason="SQLite's answer")
def test_search_index_on_sqlite_says_there_is_none():
    with pytest.raises(CommandError, match=r"PostgreSQL's .*reads every job"):
        run("search-index", "--on")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the search index is PostgreSQL's")
@pytest.mark.django_db(transaction=True)  # CREATE INDEX CONCURRENTLY needs no transaction
def test_search_index_is_built_shown_and_dropped():
    names = ("emailjob_recipient_trgm", "emailjob_subject_trgm")
    try:
        assert json.loads(run("search-index", "--json")) == dict.fromkeys(names, "absent")
        shown = run("search-index", "--on")
        assert shown.split() == [names[0], "ready", names[1], "ready"]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
                [list(names)],
            )
            built = dict(cursor.fetchall())
        assert "gin (upper((recipient)::text) gin_trgm_ops)" in built[names[0]]
        assert "gin (upper(subject) gin_trgm_ops)" in built[names[1]]
        assert json.loads(run("search-index", "--on", "--json")) == dict.fromkeys(names, "ready")
        assert json.loads(run("search-index", "--off", "--json")) == dict.fromkeys(names, "absent")
    finally:
        run("search-index", "--off")

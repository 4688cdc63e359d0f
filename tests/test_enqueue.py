"""Enqueueing: the row is written in the caller's transaction, the job id published on commit."""

import json
import logging
import subprocess
import sys
import threading

import pytest
from django.core.mail import EmailMultiAlternatives, send_mail, send_mass_mail
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from notifications import publishing, services, wakeups
from notifications.composition import wire_message
from notifications.models import EmailJob
from tests.factories import make_message

pytestmark = pytest.mark.django_db(transaction=True)


def queued_messages(broker) -> list[bytes]:
    """The broker's messages once this process's wake-ups are decided (wakeups.py)."""
    assert wakeups.flush()
    return broker.client().lrange("email", 0, -1)


def queued_job_ids(broker) -> list[str]:
    return [json.loads(m)["headers"]["argsrepr"] for m in queued_messages(broker)]


def test_send_mail_writes_a_pending_job_and_publishes_only_its_id(broker):
    assert send_mail("Hello", "Body", "from@example.org", ["to@example.org"]) == 1
    job = EmailJob.objects.get()
    assert job.status == EmailJob.Status.PENDING
    assert job.message_id.startswith("<") and job.message_id.endswith("@vertex-email.local>")
    raw = queued_messages(broker)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "notifications.tasks.send_email"
    assert message["headers"]["argsrepr"] == f"({job.pk},)"
    assert b"Body" not in raw[0] and b"to@example.org" not in raw[0]


def test_publish_waits_for_commit_and_a_rollback_leaves_nothing(broker):
    with transaction.atomic():
        send_mail("Hello", "Body", "from@example.org", ["to@example.org"])
        assert len(queued_messages(broker)) == 0
    assert len(queued_messages(broker)) == 1

    with pytest.raises(RuntimeError), transaction.atomic():
        send_mail("Rolled back", "Body", "from@example.org", ["to@example.org"])
        raise RuntimeError("the caller's transaction fails")
    assert EmailJob.objects.count() == 1
    assert len(queued_messages(broker)) == 1


def test_send_mass_mail_creates_one_job_per_message_and_a_message_per_batch(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BATCH_SIZE": 20}
    batch = [("s", "b", "from@example.org", [f"user{i}@example.org"]) for i in range(50)]
    assert send_mass_mail(batch) == 50
    assert EmailJob.objects.count() == 50
    first, eleventh, last = EmailJob.objects.order_by("pk").values_list("pk", flat=True)[::20]
    # Each message's task claims its job and the due jobs after it, a batch at a time.
    assert sorted(queued_job_ids(broker)) == sorted([f"({first},)", f"({eleventh},)", f"({last},)"])


def test_a_large_bulk_publishes_a_message_per_batch_up_to_the_queue_depth(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BATCH_SIZE": 5, "WAKE_QUEUE_DEPTH": 3}
    send_mail("s", "b", "from@example.org", ["early@example.org"])
    assert len(queued_messages(broker)) == 1
    batch = [("s", "b", "from@example.org", [f"user{i}@example.org"]) for i in range(40)]
    assert send_mass_mail(batch) == 40
    early, *new = EmailJob.objects.order_by("pk").values_list("pk", flat=True)
    assert len(new) == 40
    # One message waited: two more make three, for the first two batches of the eight.
    assert sorted(queued_job_ids(broker)) == sorted(f"({pk},)" for pk in (early, new[0], new[5]))


def test_no_wake_up_message_while_enough_wait_on_the_queue(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "WAKE_QUEUE_DEPTH": 3}
    for i in range(5):
        send_mail("s", "b", "from@example.org", [f"user{i}@example.org"])
        assert wakeups.flush()  # each call decided alone, not several in one go
    assert EmailJob.objects.count() == 5
    assert len(queued_messages(broker)) == 3  # the fourth and fifth ride on those three


def test_no_wake_up_message_while_a_worker_is_draining(broker):
    publishing.mark_draining(True)  # what a worker's send task does while it drains
    send_mail("s", "b", "from@example.org", ["first@example.org"])
    assert len(queued_messages(broker)) == 0  # that task's next claim takes the job
    publishing.mark_draining(False)  # the worker stops (after one last look for due jobs)
    send_mail("s", "b", "from@example.org", ["second@example.org"])
    assert len(queued_messages(broker)) == 1


def test_wake_ups_are_decided_the_same_when_the_shared_redis_is_not_the_broker(broker, settings):
    """Then the draining mark and the queue depth are asked of two servers, not in one go."""
    settings.EMAIL_REDIS_URL = broker.url.rsplit("/", 1)[0] + "/1"  # the same server, database 1
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "WAKE_QUEUE_DEPTH": 2}
    publishing.mark_draining(True)
    send_mail("s", "b", "from@example.org", ["draining@example.org"])
    assert len(queued_messages(broker)) == 0
    publishing.mark_draining(False)
    for i in range(3):
        send_mail("s", "b", "from@example.org", [f"user{i}@example.org"])
        assert wakeups.flush()  # each call decided alone, not several in one go
    assert len(queued_messages(broker)) == 2  # the third rides on those two


def test_the_caller_decides_the_wake_up_itself_when_told_to(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "WAKE_IN_BACKGROUND": False}
    send_mail("s", "b", "from@example.org", ["to@example.org"])
    assert broker.client().llen("email") == 1  # published before send_mail returned


def test_wake_ups_that_piled_up_are_decided_in_one_go(broker, settings, monkeypatch):
    """The thread takes every id handed over since its last look: one message per batch."""
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BATCH_SIZE": 10}
    decided, busy, go_on = [], threading.Event(), threading.Event()
    real_wake_workers = publishing.wake_workers

    def slow_wake_workers(job_ids):
        decided.append(list(job_ids))
        busy.set()
        go_on.wait(5)  # a slow round trip to Redis
        return real_wake_workers(job_ids)

    monkeypatch.setattr(publishing, "wake_workers", slow_wake_workers)
    first = services.enqueue_email(message=make_message(0))
    assert busy.wait(5)
    later = [services.enqueue_email(message=make_message(i)).pk for i in (1, 2, 3)]
    go_on.set()
    assert wakeups.flush()
    assert decided == [[first.pk], later]
    assert sorted(queued_job_ids(broker)) == sorted([f"({first.pk},)", f"({later[0]},)"])


def test_a_process_that_exits_right_after_send_mail_still_publishes(broker, worker_env):
    """The exit waits (up to 5 s) for the wake-up thread: the job is not left to the sweeper."""
    script = (
        "import time, django; django.setup()\n"
        "from django.core.mail import send_mail\n"
        "from notifications import publishing\n"
        "real = publishing.wake_workers\n"
        "publishing.wake_workers = lambda ids: time.sleep(0.5) or real(ids)  # a slow Redis\n"
        "send_mail('s', 'b', 'from@example.org', ['exit@example.org'])\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={**worker_env, "DJANGO_SETTINGS_MODULE": "vertex_email.settings"},
        check=True,
        timeout=60,
    )
    job = EmailJob.objects.get(recipient="exit@example.org")
    assert queued_job_ids(broker) == [f"({job.pk},)"]


def test_send_mail_outside_a_transaction_is_one_insert(broker):
    """No BEGIN and COMMIT of its own; SQLite's INSERT still takes the writer lock
    (test_sqlite_backend.py)."""
    with CaptureQueriesContext(connection) as queries:
        send_mail("s", "b", "from@example.org", ["one@example.org"])
    assert [query["sql"].split()[0] for query in queries] == ["INSERT"]
    job = EmailJob.objects.get(recipient="one@example.org")
    assert queued_job_ids(broker) == [f"({job.pk},)"]  # committed, then published


def test_an_execute_wrapper_sees_the_inserts(broker):
    """Unwatched, the INSERTs skip Django's cursor wrappers on SQLite (inserts._insert_batch);
    an execute wrapper (an APM agent, a test) still sees them."""
    seen = []

    def watch(execute, sql, params, many, context):
        seen.append(sql.split()[0])
        return execute(sql, params, many, context)

    def enqueue(label: str) -> None:
        send_mail("s", "b", "from@example.org", [f"{label}@example.org"])
        services.enqueue_emails(messages=[make_message(i, subject=label) for i in range(3)])

    with connection.execute_wrapper(watch):
        enqueue("watched")
    enqueue("unwatched")
    assert seen.count("INSERT") == 2  # and the bulk call's BEGIN
    assert EmailJob.objects.filter(recipient="watched@example.org").count() == 1
    assert EmailJob.objects.filter(recipient="unwatched@example.org").count() == 1
    assert EmailJob.objects.filter(subject="watched").count() == 3
    assert EmailJob.objects.filter(subject="unwatched").count() == 3


def test_bulk_service_returns_saved_jobs(broker):
    jobs = services.enqueue_emails(messages=[make_message(i) for i in range(10)])
    assert all(job.pk for job in jobs)
    assert len({job.message_id for job in jobs}) == 10


def test_a_message_id_given_by_the_caller_is_kept(broker):
    message = make_message(headers={"Message-ID": "<fixed-id@example.org>"})
    job = services.enqueue_email(message=message)
    assert job.message_id == "<fixed-id@example.org>"
    assert b"Message-ID: <fixed-id@example.org>" in wire_message(job)


def test_the_same_message_object_sent_twice_makes_two_distinct_jobs(broker):
    message = EmailMultiAlternatives("s", "b", "from@example.org", ["to@example.org"])
    message.send()
    message.send()
    assert EmailJob.objects.values("message_id").distinct().count() == 2


def test_redis_down_at_enqueue_keeps_the_job_pending_for_the_sweeper(broker, caplog):
    broker.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="notifications.publishing"):
            assert send_mail("s", "b", "from@example.org", ["to@example.org"]) == 1
            assert wakeups.flush()  # the publish is tried, and fails, after send_mail returned
    finally:
        broker.start()
    job = EmailJob.objects.get()
    assert job.status == EmailJob.Status.PENDING
    assert "the sweeper will republish" in caplog.text

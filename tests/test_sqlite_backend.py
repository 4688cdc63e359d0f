"""The SQLite backend queues writers on a file lock held from BEGIN to COMMIT or ROLLBACK."""

import contextlib
import fcntl
import os
import sqlite3
import threading

import pytest
from django.db import connection, connections, transaction

from notifications import delivery, services
from notifications.models import EmailJob
from tests.factories import make_message

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="the lock is SQLite's backend's"),
]


def lock_is_free() -> bool:
    fd = os.open(f"{connection.settings_dict['NAME']}.writer-lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_transaction_holds_the_writer_lock_until_commit_or_rollback():
    assert lock_is_free()
    with transaction.atomic():
        services.enqueue_email(message=make_message(1))
        assert not lock_is_free()
    assert lock_is_free()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.enqueue_email(message=make_message(2))
        raise RuntimeError("rolled back")
    assert lock_is_free()
    assert EmailJob.objects.count() == 1


def test_a_second_writer_waits_for_the_first_and_then_goes_on():
    order = []

    def second_writer():
        with transaction.atomic():
            order.append("second began")
            services.enqueue_email(message=make_message(2))
        connections.close_all()

    with transaction.atomic():
        services.enqueue_email(message=make_message(1))
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and order == []  # queued behind us, not failed
        order.append("first committing")
    thread.join(10)
    assert order == ["first committing", "second began"]
    assert EmailJob.objects.count() == 2


def test_send_mail_outside_a_transaction_waits_its_turn_and_lets_go():
    """A lone send_mail() INSERTs in autocommit, no BEGIN of its own, but still in the queue:
    while another process holds the writer lock (here only the lock, not SQLite's), it waits."""
    order = []

    def lone_send():
        services.enqueue_email(message=make_message(2))
        order.append("lone insert done")
        connections.close_all()

    fd = os.open(f"{connection.settings_dict['NAME']}.writer-lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        thread = threading.Thread(target=lone_send)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and order == []  # queued behind the holder
        order.append("holder lets go")
    finally:
        os.close(fd)
    thread.join(10)
    assert order == ["holder lets go", "lone insert done"]
    assert lock_is_free()
    assert EmailJob.objects.count() == 1


def test_a_lone_insert_that_fails_lets_the_lock_go():
    services.enqueue_email(message=make_message(1, headers={"Message-ID": "<same@example.org>"}))
    with pytest.raises(services.EmailRejected, match="already queued"):
        services.enqueue_email(
            message=make_message(2, headers={"Message-ID": "<same@example.org>"})
        )
    assert lock_is_free()
    assert EmailJob.objects.count() == 1


def _sent_in_the_database_file() -> int:
    """Sent jobs as the database file itself holds them, without the WAL (immutable: the WAL is
    not read)."""
    path = connection.settings_dict["NAME"]
    sent = f"SELECT count(*) FROM {EmailJob._meta.db_table} WHERE status = 'sent'"  # noqa: S608
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as file_only:
        return file_only.execute(sent).fetchone()[0]


@pytest.fixture
def fresh_checkpoints(monkeypatch):
    """This process has checkpointed no batch yet, and the database file itself holds the
    tables: the tests read the file without its WAL, and in a test run alone the schema was
    still only in the WAL."""
    monkeypatch.setattr(delivery, "wal_checkpoints", delivery._WalCheckpoints())
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_a_worker_folds_the_wal_into_the_database_file_after_a_batch(
    smtp, broker, fresh_checkpoints
):
    """Producers' commits leave checkpoints to the workers: after a batch the sent rows are in
    the database file, not only in the WAL."""
    jobs = [services.enqueue_email(message=make_message(i)) for i in range(3)]
    assert _sent_in_the_database_file() == 0
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 3
    assert _sent_in_the_database_file() == 3


def test_a_busy_worker_checkpoints_at_most_once_an_interval(
    smtp, broker, settings, monkeypatch, fresh_checkpoints
):
    """Batch after batch, the checkpoint (two fsyncs) is not paid each time: the first batch
    folds the WAL, the next ones leave their pages in it until the interval has passed."""
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BATCH_SIZE": 1}
    monkeypatch.setattr(delivery, "CHECKPOINT_INTERVAL", 3600)
    jobs = [services.enqueue_email(message=make_message(i)) for i in range(3)]
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 3
    assert smtp.count() == 3
    assert EmailJob.objects.filter(status=EmailJob.Status.SENT).count() == 3
    assert _sent_in_the_database_file() == 1  # the first batch's; the others wait in the WAL
    monkeypatch.setattr(delivery, "CHECKPOINT_INTERVAL", 0)
    services.enqueue_email(message=make_message(3))
    assert delivery.deliver_due_jobs(job_id=None) == 1
    assert _sent_in_the_database_file() == 4  # once the interval is over, everything is folded


def test_queries_are_still_counted_for_prometheus():
    """The counting cursor's class is built once per connection; it must still count."""
    from django_prometheus.db import execute_total

    counted = execute_total.labels(connection.alias, connection.vendor)
    before = counted._value.get()
    for _ in range(3):
        EmailJob.objects.count()
    assert counted._value.get() == before + 3

"""Crashes and broker loss: every message still arrives, and (almost) never twice."""

import pytest
from django.core.mail import send_mass_mail

from notifications.models import EmailJob
from tests.support.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
Status = EmailJob.Status


def enqueue(count: int) -> set[str]:
    batch = [
        (f"Batch {i}", "Body", "from@example.org", [f"b{i}@example.org"]) for i in range(count)
    ]
    send_mass_mail(batch)
    return set(EmailJob.objects.values_list("message_id", flat=True))


def wait_all_sent(count: int, timeout: float) -> None:
    wait_until(
        lambda: EmailJob.objects.filter(status=Status.SENT).count() == count,
        timeout,
        0.2,
        f"all {count} jobs to be sent",
    )


def test_worker_sigkilled_mid_batch_loses_nothing(start_worker, smtp):
    concurrency, total = 2, 300
    # The sink stores a message, then waits before its 250: a kill in that gap is the one case
    # (RFC 1047) where a resend cannot be avoided.
    smtp.accept_delay = 0.02
    worker = start_worker(concurrency=concurrency)
    message_ids = enqueue(total)
    wait_until(lambda: smtp.count() >= 80, 60, message="the batch to be under way")
    worker.kill()
    in_flight = EmailJob.objects.filter(status=Status.SENDING).count()
    start_worker(concurrency=concurrency)
    wait_all_sent(total, timeout=120)

    received = smtp.by_message_id()
    duplicates = sum(n - 1 for n in received.values())
    print(
        f"\nSIGKILL mid-batch: {total} jobs, {in_flight} claimed (in flight) at the kill, "
        f"{duplicates} duplicate(s) at the SMTP server"
    )
    assert set(received) == message_ids  # nothing lost
    # Batches put many jobs in flight, but each process has one message on the wire at a time.
    assert duplicates <= concurrency
    assert EmailJob.objects.exclude(status=Status.SENT).count() == 0


def test_redis_restarted_and_wiped_mid_batch_loses_nothing(start_worker, smtp, broker):
    total = 300
    smtp.accept_delay = 0.02
    start_worker(concurrency=2)
    message_ids = enqueue(total)
    wait_until(lambda: smtp.count() >= 60, 60, message="the batch to be under way")
    broker.restart()  # no persistence: every queued message is gone
    wait_all_sent(total, timeout=120)

    received = smtp.by_message_id()
    assert set(received) == message_ids
    assert sum(received.values()) == total  # no duplicates either

"""Scenario 1: the worker is SIGKILLed three times during a batch and restarted each time."""

import time

import pytest

from notifications.models import EmailJob
from tests.faults.conftest import scaled
from tests.faults.helpers import enqueue, statuses, tally, wait_drained
from tests.support.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]
CONCURRENCY = 2


def test_worker_sigkilled_three_times_loses_nothing(fault_worker, faulty, reliability):
    total = scaled(1000, 5000)
    worker = fault_worker(concurrency=CONCURRENCY)
    expected = enqueue(total)
    started, in_flight = time.monotonic(), []
    for share in (0.15, 0.4, 0.65):
        wait_until(lambda s=share: faulty.count() >= total * s, 120, 0.05, f"{share:.0%} sent")
        worker.kill()
        in_flight.append(EmailJob.objects.filter(status=EmailJob.Status.SENDING).count())
        worker = fault_worker(concurrency=CONCURRENCY)
    wait_drained(total, timeout=scaled(180, 600), status=EmailJob.Status.SENT)
    drain = round(time.monotonic() - started, 1)

    counted = tally(faulty, expected)
    print(
        f"\nSIGKILL x3 during {total}: claimed ('sending') at each kill {in_flight}, "
        f"{counted.duplicated} duplicate(s) at the SMTP server"
    )
    reliability.record(
        "1. worker SIGKILLed 3x mid-batch, restarted",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=f"jobs claimed at the kills: {in_flight}; bound: one on the wire per process",
    )
    assert counted.lost == 0 and not counted.strangers
    # What can repeat is only a message the server had taken when its process died: at most one
    # per worker process per kill, and never more than the jobs claimed at the kill.
    assert counted.duplicated <= min(sum(in_flight), 3 * CONCURRENCY), counted.copies.most_common(8)
    assert statuses() == {"sent": total}

"""Scenario 2: Redis restarted (once keeping its data, once wiped) in the middle of a batch."""

import time

import pytest

from notifications.models import EmailJob
from tests.faults.conftest import scaled
from tests.faults.helpers import enqueue, statuses, tally, wait_drained
from tests.support.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]


def test_redis_restarted_and_wiped_mid_batch_loses_nothing_and_sends_nothing_twice(
    fault_worker, faulty, broker, reliability
):
    total = scaled(1000, 5000)
    fault_worker(concurrency=2)
    expected = enqueue(total)
    started = time.monotonic()
    wait_until(lambda: faulty.count() >= total * 0.2, 120, 0.05, "a fifth of the batch sent")
    queued_before = broker.client().llen("email")
    broker.restart(keep_data=True)  # a persistent Redis coming back with its queue
    wait_until(lambda: faulty.count() >= total * 0.5, 120, 0.05, "half of the batch sent")
    broker.restart(keep_data=False)  # no persistence: every queued message is gone
    wiped_at = faulty.count()
    wait_drained(total, timeout=scaled(180, 600), status=EmailJob.Status.SENT)
    drain = round(time.monotonic() - started, 1)

    counted = tally(faulty, expected)
    reliability.record(
        "2. Redis restarted mid-batch (kept data), then wiped",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=f"{queued_before} messages queued at the first restart; wiped after {wiped_at} sent",
    )
    assert counted.lost == 0 and not counted.strangers
    assert counted.duplicated == 0, counted.copies.most_common(5)
    assert statuses() == {"sent": total}

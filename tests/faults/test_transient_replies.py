"""Scenario 4: 30% of attempts answered 451 (seeded), and a mix of 421/450/451/452."""

import time

import pytest

from notifications.models import EmailAttempt, EmailJob
from tests.faults.conftest import scaled
from tests.faults.helpers import (
    attempts_by_job,
    enqueue,
    schedule_violations,
    statuses,
    tally,
    wait_drained,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]
DELAYS = [0.2, 0.4, 0.8]
MAX_ATTEMPTS = 12  # 0.3 ** 12: not one of the messages is expected to run out


def run_batch(fault_worker, faulty, total: int, **faults) -> tuple[set[str], float]:
    faulty.configure(seed=1047, **faults)
    fault_worker(
        concurrency=2,
        EMAIL_RETRY_DELAYS=",".join(map(str, DELAYS)),
        EMAIL_RETRY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    )
    started = time.monotonic()
    expected = enqueue(total)
    wait_drained(total, timeout=scaled(120, 400))
    return expected, round(time.monotonic() - started, 1)


def test_30_percent_451_all_delivered_once_attempts_follow_the_schedule(
    fault_worker, faulty, reliability
):
    total = scaled(300, 2000)
    expected, drain = run_batch(fault_worker, faulty, total, transient_rate=0.3)

    counted = tally(faulty, expected)
    refusals = len(faulty.events_of("transient"))
    share = refusals / (refusals + faulty.count())
    reliability.record(
        "4a. 30% of DATA answered 451",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=f"{refusals} replies 451 ({share:.0%} of DATA); attempts match them one for one",
    )
    assert counted.lost == 0 and counted.duplicated == 0 and not counted.strangers, counted.explain(
        faulty
    )
    assert statuses() == {"sent": total}
    # Every 451 the server gave is one `retry` attempt, and every job's log reads
    # retry (451) ... retry (451), sent (250), numbered 1..n, with n == job.attempts.
    assert EmailAttempt.objects.filter(outcome="retry", smtp_code=451).count() == refusals
    attempts_of = dict(EmailJob.objects.values_list("pk", "attempts"))
    for job_id, attempts in attempts_by_job().items():
        assert [a.number for a in attempts] == list(range(1, len(attempts) + 1)), job_id
        assert [(a.outcome, a.smtp_code) for a in attempts] == [("retry", 451)] * (
            len(attempts) - 1
        ) + [("sent", 250)], job_id
        assert attempts_of[job_id] == len(attempts)
    assert schedule_violations(DELAYS) == []
    assert 0.2 < share < 0.4


def test_a_mix_of_421_450_451_452_all_delivered_once(fault_worker, faulty, reliability):
    total = scaled(200, 1000)
    expected, drain = run_batch(
        fault_worker, faulty, total, transient_rate=0.3, transient_codes=(421, 450, 451, 452)
    )

    counted = tally(faulty, expected)
    codes = sorted({e.code for e in faulty.events_of("transient")})
    reliability.record(
        "4b. 30% of DATA answered 421/450/451/452",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=f"codes seen {codes}; {len(faulty.events_of('transient'))} transient replies",
    )
    assert counted.lost == 0 and counted.duplicated == 0 and not counted.strangers, counted.explain(
        faulty
    )
    assert statuses() == {"sent": total}
    assert codes == [421, 450, 451, 452]
    assert schedule_violations(DELAYS) == []

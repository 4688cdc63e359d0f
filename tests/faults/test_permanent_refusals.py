"""Scenario 5: 550/553 at RCPT and 554 at DATA for some recipients: failed after one attempt."""

import time

import pytest

from notifications.models import EmailJob
from tests.faults.conftest import scaled
from tests.faults.helpers import enqueue, statuses, tally, wait_drained

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]


def test_refused_recipients_fail_after_one_attempt_and_the_others_are_sent(
    fault_worker, faulty, reliability
):
    total = scaled(200, 1000)
    refusals = {
        **{f"m{i}@example.org": "550 5.1.1 No such user" for i in range(0, total, 10)},
        **{f"m{i}@example.org": "553 5.1.3 Mailbox name not allowed" for i in range(3, total, 20)},
    }
    at_data = {f"m{i}@example.org": "554 5.7.1 Message refused" for i in range(7, total, 20)}
    faulty.configure(refuse_rcpt=refusals, refuse_data=at_data)
    fault_worker(concurrency=2)
    started = time.monotonic()
    expected = enqueue(total)
    wait_drained(total, timeout=scaled(90, 300))
    drain = round(time.monotonic() - started, 1)

    refused = set(refusals) | set(at_data)
    failed = EmailJob.objects.filter(status=EmailJob.Status.FAILED)
    sent_ids = set(
        EmailJob.objects.filter(status=EmailJob.Status.SENT).values_list("message_id", flat=True)
    )
    counted = tally(faulty, sent_ids)
    reliability.record(
        "5. 550/553 at RCPT, 554 at DATA for some recipients",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=f"{len(refused)} refused recipients: failed after 1 attempt, nothing stored for them",
    )
    assert {job.recipient for job in failed} == refused
    assert set(failed.values_list("attempts", flat=True)) == {1}
    for job in failed:
        reply = refusals.get(job.recipient) or at_data[job.recipient]
        assert job.last_smtp_code == int(reply[:3])
        assert reply[4:] in job.last_error
        assert [a.outcome for a in job.attempt_log.all()] == ["failed"]
    assert statuses() == {"sent": total - len(refused), "failed": len(refused)}
    assert counted.lost == 0 and counted.duplicated == 0, counted.explain(faulty)
    assert (
        set(faulty.copies())
        == sent_ids
        == expected - set(failed.values_list("message_id", flat=True))
    )

"""Scenarios 8 and 9: ten processes enqueue at once while four worker processes send.

CI runs the issue's size, 10 x 1,000 messages; VERTEX_SOAK=1 runs 10 x 3,000. On SQLite this is
also the "database is locked" test: no such error may reach a job, an attempt, a worker log or
a producer.
"""

import subprocess
import sys
import time

import pytest
from django.db import connection

from notifications.models import EmailJob
from tests.faults.conftest import scaled
from tests.faults.helpers import error_texts, statuses, tally, wait_drained
from tests.support.processes import ROOT, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]
PRODUCERS = 10
LOCKED = "database is locked"


def start_producers(env: dict, each: int, tmp_path) -> list[tuple[subprocess.Popen, object]]:
    go = tmp_path / "go"
    producers = []
    for index in range(PRODUCERS):
        output = tmp_path / f"producer-{index}.log"
        mode = "single" if index % 2 else "mass"
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.enqueuer", str(index), str(each), mode, str(go)],
            cwd=ROOT,
            env=env,
            stdout=output.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        producers.append((process, output))
    wait_until(
        lambda: all("ready" in out.read_text() or p.poll() is not None for p, out in producers),
        90,
        0.1,
        "every producer to be ready",
    )
    go.touch()
    return producers


def test_ten_producers_and_four_workers_make_exactly_one_job_and_one_delivery_each(
    fault_worker, faulty, worker_env, tmp_path, evidence, reliability
):
    each = scaled(1000, 3000)
    total = PRODUCERS * each
    workers = [fault_worker(concurrency=2), fault_worker(concurrency=2, beat=False)]
    producers = start_producers(worker_env, each, tmp_path)
    started = time.monotonic()
    for process, _ in producers:
        process.wait(timeout=scaled(300, 900))
    enqueued = round(time.monotonic() - started, 1)
    outputs = [out.read_text() for _, out in producers]
    evidence["outputs"].extend(outputs)
    assert [p.returncode for p, _ in producers] == [0] * PRODUCERS, "\n".join(outputs)
    wait_drained(total, timeout=scaled(420, 1200), status=EmailJob.Status.SENT)
    drain = round(time.monotonic() - started, 1)

    expected = set(EmailJob.objects.values_list("message_id", flat=True))
    counted = tally(faulty, expected)
    recipients = EmailJob.objects.values_list("recipient", flat=True)
    reliability.record(
        "8. 10 producers enqueue at once, 4 worker processes send",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=f"10 x {each}; all enqueued in {enqueued}s; 2 workers x 2 processes",
    )
    assert EmailJob.objects.count() == total == len(set(recipients))
    assert counted.lost == 0 and counted.duplicated == 0 and not counted.strangers, counted.explain(
        faulty
    )
    assert statuses() == {"sent": total}

    logs = [worker.log_path.read_text(errors="replace") for worker in workers]
    locked = {
        "job and attempt errors": sum(LOCKED in text for text in error_texts()),
        "worker log lines": sum(line.count(LOCKED) for log in logs for line in log.splitlines()),
        "producer output": sum(LOCKED in out for out in outputs),
    }
    reliability.record(
        f"9. '{LOCKED}' under that load ({connection.vendor})",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=drain,
        note=", ".join(f"{where}: {n}" for where, n in locked.items()),
    )
    assert locked == dict.fromkeys(locked, 0)

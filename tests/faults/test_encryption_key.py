"""Scenario 12: the encryption key is wrong, its file missing, unreadable or malformed.

Each is a clear error (the worker refuses to start, or the job records why it waits) and no job
is lost, failed or sent with the wrong settings; with the right key back, every job is sent once.
"""

import time

import pytest

from notifications import crypto
from notifications.models import EmailAttempt, EmailJob
from tests.faults.helpers import enqueue, statuses, tally, wait_drained
from tests.support.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]
CLEAR = ("encryption key", "could not be decrypted", "not among the loaded keys", "key file")


def bad_keys(tmp_path) -> dict[str, dict[str, str]]:
    unreadable = tmp_path / "key-is-a-directory"
    unreadable.mkdir()  # root reads any file whatever its mode; a directory it cannot read
    malformed = tmp_path / "malformed.key"
    malformed.write_text("not a key\n")
    return {
        "wrong key": {"EMAIL_ENCRYPTION_KEY": crypto.generate_key()},
        "key file missing": {
            "EMAIL_ENCRYPTION_KEY": "",
            "EMAIL_ENCRYPTION_KEY_FILE": str(tmp_path / "missing" / "encryption.key"),
        },
        "key file unreadable": {
            "EMAIL_ENCRYPTION_KEY": "",
            "EMAIL_ENCRYPTION_KEY_FILE": str(unreadable),
        },
        "key file malformed": {
            "EMAIL_ENCRYPTION_KEY": "",
            "EMAIL_ENCRYPTION_KEY_FILE": str(malformed),
        },
    }


def test_a_bad_encryption_key_is_a_clear_error_and_no_job_is_lost_or_failed(
    fault_worker, faulty, tmp_path, reliability
):
    total = 30
    expected = enqueue(total)
    started, seen = time.monotonic(), {}
    for name, env in bad_keys(tmp_path).items():
        worker = fault_worker(concurrency=1, wait_ready=False, EMAIL_CONFIG_ERROR_DELAY="1", **env)
        deferred_before = EmailAttempt.objects.filter(outcome="deferred").count()

        def settled(worker=worker, deferred_before=deferred_before):
            ended = not worker.alive
            deferred = EmailAttempt.objects.filter(outcome="deferred").count() > deferred_before
            return ended or deferred

        wait_until(settled, 60, 0.2, f"the worker to refuse or defer ({name})")
        exit_code = worker.wait_exit(2)
        worker.stop()
        log = worker.log_path.read_text(errors="replace")
        errors = set(EmailJob.objects.exclude(last_error="").values_list("last_error", flat=True))
        said = log if exit_code is not None else "\n".join(errors)
        seen[name] = "refused to start" if exit_code is not None else "deferred"
        assert any(text in said for text in CLEAR), f"{name}: no clear error in\n{said[-2000:]}"
        assert statuses() == {"pending": total}, name
        assert set(EmailJob.objects.values_list("attempts", flat=True)) == {0}, name
        assert faulty.count() == 0, name

    fault_worker(concurrency=2)  # the right key again
    wait_drained(total, timeout=60, status=EmailJob.Status.SENT)
    counted = tally(faulty, expected)
    reliability.record(
        "12. wrong / missing / unreadable / malformed encryption key",
        n=total,
        lost=counted.lost,
        duplicated=counted.duplicated,
        statuses=statuses(),
        drain_seconds=round(time.monotonic() - started, 1),
        note="; ".join(f"{name}: {what}" for name, what in seen.items()),
    )
    assert counted.lost == 0 and counted.duplicated == 0, counted.explain(faulty)

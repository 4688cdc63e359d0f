"""The journal of acceptances in Redis: written with its expiry, read back, forgotten."""

import gc
import threading
import time
from datetime import UTC, datetime

from notifications import journal
from notifications.journal import Acceptance
from tests.support.processes import free_port


def acceptance(job_id: int) -> Acceptance:
    moment = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    return Acceptance(
        job_id, 1, moment, 0.01, moment, "250 2.0.0 Ok: queued", {"x@y.org": [450, "later"]}
    )


def test_an_acceptance_is_kept_with_an_expiry_read_back_and_forgotten(broker):
    assert journal.record("claim-1", acceptance(7))
    assert journal.record("claim-1", acceptance(8))
    key = journal.KEY_PREFIX + "claim-1"
    assert journal.TTL_SECONDS - 5 < broker.client().ttl(key) <= journal.TTL_SECONDS
    assert journal.find([(7, "claim-1"), (8, "claim-1"), (9, "claim-1"), (7, "claim-2")]) == {
        7: acceptance(7),
        8: acceptance(8),
    }
    journal.forget("claim-1", [7, 8])
    assert not broker.client().exists(key)


def test_an_acceptance_is_journaled_after_redis_dropped_the_kept_connection(broker):
    """Journal writes keep a connection of their own; one Redis closed (a restart, a client
    kill) is replaced on the spot instead of costing the acceptance its journal entry."""
    assert journal.record("claim-1", acceptance(7))
    killed = broker.client().client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert journal.record("claim-1", acceptance(8))
    assert journal.find([(7, "claim-1"), (8, "claim-1")]) == {7: acceptance(7), 8: acceptance(8)}


def test_without_redis_an_acceptance_is_not_journaled(settings):
    settings.EMAIL_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert not journal.record("claim-1", acceptance(7))


def test_a_sending_thread_that_ends_closes_its_journal_connection(broker):
    """Each sending thread keeps a connection for its journal writes; a thread pool that is
    replaced must not leave its threads' connections open at Redis."""
    ids = []

    def journal_and_note_the_connection() -> None:
        assert journal.record("claim-1", acceptance(7))
        connection, _ = journal._writer()
        connection.send_command("CLIENT", "ID")
        ids.append(str(connection.read_response()))

    thread = threading.Thread(target=journal_and_note_the_connection)
    thread.start()
    thread.join()
    assert journal.find([(7, "claim-1")]) == {7: acceptance(7)}
    (connection_id,) = ids

    def open_ids() -> set[str]:
        return {str(client["id"]) for client in broker.client().client_list()}

    del thread
    gc.collect()
    deadline = time.monotonic() + 5
    while connection_id in open_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connection_id not in open_ids()

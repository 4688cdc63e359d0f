"""Wake-ups for newly committed jobs, published by a thread of the process, not by the caller.

Deciding whether a new job needs a wake-up message takes a round trip to Redis, 0.4-0.5 ms of a
1.3 ms `send_mail()` on a 2-core machine, most of it CPU (the client's and the kernel's), not
waiting. Here the caller hands the ids of its committed jobs to one thread per process and
returns; the thread takes whatever has piled up and makes one decision for all of it
(publishing.wake_workers). A thread alone saved nothing, since it made the same round trip per
call; while enqueues stream in it waits 5 ms first, so one round trip serves several calls
(`send_mail()` 1.35 -> 0.95 ms). Losing a hand-over loses nothing: the job is
committed, and the sweeper republishes due jobs that no message announced
(EMAIL_REDISPATCH_AFTER). At exit the thread is given a few seconds to finish.

With EMAIL_WAKE_IN_BACKGROUND=false (servers that run no threads of an application, such as
uWSGI without --enable-threads), the caller decides and publishes itself, as before.
"""

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence

from . import publishing
from .conf import option

logger = logging.getLogger(__name__)
EXIT_TIMEOUT = 5.0  # seconds an exiting process waits for its last wake-ups
# Under a stream of enqueues (hand-overs less than LINGER apart) the thread waits LINGER before
# it decides, so that one round trip covers the jobs of several calls; a job that comes alone is
# decided at once (waiting whenever the last decision was recent put 8 ms on the p50 latency).
LINGER = 0.005


class _Waker:
    def __init__(self) -> None:
        self._ids: queue.SimpleQueue[Sequence[int]] = queue.SimpleQueue()
        self._handed = self._done = 0
        self._last_handed_at = 0.0
        self._streaming = False
        self._idle = threading.Condition()
        threading.Thread(target=self._run, name="vertex-email-wake-ups", daemon=True).start()

    def hand_over(self, job_ids: Sequence[int]) -> None:
        with self._idle:
            self._handed += 1
            now = time.monotonic()
            self._streaming = now - self._last_handed_at < LINGER
            self._last_handed_at = now
        self._ids.put(job_ids)

    def flush(self, timeout: float) -> bool:
        """Wait until every handed-over id is decided; False if that took longer than timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._done == self._handed, timeout)

    def _run(self) -> None:
        while True:
            batches = [self._ids.get()]
            if self._streaming:
                time.sleep(LINGER)
            while True:  # everything that piled up during the last round trip, in one go
                try:
                    batches.append(self._ids.get_nowait())
                except queue.Empty:
                    break
            job_ids = [job_id for batch in batches for job_id in batch]
            try:
                publishing.wake_workers(job_ids)
            except Exception:  # never let the thread die: the sweeper covers these jobs
                logger.exception("could not wake workers for %d new job(s)", len(job_ids))
            with self._idle:
                self._done += len(batches)
                self._idle.notify_all()


_waker: _Waker | None = None
_waker_lock = threading.Lock()


def wake_workers_soon(job_ids: Sequence[int]) -> None:
    """Make sure these committed, due jobs will be drained, without waiting for Redis here."""
    if not job_ids:
        return
    if not option("WAKE_IN_BACKGROUND"):
        publishing.wake_workers(job_ids)
        return
    _current_waker().hand_over(job_ids)


def flush(timeout: float = EXIT_TIMEOUT) -> bool:
    """Wait for this process's pending wake-ups (tests; exit). True when none are left."""
    return _waker is None or _waker.flush(timeout)


def _current_waker() -> _Waker:
    global _waker
    if _waker is None:
        with _waker_lock:
            if _waker is None:
                _waker = _Waker()
    return _waker


def _forget_in_child() -> None:
    """A thread does not survive fork (Celery's pool, gunicorn): a child starts its own."""
    global _waker, _waker_lock
    _waker, _waker_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _flush_at_exit() -> None:
    if not flush(EXIT_TIMEOUT):
        logger.warning("exiting with wake-ups unpublished; the sweeper will publish those jobs")

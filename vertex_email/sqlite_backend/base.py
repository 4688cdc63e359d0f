"""SQLite, as django-prometheus wraps it, with writers queued on a file lock.

SQLite lets one writer in at a time; the others spin in its busy handler, which sleeps 1, 2, 5,
10 ... ms between tries. With a producer and two workers writing hundreds of small transactions a
second, those sleeps, not the writes, were most of the time `send_mail()` took (2 ms a call). Here
a transaction first takes an exclusive `flock` on `<database>.writer-lock`: waiters block in the
kernel and the next one runs as soon as the lock is let go. A lone statement run in autocommit
(send_mail()'s INSERT) holds the same lock through `writer_turn()`. Writers that bypass it (other
statements outside `atomic()`, the sqlite3 shell) still meet SQLite's own lock and busy timeout,
so the lock is a queue in front of SQLite's, never a replacement for it. The kernel drops the
lock of a process that dies. Under gevent or eventlet the lock is left out: a green thread
blocked in it would stall the whole process.
"""

import contextlib
import fcntl
import os
import sys

from django.db.backends.sqlite3.creation import DatabaseCreation as SQLiteCreation
from django_prometheus.db.backends.sqlite3 import base
from django_prometheus.db.common import ExportingCursorWrapper

DatabaseFeatures = base.DatabaseFeatures


class DatabaseCreation(SQLiteCreation):
    def _destroy_test_db(self, test_database_name, verbosity):
        super()._destroy_test_db(test_database_name, verbosity)
        if test_database_name and not self.is_in_memory_db(test_database_name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{test_database_name}.writer-lock")


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation
    _writer_lock_fd: int | None = None
    _writer_lock_held = False
    _cursor_class = None

    def create_cursor(self, name=None):
        """django-prometheus's counting cursor, its class built once per connection instead of
        at every cursor() (a class per query, 0.03 ms, and garbage for the cycle collector)."""
        if self._cursor_class is None:
            self._cursor_class = ExportingCursorWrapper(self.CURSOR_CLASS, self.alias, self.vendor)
        return self.connection.cursor(factory=self._cursor_class)

    def _start_transaction_under_autocommit(self):
        self._acquire_writer_lock()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer_lock()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_writer_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_writer_lock()
            if self._writer_lock_fd is not None:
                os.close(self._writer_lock_fd)
                self._writer_lock_fd = None

    @contextlib.contextmanager
    def writer_turn(self):
        """The writer lock around statements run in autocommit, each its own transaction: a
        lone INSERT needs no BEGIN and COMMIT of its own (Django's atomic() costs 0.1 ms), but
        it still waits its turn in the queue instead of in SQLite's sleeping busy handler."""
        if self._writer_lock_held:  # inside a transaction that holds it already
            yield
            return
        self._acquire_writer_lock()
        try:
            yield
        finally:
            self._release_writer_lock()

    def wal_checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database file now, outside the writer lock
        (PASSIVE: it waits for no one, and writers go on meanwhile). Workers call it after a
        batch (at most every delivery.CHECKPOINT_INTERVAL), so that producers' commits do not
        (see settings: wal_autocheckpoint)."""
        if self.in_atomic_block or self._writer_lock_held or self.is_in_memory_db():
            return
        with self.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _acquire_writer_lock(self) -> None:
        path = self._writer_lock_path()
        if path is None or self._writer_lock_held:
            return
        if self._writer_lock_fd is None:  # one open file per connection: threads queue too
            self._writer_lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._writer_lock_fd, fcntl.LOCK_EX)
        self._writer_lock_held = True

    def _release_writer_lock(self) -> None:
        if self._writer_lock_held:
            self._writer_lock_held = False
            fcntl.flock(self._writer_lock_fd, fcntl.LOCK_UN)

    def _writer_lock_path(self) -> str | None:
        name = str(self.settings_dict["NAME"])
        if self.is_in_memory_db() or not self.settings_dict["OPTIONS"].get("transaction_mode"):
            return None
        if _green_threads():
            return None  # a blocking flock would stall every green thread of the process
        return f"{name}.writer-lock"


def _green_threads() -> bool:
    """Whether gevent or eventlet (Celery's -P gevent / -P eventlet) patched this process."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("socket"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return eventlet is not None and eventlet.is_monkey_patched("socket")

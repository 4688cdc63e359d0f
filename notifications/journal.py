"""Messages the SMTP server accepted that the database does not record yet.

A worker settles the sent jobs of a batch in one transaction once the batch is over, instead of
one transaction per message. Each acceptance is written here, in Redis, the moment the server
gives it, keyed by the claim that holds the job. If the worker dies before it settles, the
sweeper finds the acceptance when the lease runs out and records the job as sent, instead of
sending it again: a crash still repeats at most the message that was on the wire.

When Redis cannot take an acceptance, the worker settles that job in the database at once, as
it would without this journal; nothing depends on Redis keeping more than that.
"""

import json
import logging
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import redis

from . import shared_redis

logger = logging.getLogger(__name__)
KEY_PREFIX = "vertex_email:accepted:"
# Far longer than a lease: an acceptance is read at the latest by the sweep after the lease ends.
TTL_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Acceptance:
    job_id: int
    attempt: int
    started_at: datetime
    duration: float
    sent_at: datetime
    response: str
    refused: dict

    def to_json(self) -> str:
        # By hand: dataclasses.asdict() deep-copies, a sixth of the cost of journaling.
        return json.dumps(
            {
                "job_id": self.job_id,
                "attempt": self.attempt,
                "started_at": self.started_at.isoformat(),
                "duration": self.duration,
                "sent_at": self.sent_at.isoformat(),
                "response": self.response,
                "refused": self.refused,
            }
        )

    @classmethod
    def from_json(cls, text: bytes | str) -> "Acceptance":
        fields = json.loads(text)
        fields["started_at"] = datetime.fromisoformat(fields["started_at"])
        fields["sent_at"] = datetime.fromisoformat(fields["sent_at"])
        return cls(**fields)


def _key(claim_token: str) -> str:
    return KEY_PREFIX + claim_token


def record(claim_token: str, acceptance: Acceptance) -> bool:
    """Write one acceptance; False when Redis cannot take it (then settle the job at once)."""
    key = _key(claim_token)
    commands = [
        ("HSET", key, str(acceptance.job_id), acceptance.to_json()),
        ("EXPIRE", key, TTL_SECONDS),
    ]
    reused = False
    for last_try in (False, True):
        try:
            writer, reused = _writer()
            writer.send_packed_command(writer.pack_commands(commands))
            writer.read_response()
            writer.read_response()
            return True
        except (redis.RedisError, OSError) as error:
            _drop_writer()  # a reply may be left unread: never reuse the connection
            if reused and not last_try and isinstance(error, redis.ConnectionError):
                continue  # a kept connection Redis had closed (a restart): once more, afresh
            logger.warning(
                "job %s: acceptance not journaled, Redis unavailable (%s); settling it at once",
                acceptance.job_id,
                error,
            )
            return False
    return False


_writers = threading.local()


class _Writer:
    """A connection taken out of the client's pool for one thread's journal writes. It goes
    back (closed) when dropped, also when its thread ends and takes its locals with it."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool, self.pid = pool, os.getpid()
        self.connection = pool.get_connection()
        self._finalizer = weakref.finalize(self, _give_back, pool, self.connection, self.pid)

    def close(self) -> None:
        self._finalizer()


def _give_back(pool: redis.ConnectionPool, connection, pid: int) -> None:
    if os.getpid() == pid:  # a forked child leaves its parent's socket alone
        connection.disconnect()
        pool.release(connection)


def _writer() -> tuple[redis.connection.AbstractConnection, bool]:
    """This thread's own connection for journal writes, kept out of the pool between them, and
    whether it was used before.

    Each write through the client checks a connection out of its pool and back (with a poll of
    the socket, a lock and observability counters) and goes through its retry and reply
    machinery: about 90 us of CPU a write, as much as the round trip itself. A process forked
    from this one, or a client for another URL, gets a connection of its own.
    """
    pool = shared_redis.client().connection_pool
    held = getattr(_writers, "held", None)
    if held is not None and held.pool is pool and held.pid == os.getpid():
        return held.connection, True
    _drop_writer()
    _writers.held = _Writer(pool)
    return _writers.held.connection, False


def _drop_writer() -> None:
    held = getattr(_writers, "held", None)
    _writers.held = None
    if held is not None:
        held.close()


def forget(claim_token: str, job_ids: Iterable[int]) -> None:
    """Drop acceptances the database now records. A failure only leaves them to expire."""
    fields = [str(job_id) for job_id in job_ids]
    if not fields:
        return
    try:
        shared_redis.client().hdel(_key(claim_token), *fields)
    except (redis.RedisError, OSError) as error:
        logger.warning("journal: %d settled acceptance(s) left to expire: %s", len(fields), error)


def find(claims: Iterable[tuple[int, str]]) -> dict[int, Acceptance]:
    """The journaled acceptances of these (job id, claim token) pairs, by job id.

    Raises redis.RedisError when Redis cannot be read: the caller must then not assume that the
    server never took these messages.
    """
    claims = [(job_id, token) for job_id, token in claims if token]
    if not claims:
        return {}
    with shared_redis.client().pipeline(transaction=False) as pipe:
        for job_id, token in claims:
            pipe.hget(_key(token), str(job_id))
        values = pipe.execute()
    return {
        job_id: Acceptance.from_json(value)
        for (job_id, _), value in zip(claims, values, strict=True)
        if value is not None
    }

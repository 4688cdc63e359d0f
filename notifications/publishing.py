"""Putting job ids on the broker. A failure here loses nothing: the sweeper republishes.

A send task drains due jobs in batches (delivery.py), so a due job needs *a* message on the queue
after its commit, not one of its own: `wake_workers` publishes one message per batch of new jobs,
no more than make EMAIL_WAKE_QUEUE_DEPTH wait, and none while a worker is draining (it looks
again before it stops) or enough messages already wait on the queue to drain everything due.
"""

import logging
from collections.abc import Sequence

import redis
from celery import current_app
from django.conf import settings

from . import shared_redis
from .conf import batch_size, option

logger = logging.getLogger(__name__)

SEND_TASK = "notifications.tasks.send_email"
# A countdown longer than this is not published: Redis would redeliver such a message every
# visibility timeout. The sweeper publishes the job when it falls due instead.
MAX_COUNTDOWN = 300.0
QUEUE = "email"
DRAINING_KEY = "vertex_email:draining"
DRAINING_TTL_MS = 5000  # a worker that dies draining stops counting after this
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def wake_workers(job_ids: Sequence[int]) -> int:
    """Make sure these due, committed jobs will be drained; returns the messages published."""
    if not job_ids:
        return 0
    draining, waiting = _queue_state()
    if draining:
        return 0
    missing = option("WAKE_QUEUE_DEPTH") - (waiting or 0)
    if missing <= 0:
        return 0  # those messages' tasks will claim these jobs too
    # A message a batch, up to that depth: each task drains until nothing is due, calling for help
    # while it finds full batches. 2,000 jobs of one call took 100 messages, 65 ms of publishing.
    return publish_jobs(list(job_ids)[:: batch_size()][:missing])


def call_for_help(job_id: int) -> int:
    """A draining worker found a backlog (a full batch): one more message, so that another worker
    process or thread joins in, unless enough already wait. Concurrency grows with the backlog."""
    waiting = _messages_waiting()
    if waiting is not None and waiting >= option("WAKE_QUEUE_DEPTH"):
        return 0
    return publish_jobs([job_id])


def mark_draining(draining: bool) -> None:
    """Tell producers that a worker is draining due jobs, so that new ones need no wake-up; or
    that it is about to stop. A worker unmarks, then looks for due jobs once more: a job
    committed before a producer saw the mark is seen by that last look."""
    try:
        if draining:
            shared_redis.client().set(DRAINING_KEY, "1", px=DRAINING_TTL_MS)
        else:
            shared_redis.client().delete(DRAINING_KEY)
    except redis.RedisError:  # producers publish; a stale mark lapses by itself
        pass


def worker_draining() -> bool:
    try:
        return bool(shared_redis.client().exists(DRAINING_KEY))
    except redis.RedisError:
        return False


def _queue_state() -> tuple[bool, int | None]:
    """Whether a worker is draining, and how many messages wait (None when it cannot be told).

    When the shared Redis is the broker (the default), both are asked in one round trip: this
    runs after every send_mail(), and two round trips were a fifth of its time."""
    if not _broker_is_shared_redis():
        return (True, None) if worker_draining() else (False, _messages_waiting())
    try:
        pipeline = shared_redis.client().pipeline(transaction=False)
        draining, waiting = pipeline.exists(DRAINING_KEY).llen(QUEUE).execute()
    except redis.RedisError:  # publish, and let that fail or not; the sweeper has the rest
        return False, None
    return bool(draining), int(waiting)


def _broker_is_shared_redis() -> bool:
    broker_url = current_app.conf.broker_url or ""
    return broker_url == settings.EMAIL_REDIS_URL and broker_url.startswith(REDIS_SCHEMES)


def _messages_waiting() -> int | None:
    """Messages on the queue not yet taken by a worker; None when it cannot be told."""
    try:  # a pooled connection: opening one per call cost more than the publish it saves
        with current_app.producer_or_acquire() as producer:
            return int(producer.channel.client.llen(QUEUE))
    except Exception:  # not Redis, or Redis down: publish, and let that fail or not
        return None


def publish_jobs(job_ids: Sequence[int], *, countdown: float | None = None) -> int:
    """Publish one send task per job id over one producer; returns how many were published."""
    if countdown is not None and countdown > MAX_COUNTDOWN:
        return 0
    published = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for job_id in job_ids:
                current_app.send_task(
                    SEND_TASK, args=(job_id,), countdown=countdown, producer=producer
                )
                published += 1
    except Exception as exc:  # the broker is down or refused: the rows stay pending
        logger.warning(
            "could not publish %d of %d email job(s), the sweeper will republish them: %s",
            len(job_ids) - published,
            len(job_ids),
            exc,
        )
    return published

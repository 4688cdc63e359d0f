"""Putting job ids on the broker. A failure here loses nothing: the sweeper republishes."""

import logging
from collections.abc import Sequence

from celery import current_app

logger = logging.getLogger(__name__)

SEND_TASK = "notifications.tasks.send_email"
# A countdown longer than this is not published: Redis would redeliver such a message every
# visibility timeout. The sweeper publishes the job when it falls due instead.
MAX_COUNTDOWN = 300.0


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

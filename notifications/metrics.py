"""Every Prometheus metric of the queue, defined once.

Nothing is kept in process memory. Each settled attempt is tallied in Redis (METRICS_REDIS_URL,
else EMAIL_REDIS_URL, which defaults to the broker) by the worker process that made it, and the
web process reads the tallies when it is scraped; queue depth is counted in the database at
scrape time. So the figures are the same whichever process serves /metrics, on whichever host,
and a restart of a worker or of the web process, or a purge of old jobs, never makes a counter go
backwards. See docs/prometheus/README.md.
"""

import logging
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator

import redis
from django.db import DatabaseError
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import shared_redis, throttle
from .conf import option
from .models import EmailAttempt
from .selectors import FAILURE_OUTCOMES, counts_by_status

logger = logging.getLogger(__name__)
Outcome = EmailAttempt.Outcome

SENT_TOTAL = "vertex_ar_email_sent_total"
FAILED_TOTAL = "vertex_ar_email_failed_total"
QUEUE_DEPTH = "vertex_ar_email_queue_depth"
SEND_DURATION = "vertex_ar_email_send_duration_seconds"
SENDING_PAUSED = "vertex_ar_email_sending_paused"

# Upper bounds of the send-duration buckets: an SMTP conversation takes milliseconds with a relay
# next door, tenths of a second across the internet, and up to the SMTP timeout on a bad day.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf)
# Attempts that end in LOST are recorded by the sweeper, with no duration worth a bucket.
TIMED_OUTCOMES = tuple(o for o in Outcome.values if o != Outcome.LOST)

# One Redis hash holds every tally, so a scrape reads a consistent snapshot with one HGETALL.
TALLY_KEY = "vertex_email:metrics:v1"


def _redis() -> redis.Redis:
    return shared_redis.client(option("METRICS_REDIS_URL") or None)


def _bound(duration: float) -> float:
    """The smallest bucket bound that `duration` falls under."""
    return DURATION_BUCKETS[bisect_left(DURATION_BUCKETS, duration)]


def _label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def observe_attempt(*, outcome: str, duration: float | None) -> None:
    """Called once per settled SMTP attempt, in the worker process that made it."""
    observe_attempts([(outcome, duration)])


def observe_attempts(observations: list[tuple[str, float | None]]) -> None:
    """Count settled attempts, given as (outcome, duration), in one Redis round trip.

    Never raises: the attempts are already recorded in the database, and a metrics outage must
    not turn a delivered message into a failed task.
    """
    increments: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    for outcome, duration in observations:
        if outcome not in Outcome.values:
            logger.error("metrics: unknown attempt outcome %r not counted", outcome)
            continue
        increments[f"attempts:{outcome}"] += 1
        if duration is not None and outcome in TIMED_OUTCOMES:
            duration = max(float(duration), 0.0)
            increments[f"duration:{outcome}:{_label(_bound(duration))}"] += 1
            sums[f"duration_sum:{outcome}"] += duration
    if not increments:
        return
    try:
        with _redis().pipeline(transaction=True) as pipe:  # all fields of these attempts, or none
            for field, count in increments.items():
                pipe.hincrby(TALLY_KEY, field, count)
            for field, total in sums.items():
                pipe.hincrbyfloat(TALLY_KEY, field, total)
            pipe.execute()
    except (redis.RedisError, OSError) as error:
        logger.warning(
            "metrics: %d attempt(s) not counted, Redis unavailable: %s", len(observations), error
        )


def read_tallies() -> dict[str, float]:
    raw = _redis().hgetall(TALLY_KEY)
    return {field.decode(): float(value) for field, value in raw.items()}


def _counters(tallies: dict[str, float]) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        SENT_TOTAL, "SMTP attempts the relay accepted (messages sent), since the tallies began."
    )
    sent.add_metric([], tallies.get(f"attempts:{Outcome.SENT}", 0.0))
    yield sent
    failed = CounterMetricFamily(
        FAILED_TOTAL,
        "Failed SMTP attempts by outcome: retry (transient, will retry), failed (permanent or "
        "out of attempts), deferred (SMTP configuration error), lost (worker died).",
        labels=["outcome"],
    )
    for outcome in FAILURE_OUTCOMES:
        failed.add_metric([outcome], tallies.get(f"attempts:{outcome}", 0.0))
    yield failed


def _histogram(tallies: dict[str, float]) -> Metric:
    histogram = HistogramMetricFamily(
        SEND_DURATION, "Duration of SMTP attempts by outcome.", labels=["outcome"]
    )
    for outcome in TIMED_OUTCOMES:
        per_bound = dict.fromkeys(DURATION_BUCKETS, 0.0)
        prefix = f"duration:{outcome}:"
        for field, count in tallies.items():
            if field.startswith(prefix):
                # A bound that is no longer configured counts in the next one up.
                per_bound[_bound(float(field[len(prefix) :]))] += count
        cumulative, buckets = 0.0, []
        for bound in DURATION_BUCKETS:
            cumulative += per_bound[bound]
            buckets.append((_label(bound), cumulative))
        histogram.add_metric([outcome], buckets, tallies.get(f"duration_sum:{outcome}", 0.0))
    return histogram


def _queue_depth() -> Metric:
    depth = GaugeMetricFamily(QUEUE_DEPTH, "E-mail jobs by status, now.", labels=["status"])
    for status, count in counts_by_status().items():
        depth.add_metric([status], count)
    return depth


def _pauses() -> Metric:
    """1 while every worker holds back: the circuit breaker is open, or a rate limit is reached."""
    paused = GaugeMetricFamily(
        SENDING_PAUSED, "1 while sending is paused, by reason.", labels=["reason"]
    )
    pauses = throttle.pauses()
    paused.add_metric(["circuit_breaker"], 1.0 if pauses["circuit_open"] else 0.0)
    paused.add_metric(["rate_limit"], 1.0 if pauses["rate_limited_for_seconds"] else 0.0)
    return paused


class QueueCollector:
    """Reads the tallies and the queue at scrape time; register it in a per-scrape registry.

    A source that cannot be read is left out of the answer, with a warning, rather than reported
    as zero: to Prometheus a zero would look like a counter reset.
    """

    def collect(self) -> Iterator[Metric]:
        try:
            tallies = read_tallies()
        except (redis.RedisError, OSError) as error:
            logger.warning("metrics: e-mail counters left out, Redis unavailable: %s", error)
        else:
            yield from _counters(tallies)
            yield _histogram(tallies)
            yield _pauses()
        try:
            yield _queue_depth()
        except DatabaseError as error:
            logger.warning("metrics: queue depth left out, database unavailable: %s", error)

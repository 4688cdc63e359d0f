"""Pauses that hold for every worker process and host, kept in Redis: rate limits per SMTP account
and a circuit breaker that stops sending while the SMTP server is unreachable or refuses us.

Both only ever delay jobs (they stay pending, their attempts unused). If Redis itself cannot be
reached they let sending go on: the broker is then down too, and the database still guards
against duplicates.
"""

import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

import redis

from . import shared_redis
from .conf import SmtpSettings, option

logger = logging.getLogger(__name__)
PREFIX = "vertex_email:"
CIRCUIT_KEY = PREFIX + "circuit"
PROBE_KEY = PREFIX + "circuit:probe"
WAKEUP_KEY = PREFIX + "circuit:wakeup"
WINDOWS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# A sliding-window log per limit, on Redis's clock (one clock for every host): a window holds
# the send times of the last `window` seconds, so no stretch of that length ever holds more than
# the limit (fixed windows let twice the limit through around each boundary, which a relay such
# as SES counts and throttles). Checks every window first, then records the send in all of them,
# atomically across processes. Returns 0, or the milliseconds until the oldest send leaves the
# fullest window.
RATE_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[#KEYS + i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now + 1)
  end
end
if wait > 0 then return wait end
local member = ARGV[#ARGV] .. ':' .. now
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, ARGV[#KEYS + i])
end
return 0
"""


def client() -> redis.Redis:
    return shared_redis.client()


def parse_limits(text: str) -> list[tuple[int, int]]:
    """'14/s,3000/m,50000/d' -> [(14, 1), (3000, 60), (50000, 86400)]."""
    limits = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        count, _, unit = part.partition("/")
        if unit not in WINDOWS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"rate limit {part!r}: expected N/s, N/m, N/h or N/d")
        limits.append((int(count), WINDOWS[unit]))
    return limits


def account_id(smtp: SmtpSettings) -> str:
    """Names the SMTP account in Redis keys without naming the host or user."""
    return hashlib.sha256(f"{smtp.host}:{smtp.port}:{smtp.username}".encode()).hexdigest()[:16]


def acquire_send_slot(smtp: SmtpSettings) -> float:
    """Count one send against the account's limits; 0, or the seconds to wait when over one."""
    limits = parse_limits(option("RATE_LIMITS"))
    if not limits:
        return 0.0
    now, account = time.time(), account_id(smtp)
    keys = [f"{PREFIX}rate:{account}:{window}" for _, window in limits]
    args = [count for count, _ in limits] + [window * 1000 for _, window in limits]
    args.append(uuid.uuid4().hex)  # names this send in the logs
    try:
        wait_ms = client().eval(RATE_SCRIPT, len(keys), *keys, *args)
    except redis.RedisError as error:
        logger.warning("rate limiter unavailable, sending unthrottled: %s", error)
        return 0.0
    if wait_ms:
        client().set(f"{PREFIX}rate_limited_until", str(now + wait_ms / 1000), px=int(wait_ms))
    return wait_ms / 1000


@dataclass
class CircuitState:
    open: bool
    reason: str = ""
    failures: int = 0
    retry_at: float = 0.0


def circuit_state() -> CircuitState:
    try:
        raw = client().hgetall(CIRCUIT_KEY)
    except redis.RedisError:
        return CircuitState(open=False)
    if not raw:
        return CircuitState(open=False)
    values = {k.decode(): v.decode() for k, v in raw.items()}
    return CircuitState(
        open=True,
        reason=values.get("reason", ""),
        failures=int(values.get("failures", 1)),
        retry_at=float(values.get("retry_at", 0)),
    )


def circuit_wait() -> tuple[float, bool]:
    """(seconds to wait, whether this caller may probe now). (0, False) when the circuit is shut."""
    if not option("CIRCUIT_BREAKER"):
        return 0.0, False
    state = circuit_state()
    if not state.open:
        return 0.0, False
    remaining = state.retry_at - time.time()
    if remaining > 0:
        return remaining, False
    try:  # one probe at a time, everywhere
        won = client().set(PROBE_KEY, "1", nx=True, ex=max(5, int(option("SMTP_TIMEOUT") * 3)))
    except redis.RedisError:
        return 0.0, True
    return (0.0, True) if won else (1.0, False)


def claim_wakeup(wait: float) -> bool:
    """True for the one caller that should schedule the wake-up at the end of this pause."""
    try:
        return bool(client().set(WAKEUP_KEY, "1", nx=True, px=max(1, int(wait * 1000))))
    except redis.RedisError:
        return True


STREAK_KEY = PREFIX + "circuit:streak"


def record_connection_failure(reason: str, *, certain: bool) -> float:
    """Count a failure of the connection (not of a message). The circuit opens on a `certain`
    one (our configuration) or after EMAIL_CIRCUIT_THRESHOLD in a row, so one dropped connection
    pauses nobody. Returns the seconds of pause, 0 when sending goes on."""
    if not option("CIRCUIT_BREAKER"):
        return 0.0
    try:
        pipe = client().pipeline()
        pipe.incr(STREAK_KEY)
        pipe.expire(STREAK_KEY, 60)
        streak = pipe.execute()[0]
    except redis.RedisError:
        return 0.0
    if certain or streak >= option("CIRCUIT_THRESHOLD") or circuit_state().open:
        return trip_circuit(reason)
    return 0.0


def record_success() -> None:
    """A message went through: the streak of connection failures starts again from zero."""
    with contextlib.suppress(redis.RedisError):
        client().delete(STREAK_KEY)


def trip_circuit(reason: str) -> float:
    """Open (or keep open, backing off) the circuit; returns seconds until the next probe."""
    if not option("CIRCUIT_BREAKER"):
        return 0.0
    failures = circuit_state().failures + 1
    # The exponent is capped: a days-long outage counts thousands of failed probes.
    backoff = option("CIRCUIT_BASE_DELAY") * 2 ** min(failures - 1, 32)
    delay = min(option("CIRCUIT_MAX_DELAY"), backoff)
    try:
        pipe = client().pipeline()
        pipe.hset(
            CIRCUIT_KEY,
            mapping={
                "reason": reason[:300],
                "failures": failures,
                "retry_at": time.time() + delay,
                "opened_at": time.time(),
            },
        )
        pipe.delete(PROBE_KEY)
        pipe.execute()
    except redis.RedisError as error:
        logger.warning("could not open the circuit breaker: %s", error)
        return 0.0
    logger.error("sending paused for %.0fs (failure %d): %s", delay, failures, reason)
    return delay


def close_circuit() -> None:
    try:
        removed = client().delete(CIRCUIT_KEY, PROBE_KEY, STREAK_KEY)
    except redis.RedisError:
        return
    if removed:
        logger.warning("SMTP server answers again: sending resumed")


def pauses() -> dict:
    """What stats, the API and metrics show about pauses."""
    state = circuit_state()
    try:
        limited = client().get(f"{PREFIX}rate_limited_until")
    except redis.RedisError:
        limited = None
    return {
        "circuit_open": state.open,
        "circuit_reason": state.reason,
        "circuit_failures": state.failures,
        "circuit_retry_in_seconds": max(0.0, round(state.retry_at - time.time(), 1))
        if state.open
        else None,
        "rate_limited_for_seconds": max(0.0, round(float(limited) - time.time(), 1))
        if limited
        else None,
    }

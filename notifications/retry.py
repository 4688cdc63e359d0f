"""The retry schedule: a pure function, so it can be tested on its own."""

import random
from collections.abc import Sequence

JITTER_FLOOR = 0.8  # a jittered delay never drops below 80% of the configured one


def retry_delay(attempts_made: int, delays: Sequence[float], *, jitter: bool = True) -> float:
    """Seconds to wait after `attempts_made` attempts; a short list repeats its last value."""
    if attempts_made < 1:
        raise ValueError("retry_delay is asked only after at least one attempt")
    if not delays:
        return 0.0
    delay = float(delays[min(attempts_made, len(delays)) - 1])
    if jitter:
        delay *= random.uniform(JITTER_FLOOR, 1.0)
    return delay


def should_retry(attempts_made: int, max_attempts: int) -> bool:
    """`max_attempts` counts every attempt, the first included."""
    return attempts_made < max_attempts

"""The retry schedule and attempt budget, as pure functions."""

import pytest

from notifications.retry import retry_delay, should_retry

DELAYS = [1, 2, 4, 8, 16]


@pytest.mark.parametrize(("attempts", "expected"), [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16)])
def test_delay_follows_the_configured_list(attempts, expected):
    assert retry_delay(attempts, DELAYS, jitter=False) == expected


def test_short_list_repeats_its_last_value():
    assert [retry_delay(n, [1, 5], jitter=False) for n in (1, 2, 3, 7)] == [1, 5, 5, 5]


def test_jitter_never_goes_below_80_percent_nor_above_the_delay():
    delays = [retry_delay(3, DELAYS) for _ in range(2000)]
    assert min(delays) >= 0.8 * 4
    assert max(delays) <= 4
    assert len(set(delays)) > 100  # really jittered


def test_max_attempts_counts_the_first_attempt():
    # With 5, a message is tried at most 5 times: retries follow attempts 1-4, not attempt 5.
    assert [should_retry(n, 5) for n in range(1, 6)] == [True, True, True, True, False]


def test_delay_before_any_attempt_is_an_error():
    with pytest.raises(ValueError, match="at least one attempt"):
        retry_delay(0, DELAYS)

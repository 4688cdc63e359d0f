"""Rate limits per SMTP account across workers, and the circuit breaker: delays, never failures."""

import bisect
import time

import pytest
from django.core.mail import send_mass_mail

from notifications import smtp_config, throttle
from notifications.models import EmailJob
from tests.support.processes import free_port, wait_until
from tests.support.smtp_sink import SmtpSink

Status = EmailJob.Status


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("", []),
        ("14/s", [(14, 1)]),
        ("20/s, 2000/d", [(20, 1), (2000, 86400)]),
        ("100/m,5/h", [(100, 60), (5, 3600)]),
    ],
)
def test_rate_limits_parse(text, limits):
    assert throttle.parse_limits(text) == limits


@pytest.mark.parametrize("text", ["14", "14/w", "0/s", "x/s"])
def test_bad_rate_limits_are_refused(text):
    with pytest.raises(ValueError, match="expected N/s"):
        throttle.parse_limits(text)


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
def test_the_limiter_lets_the_limit_through_in_any_window_and_says_how_long_to_wait(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "RATE_LIMITS": "5/s,7/m"}
    account = smtp_config.environment_defaults()
    assert [throttle.acquire_send_slot(account) for _ in range(3)] == [0.0] * 3
    time.sleep(0.6)
    assert [throttle.acquire_send_slot(account) for _ in range(2)] == [0.0] * 2
    wait = throttle.acquire_send_slot(account)
    assert 0.3 < wait <= 0.41  # until the first three leave the last second, wherever it began
    time.sleep(wait + 0.05)
    assert throttle.acquire_send_slot(account) == 0.0
    assert throttle.acquire_send_slot(account) == 0.0
    assert throttle.acquire_send_slot(account) > 50  # the eighth this minute waits for the minute
    assert throttle.pauses()["rate_limited_for_seconds"] > 50


def enqueue(count: int) -> None:
    send_mass_mail(
        [(f"T {i}", "Body", "from@example.org", [f"t{i}@example.org"]) for i in range(count)]
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_rate_limit_holds_across_worker_processes(start_worker, smtp):
    start_worker(concurrency=2, EMAIL_RATE_LIMITS="10/s")
    enqueue(35)
    wait_until(
        lambda: EmailJob.objects.filter(status=Status.SENT).count() == 35,
        60,
        0.2,
        "every job to be sent",
    )
    arrivals = sorted(received.received_at for received in smtp.messages)
    # No stretch of a second holds more than 10 (sliding, not per calendar second), give or take
    # 50 ms of jitter between the limiter granting a send and the message arriving.
    busiest = max(bisect.bisect_left(arrivals, t + 0.95) - i for i, t in enumerate(arrivals))
    assert busiest <= 10, arrivals
    assert arrivals[-1] - arrivals[0] >= 3.0  # 35 at 10 a second: the 31st a full 3 s after the 1st
    assert set(EmailJob.objects.values_list("attempts", flat=True)) == {1}  # delayed, not retried


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_an_unreachable_server_pauses_everyone_and_sending_resumes_by_itself(
    start_worker, smtp, broker
):
    port = free_port()
    smtp_config.update_settings(actor="test", changes={"smtp_port": port})
    start_worker(
        concurrency=2,
        EMAIL_CIRCUIT_BASE_DELAY="0.5",
        EMAIL_CIRCUIT_MAX_DELAY="2",
        EMAIL_RETRY_MAX_ATTEMPTS="10",
    )
    enqueue(40)
    wait_until(lambda: throttle.pauses()["circuit_open"], 30, 0.1, "sending to pause")
    assert "refused" in throttle.pauses()["circuit_reason"]
    sink = SmtpSink(port)
    sink.start()
    try:
        wait_until(
            lambda: EmailJob.objects.filter(status=Status.SENT).count() == 40,
            60,
            0.2,
            "every job to be sent once the server is back",
        )
        assert sink.handler.count() == 40
        assert not throttle.pauses()["circuit_open"]
        attempts = sorted(EmailJob.objects.values_list("attempts", flat=True))
        # Only the probes used attempts: far fewer than one failed attempt per job.
        assert sum(attempts) - 40 < 15, attempts
    finally:
        sink.stop()


@pytest.mark.django_db
def test_a_long_outage_backs_off_to_the_maximum_without_overflowing(broker, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "CIRCUIT_MAX_DELAY": 300.0}
    throttle.client().hset(throttle.CIRCUIT_KEY, mapping={"failures": 5000, "retry_at": 0})
    assert throttle.trip_circuit("connection to the SMTP server refused") == 300.0
    assert throttle.circuit_state().failures == 5001

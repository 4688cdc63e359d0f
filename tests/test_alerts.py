"""Failure-rate alerts by e-mail and Telegram: threshold, minimum, cooldown, recovery, failures."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications import crypto, delivery, smtp_config
from notifications.alerts import evaluate_alerts
from notifications.models import AlertEvent, EmailAttempt, EmailJob
from notifications.tasks import evaluate_alerts as evaluate_alerts_task
from tests.factories import EmailJobFactory
from tests.support.fake_telegram import FakeTelegram

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "123456789:AAH-fake-telegram-token-0123456789abc"


@pytest.fixture
def telegram(settings):
    server = FakeTelegram()
    server.start()
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "TELEGRAM_API_BASE_URL": server.url}
    yield server
    server.stop()


@pytest.fixture
def alerting(settings, telegram, smtp, broker):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    smtp_config.update_settings(
        actor="test",
        changes={
            "admin_emails": ["ops@example.org"],
            "telegram_chat_id": "-1001",
            "alert_failure_rate": 0.10,
            "alert_min_attempts": 20,
        },
        telegram_bot_token=TOKEN,
    )
    return telegram


def record_attempts(sent: int, failed: int, *, ago: timedelta = timedelta(minutes=5)) -> None:
    job = EmailJobFactory(index=sent * 1000 + failed)
    started = timezone.now() - ago
    outcomes = ["sent"] * sent + ["failed"] * failed
    EmailAttempt.objects.bulk_create(
        EmailAttempt(
            job=job,
            number=i + 1,
            started_at=started,
            outcome=outcome,
            smtp_code=250 if outcome == "sent" else 550,
            error="" if outcome == "sent" else "550 mailbox unavailable",
        )
        for i, outcome in enumerate(outcomes)
    )


def alert_jobs():
    return EmailJob.objects.filter(subject__startswith="[vertex_email]").order_by("id")


def test_no_alert_below_the_minimum_number_of_attempts(alerting):
    record_attempts(sent=5, failed=10)  # 67% failed, but only 15 attempts
    assert evaluate_alerts() is None
    assert alerting.calls == [] and not alert_jobs().exists()


def test_no_alert_at_or_below_the_threshold(alerting):
    record_attempts(sent=90, failed=10)  # exactly 10%
    assert evaluate_alerts() is None


def test_above_the_threshold_alerts_by_email_and_telegram(alerting, smtp):
    record_attempts(sent=80, failed=20)
    event = evaluate_alerts()
    assert event.kind == AlertEvent.Kind.FIRING and event.failure_rate == pytest.approx(0.2)
    assert event.telegram_result == "sent" and event.email_result.startswith("queued")
    (call,) = alerting.calls
    assert call["path"] == f"/bot{TOKEN}/sendMessage" and call["chat_id"] == "-1001"
    assert "20% of 100 e-mail attempts failed" in call["text"]
    (job,) = alert_jobs()
    assert job.to == ["ops@example.org"]
    assert "ALERT: 20% of e-mail attempts failed in the last 60 minutes" in job.subject
    assert delivery.deliver_job(job_id=job.pk) == "sent"
    (received,) = smtp.messages
    assert "550 mailbox unavailable" in received.message.get_body(("plain",)).get_content()


def test_at_most_once_per_cooldown_then_repeated(alerting):
    record_attempts(sent=50, failed=50)
    assert evaluate_alerts().kind == "firing"
    assert evaluate_alerts() is None
    later = timezone.now() + timedelta(hours=1, minutes=1)
    assert evaluate_alerts(now=later).kind == "firing"
    assert len(alerting.calls) == 2


def test_recovery_notice_once_when_the_rate_falls(alerting):
    record_attempts(sent=50, failed=50)
    evaluate_alerts()
    EmailAttempt.objects.filter(outcome="failed").delete()
    record_attempts(sent=100, failed=1)
    event = evaluate_alerts()
    assert event.kind == AlertEvent.Kind.RECOVERED
    assert "recovered" in alerting.calls[-1]["text"]
    assert "Recovered" in alert_jobs().last().subject
    assert evaluate_alerts() is None


def test_attempts_outside_the_window_do_not_count(alerting):
    record_attempts(sent=0, failed=50, ago=timedelta(hours=2))
    assert evaluate_alerts() is None


def test_a_failing_telegram_is_recorded_and_never_raises_nor_logs_the_token(alerting, caplog):
    alerting.status = 401
    record_attempts(sent=0, failed=30)
    with caplog.at_level(logging.INFO):
        event = evaluate_alerts_task()
    assert event == "firing"
    stored = AlertEvent.objects.get()
    assert stored.telegram_result == "failed: HTTP 401"
    assert stored.email_result.startswith("queued")
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text


def test_telegram_down_is_recorded(alerting, settings):
    settings.NOTIFICATIONS = {
        **settings.NOTIFICATIONS,
        "TELEGRAM_API_BASE_URL": "http://127.0.0.1:1",
    }
    record_attempts(sent=0, failed=30)
    assert evaluate_alerts().telegram_result.startswith("failed: ")


def test_the_telegram_token_decryption_is_audited(alerting):
    record_attempts(sent=0, failed=30)
    evaluate_alerts()
    from notifications.models import AuditLogEntry

    entry = AuditLogEntry.objects.get(action="decrypt")
    assert (entry.actor, entry.purpose) == ("alerting", "failure-rate alert")


def test_a_paused_queue_alerts_even_with_few_attempts(alerting):
    from notifications import throttle

    throttle.trip_circuit("connection to the SMTP server refused")
    event = evaluate_alerts()
    assert event.kind == AlertEvent.Kind.FIRING
    assert "Sending PAUSED: connection to the SMTP server refused" in alerting.calls[-1]["text"]
    throttle.close_circuit()
    assert evaluate_alerts().kind == AlertEvent.Kind.RECOVERED

"""GET /api/monitoring/email-stats: who may see it, and what it shows."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from notifications import crypto, delivery, smtp_config
from notifications.models import EmailAttempt, EmailJob
from tests.factories import EmailJobFactory
from tests.support.processes import free_port
from tests.support.smtp_sink import Credentials, SmtpSink

pytestmark = pytest.mark.django_db
URL = "/api/monitoring/email-stats"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("operator", password="x", is_staff=True)


@pytest.fixture
def monitor(client, staff):
    """A logged-in staff user with the permission to view jobs."""
    staff.user_permissions.add(Permission.objects.get(codename="view_emailjob"))
    client.force_login(staff)
    return client


def attempt(job, outcome, *, ago=timedelta(minutes=1), **fields) -> EmailAttempt:
    return EmailAttempt.objects.create(
        job=job, number=1, started_at=timezone.now() - ago, outcome=outcome, **fields
    )


def test_anonymous_gets_401_in_json_not_a_login_redirect(client):
    response = client.get(URL)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication required."}


def test_a_user_who_is_not_staff_gets_403(client, django_user_model):
    user = django_user_model.objects.create_user("someone", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_emailjob"))
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 403
    assert response.json() == {"detail": "Permission denied."}


def test_staff_without_the_view_permission_gets_403(client, staff):
    client.force_login(staff)
    assert client.get(URL).status_code == 403


def test_a_superuser_may_look(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    assert client.get(URL).status_code == 200


def test_only_get(monitor):
    assert monitor.post(URL).status_code == 405


def test_queue_depth_and_the_last_hour(monitor):
    for i, status in enumerate(["pending", "pending", "sending", "sent", "failed", "cancelled"]):
        EmailJobFactory(index=i, status=status)
    EmailJob.objects.filter(status="pending").update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    job = EmailJob.objects.get(status="sent")
    for outcome in ["sent"] * 7 + ["retry", "failed", "lost"]:
        attempt(job, outcome)
    attempt(job, "failed", ago=timedelta(minutes=61))  # outside the hour

    response = monitor.get(URL)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    stats = response.json()
    assert {s: stats[s] for s in EmailJob.Status.values} == {
        "pending": 2,
        "sending": 1,
        "sent": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert 300 <= stats["oldest_pending_age_seconds"] < 360
    assert stats["window_seconds"] == 3600
    assert (stats["sent_last_window"], stats["failed_last_window"]) == (7, 1)
    assert stats["attempts_last_window"] == 10
    assert stats["failure_rate_last_window"] == 0.3
    assert stats["throughput_per_second"] == round(7 / 3600, 3)


def test_the_ten_most_recent_errors_newest_first(monitor):
    job = EmailJobFactory()
    for minutes in range(12):
        attempt(
            job,
            "retry",
            ago=timedelta(minutes=minutes, seconds=30),
            smtp_code=451,
            error=f"e{minutes}",
        )
    attempt(job, "sent", ago=timedelta(seconds=1), smtp_code=250)

    errors = monitor.get(URL).json()["recent_errors"]
    assert [e["error"] for e in errors] == [f"e{m}" for m in range(10)]
    assert set(errors[0]) == {"job_id", "time", "code", "error", "outcome"}
    assert (errors[0]["job_id"], errors[0]["code"], errors[0]["outcome"]) == (job.pk, 451, "retry")
    assert errors[0]["time"] > errors[1]["time"]


def test_an_empty_queue(monitor):
    stats = monitor.get(URL).json()
    assert stats["pending"] == 0 and stats["oldest_pending_age_seconds"] is None
    assert stats["failure_rate_last_window"] == 0.0 and stats["recent_errors"] == []


@pytest.mark.django_db(transaction=True)
def test_real_smtp_errors_are_listed_without_any_secret(monitor, settings, broker):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    sink = SmtpSink(free_port(), Credentials("mailer", "the-right-one-5c1e"))
    sink.start()
    try:
        smtp_config.update_settings(
            actor="test",
            changes={"smtp_port": sink.port, "smtp_username": "mailer"},
            smtp_password="wrong-password-0b7d",
        )
        job = EmailJobFactory()
        assert delivery.deliver_job(job_id=job.pk) == "deferred"
        sink.handler.data_replies.append("550 5.1.1 <user1@example.org>: no such user")
        smtp_config.update_settings(actor="test", smtp_password="the-right-one-5c1e")
        other = EmailJobFactory(index=1)
        assert delivery.deliver_job(job_id=other.pk) == "failed"
    finally:
        sink.stop()

    response = monitor.get(URL)
    first, second = response.json()["recent_errors"]
    assert (first["job_id"], first["code"]) == (other.pk, 550)
    assert "no such user" in first["error"]
    assert (second["job_id"], second["outcome"]) == (job.pk, "deferred")
    assert "authentication refused" in second["error"]
    body = response.content.decode()
    assert "wrong-password-0b7d" not in body and "the-right-one-5c1e" not in body
    assert smtp_config.load_row().smtp_password_encrypted not in body

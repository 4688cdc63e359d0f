"""`manage.py email_queue stats`: counts by status and the oldest pending age."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from notifications.models import EmailJob
from tests.factories import EmailJobFactory

pytestmark = pytest.mark.django_db


def run_stats(*args: str) -> str:
    out = StringIO()
    call_command("email_queue", "stats", *args, stdout=out)
    return out.getvalue()


def make_jobs():
    for i, status in enumerate(["pending", "pending", "sent", "sent", "sent", "failed"]):
        EmailJobFactory(index=i, status=status)
    EmailJob.objects.filter(status="pending").update(
        created_at=timezone.now() - timedelta(minutes=10)
    )


def test_stats_json_has_every_status_and_the_oldest_pending_age():
    make_jobs()
    stats = json.loads(run_stats("--json"))
    assert {k: stats[k] for k in ("pending", "sending", "sent", "failed", "cancelled")} == {
        "pending": 2,
        "sending": 0,
        "sent": 3,
        "failed": 1,
        "cancelled": 0,
    }
    assert 600 <= stats["oldest_pending_age_seconds"] < 660


def test_stats_text_lists_each_status():
    make_jobs()
    text = run_stats()
    assert "pending    2" in text and "sent       3" in text and "cancelled  0" in text
    assert "oldest pending: 6" in text  # 600-odd seconds ago


def test_stats_of_an_empty_queue():
    stats = json.loads(run_stats("--json"))
    assert stats["pending"] == 0 and stats["oldest_pending_age_seconds"] is None
    assert "oldest pending: none" in run_stats()

"""Reads of the queue for operators: counts by status and the age of the oldest pending job."""

from django.db.models import Count, Min
from django.utils import timezone

from .models import EmailJob


def queue_stats() -> dict:
    counts = dict.fromkeys(EmailJob.Status.values, 0)
    for row in EmailJob.objects.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    oldest = EmailJob.objects.filter(status=EmailJob.Status.PENDING).aggregate(
        oldest=Min("created_at")
    )["oldest"]
    age = (timezone.now() - oldest).total_seconds() if oldest else None
    return {**counts, "oldest_pending_age_seconds": age}

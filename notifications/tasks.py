"""Celery tasks: thin, take ids, call services."""

from celery import shared_task
from django.db import DatabaseError

from . import delivery, services


# A database hiccup (SQLite busy past its timeout, a PostgreSQL failover) leaves the job pending
# or leased; trying the task again soon is cheaper than waiting for the sweeper.
@shared_task(
    name="notifications.tasks.send_email",
    autoretry_for=(DatabaseError,),
    retry_backoff=1,
    retry_jitter=False,
    max_retries=3,
)
def send_email(job_id: int) -> int:
    """Send this job, and due jobs after it in batches; returns how many attempts were made."""
    return delivery.deliver_due_jobs(job_id=job_id)


@shared_task(name="notifications.tasks.recover_jobs")
def recover_jobs() -> dict[str, int]:
    return services.recover_jobs()


@shared_task(name="notifications.tasks.evaluate_alerts")
def evaluate_alerts() -> str | None:
    from .alerts import evaluate_alerts as evaluate

    event = evaluate()
    return event.kind if event else None

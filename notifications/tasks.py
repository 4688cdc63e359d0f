"""Celery tasks: thin, take ids, call services."""

from celery import shared_task

from . import services


@shared_task(name="notifications.tasks.send_email")
def send_email(job_id: int) -> str | None:
    return services.deliver_job(job_id=job_id)


@shared_task(name="notifications.tasks.recover_jobs")
def recover_jobs() -> dict[str, int]:
    return services.recover_jobs()

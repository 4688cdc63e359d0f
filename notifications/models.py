"""E-mail jobs and their send attempts: the database is the source of truth for the queue."""

from django.db import models
from django.db.models import Q


class EmailJob(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)

    # What was asked for, kept for operators and search.
    from_email = models.CharField(max_length=320)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list, blank=True)
    bcc = models.JSONField(default=list, blank=True)
    reply_to = models.JSONField(default=list, blank=True)
    subject = models.TextField(blank=True)
    body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    attachments = models.JSONField(
        default=list, blank=True, help_text="Name, type and size of each."
    )
    message_id = models.CharField(max_length=255, unique=True)

    # What goes on the wire, fixed at enqueue time: the envelope and the MIME message itself.
    envelope_from = models.CharField(max_length=320)
    envelope_recipients = models.JSONField(default=list)
    mime_message = models.BinaryField()
    size_bytes = models.PositiveIntegerField(default=0)

    # Delivery state. `attempts` doubles as the claim token: a worker may only settle the
    # attempt it claimed.
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    smtp_response = models.TextField(blank=True)
    refused_recipients = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Workers and the sweeper: due pending jobs, expired leases.
            models.Index(fields=["status", "next_attempt_at"], name="emailjob_status_due"),
            models.Index(
                fields=["lease_expires_at"],
                name="emailjob_sending_lease",
                condition=Q(status="sending"),
            ),
            # Operators: lists by status and date, purges of old sent jobs.
            models.Index(fields=["status", "created_at"], name="emailjob_status_created"),
            models.Index(fields=["created_at"], name="emailjob_created"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "sending", "sent", "failed", "cancelled"]),
                name="emailjob_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"EmailJob #{self.pk} ({self.status}) to {', '.join(self.to[:3])}"


class EmailAttempt(models.Model):
    class Outcome(models.TextChoices):
        SENT = "sent", "Sent"
        RETRY = "retry", "Transient failure, will retry"
        FAILED = "failed", "Failed"
        DEFERRED = "deferred", "Configuration error, deferred"
        LOST = "lost", "Worker lost during the attempt"

    job = models.ForeignKey(EmailJob, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_seconds = models.FloatField(default=0.0)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["job_id", "number"]
        indexes = [models.Index(fields=["job", "number"], name="emailattempt_job_number")]

    def __str__(self) -> str:
        return f"Attempt {self.number} of job #{self.job_id}: {self.outcome}"

"""E-mail jobs and their send attempts: the database is the source of truth for the queue."""

from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower


class EmailJob(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Priority(models.IntegerChoices):
        HIGH = 0, "High"
        NORMAL = 5, "Normal"
        LOW = 9, "Low"

    class Layout(models.TextChoices):
        """How the worker gets the bytes: stored at enqueue, or rendered from the fields."""

        RENDERED = "", "Rendered at enqueue"
        PLAIN = "plain", "Text"
        HTML = "html", "HTML"
        PLAIN_HTML = "plain+html", "Text and HTML"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)

    # What was asked for, kept for operators and search.
    from_email = models.CharField(max_length=320)
    recipient = models.CharField(max_length=320, help_text="The first addressee, for lists.")
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
    # Empty for a simple message (see `layout`): the worker renders it from the fields above.
    mime_message = models.BinaryField()
    size_bytes = models.PositiveIntegerField(default=0)
    layout = models.CharField(
        max_length=16, blank=True, default=Layout.RENDERED, choices=Layout.choices
    )

    # Delivery state. `attempts` doubles as the claim token: a worker may only settle the
    # attempt it claimed.
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(help_text="The send-at time until the first attempt.")
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Cancelled instead of sent if not sent by then."
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.CharField(max_length=32, blank=True, editable=False)
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
            # Workers claim due pending jobs in the queue's order, a priority at a time
            # (claiming.py); the sweeper finds due and expired ones. Pending jobs only: a claim
            # takes a job out of both and a settle touches neither (decision 42).
            models.Index(
                fields=["status", "priority", "next_attempt_at", "id"],
                name="emailjob_pending_order",
                condition=Q(status="pending"),
            ),
            models.Index(
                fields=["status", "next_attempt_at"],
                name="emailjob_pending_due",
                condition=Q(status="pending"),
            ),
            models.Index(
                fields=["expires_at"],
                name="emailjob_pending_expiry",
                condition=Q(status="pending", expires_at__isnull=False),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="emailjob_sending_lease",
                condition=Q(status="sending"),
            ),
            # Operators: lists by status and date, purges of old sent jobs.
            models.Index(fields=["status", "created_at"], name="emailjob_status_created"),
            models.Index(fields=["created_at"], name="emailjob_created"),
            # The admin's search for a whole address, in any case (selectors.jobs_with_address).
            models.Index(Lower("recipient"), name="emailjob_recipient_lower"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "sending", "sent", "failed", "cancelled"]),
                name="emailjob_status_valid",
            ),
            # Claims read the queue a priority at a time: a job of another would never be sent.
            models.CheckConstraint(
                condition=Q(priority__in=[0, 5, 9]), name="emailjob_priority_valid"
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
        indexes = [
            models.Index(fields=["job", "number"], name="emailattempt_job_number"),
            # Stats and alerts: attempts by outcome over the last hour, the latest errors.
            models.Index(fields=["started_at", "outcome"], name="emailattempt_started_outcome"),
            # The latest errors, found fast even when errors are rare (0.04 ms vs 120-280 ms on
            # PostgreSQL with a million attempts).
            models.Index(
                fields=["started_at"],
                name="emailattempt_errors",
                condition=Q(outcome__in=["retry", "failed", "deferred", "lost"]),
            ),
        ]

    def __str__(self) -> str:
        return f"Attempt {self.number} of job #{self.job_id}: {self.outcome}"


class NotificationSettings(models.Model):
    """The one settings row. Empty fields fall back to the environment's defaults.

    Secrets are stored only encrypted (see crypto.py) and are set through services, never by
    assigning plaintext to a field.
    """

    SINGLETON_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_ID, editable=False)
    smtp_host = models.CharField("SMTP host", max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField("SMTP port", null=True, blank=True)
    smtp_username = models.CharField("SMTP username", max_length=255, blank=True)
    smtp_password_encrypted = models.TextField(blank=True, editable=False)
    from_email = models.CharField("from address", max_length=320, blank=True)
    use_tls = models.BooleanField("use STARTTLS", null=True, blank=True)
    use_ssl = models.BooleanField("use SSL/TLS", null=True, blank=True)
    timeout = models.FloatField("timeout (seconds)", null=True, blank=True)
    admin_emails = models.JSONField("alert e-mail addresses", default=list, blank=True)
    telegram_bot_token_encrypted = models.TextField(blank=True, editable=False)
    telegram_chat_id = models.CharField("Telegram chat id", max_length=64, blank=True)
    alert_failure_rate = models.FloatField(
        "alert above failure rate", default=0.10, help_text="A fraction: 0.10 is 10%."
    )
    alert_window_minutes = models.PositiveIntegerField("over the last (minutes)", default=60)
    alert_min_attempts = models.PositiveIntegerField("with at least this many attempts", default=20)
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        verbose_name = verbose_name_plural = "notification settings"
        constraints = [
            models.CheckConstraint(condition=Q(id=1), name="notificationsettings_singleton"),
            models.CheckConstraint(
                condition=~Q(use_tls=True, use_ssl=True), name="notificationsettings_tls_or_ssl"
            ),
            models.CheckConstraint(
                condition=Q(smtp_port__isnull=True) | Q(smtp_port__gte=1, smtp_port__lte=65535),
                name="notificationsettings_port_range",
            ),
        ]
        permissions = [("send_test_email", "Can send a test e-mail with the SMTP settings")]

    def __str__(self) -> str:
        return "Notification settings"

    @property
    def has_smtp_password(self) -> bool:
        return bool(self.smtp_password_encrypted)

    @property
    def has_telegram_token(self) -> bool:
        return bool(self.telegram_bot_token_encrypted)


class AuditLogEntry(models.Model):
    """Who touched the settings or their secrets, when and why. Never holds a secret's value."""

    class Action(models.TextChoices):
        DECRYPT = "decrypt", "Secret decrypted"
        CHANGE = "change", "Settings changed"
        TEST_SEND = "test_send", "Test e-mail sent"
        ROTATE = "rotate", "Encryption key rotated"
        IMPORT_ENV = "import_env", "Credentials imported from the environment"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=160, help_text="email_service, alerting, admin:<user>, cli")
    action = models.CharField(max_length=12, choices=Action.choices)
    purpose = models.CharField(max_length=255, blank=True)
    fields = models.JSONField(default=list, blank=True, help_text="Names only, never values.")
    outcome = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action}"


class AlertEvent(models.Model):
    """One alert or recovery notice, and how each channel took it: the alert history."""

    class Kind(models.TextChoices):
        FIRING = "firing", "Failure rate above the threshold"
        RECOVERED = "recovered", "Recovered"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    failure_rate = models.FloatField()
    attempts = models.PositiveIntegerField()
    threshold = models.FloatField()
    window_minutes = models.PositiveIntegerField()
    email_result = models.CharField(max_length=255, blank=True)
    telegram_result = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        when = f"{self.created_at:%Y-%m-%d %H:%M}"
        return f"{self.get_kind_display()} at {when} ({self.failure_rate:.0%})"

"""The admin: the settings page with write-only secrets, read-mostly jobs, a read-only audit log."""

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import Truncator
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from . import selectors, services, smtp_config
from .forms import SECRETS, NotificationSettingsForm, TestEmailForm
from .models import AuditLogEntry, EmailAttempt, EmailJob, NotificationSettings
from .test_email import send_test_email

SEND_TEST_EMAIL_PERMISSION = "notifications.send_test_email"
BODY_PREVIEW_CHARACTERS = 2000


def actor(request) -> str:
    return f"admin:{request.user.get_username()}"


def jobs(count: int) -> str:
    return f"{count} job{'' if count == 1 else 's'}"


class CappedCountPaginator(Paginator):
    """Counts at most `cap` rows: a COUNT(*) over every job on each page view does not scale.

    Past the cap the list shows "more than 10000" and its first 10000 rows; filters and search
    reach the rest.
    """

    cap = 10_000

    @cached_property
    def _counted(self) -> int:
        if not isinstance(self.object_list, QuerySet):
            return len(self.object_list)
        # COUNT over a LIMIT subquery, unordered: with the list's ORDER BY, SQLite walked the
        # whole table in that order to find the few rows of a rare status (1 s on a million).
        return self.object_list.order_by()[: self.cap + 1].count()

    @cached_property
    def count(self) -> int:
        return min(self._counted, self.cap)

    @property
    def capped(self) -> bool:
        return self._counted > self.cap


# --- Notification settings -------------------------------------------------------------------


def secret_inputs(name: str, stored: bool) -> tuple[str, ...]:
    return (name, f"clear_{name}") if stored else (name,)


@admin.register(NotificationSettings)
class NotificationSettingsAdmin(admin.ModelAdmin):
    """One change form for the one row; saving goes through smtp_config.update_settings."""

    form = NotificationSettingsForm
    readonly_fields = ("password_status", "token_status", "updated_at", "updated_by", "version")

    def get_fieldsets(self, request, obj=None):
        row = obj or NotificationSettings()
        if not self.has_change_permission(request, obj):  # view only: a status, no inputs
            password, token = ("password_status",), ("token_status",)
        else:  # a "clear" box only when there is something to clear
            password = secret_inputs("smtp_password", row.has_smtp_password)
            token = secret_inputs("telegram_bot_token", row.has_telegram_token)
        server = ("smtp_host", "smtp_port", "use_tls", "use_ssl", "timeout")
        alert_rule = ("alert_failure_rate", "alert_window_minutes", "alert_min_attempts")
        fieldsets = [
            ("SMTP server", {"fields": server}),
            ("Sign-in", {"fields": ("smtp_username", *password)}),
            ("Sender", {"fields": ("from_email",)}),
            ("Alerts", {"fields": ("admin_emails", *alert_rule, "telegram_chat_id", *token)}),
        ]
        if not row._state.adding:
            fieldsets.append(("Last change", {"fields": ("updated_at", "updated_by", "version")}))
        return fieldsets

    @admin.display(description="SMTP password")
    def password_status(self, row):
        return "A password is set." if row.has_smtp_password else "No password set."

    @admin.display(description="Telegram bot token")
    def token_status(self, row):
        return "A bot token is set." if row.has_telegram_token else "No bot token set."

    def has_add_permission(self, request):
        return False  # the one row is created by the first save of its change form

    def has_delete_permission(self, request, obj=None):
        return False

    def get_object(self, request, object_id, from_field=None):
        if str(object_id) != str(NotificationSettings.SINGLETON_ID):
            return None
        return smtp_config.load_row()  # unsaved, with the defaults, until the first save

    def settings_url(self) -> str:
        return reverse(
            f"{self.admin_site.name}:notifications_notificationsettings_change",
            args=[NotificationSettings.SINGLETON_ID],
        )

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return redirect(self.settings_url())

    @method_decorator(sensitive_post_parameters(*SECRETS))
    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {
            **(extra_context or {}),
            "can_send_test_email": request.user.has_perm(SEND_TEST_EMAIL_PERMISSION),
            "test_email_form": TestEmailForm(initial={"to": request.user.email}),
            "test_email_url": reverse(
                f"{self.admin_site.name}:notifications_notificationsettings_send_test_email"
            ),
        }
        return super().change_view(request, object_id, form_url, context)

    def save_model(self, request, obj, form, change):
        # The service saves, encrypts and audits; nothing here assigns a secret to the model.
        smtp_config.update_settings(
            actor=actor(request),
            changes=form.plain_changes(),
            smtp_password=form.secret("smtp_password"),
            telegram_bot_token=form.secret("telegram_bot_token"),
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.send_test_email_view)
        return [
            # Before the default URLs, whose "<object_id>/" would swallow this path.
            path(
                "send-test-email/",
                view,
                name="notifications_notificationsettings_send_test_email",
            ),
            *super().get_urls(),
        ]

    @method_decorator(require_POST)
    def send_test_email_view(self, request):
        if not request.user.has_perm(SEND_TEST_EMAIL_PERMISSION):
            raise PermissionDenied
        form = TestEmailForm(request.POST)
        if not form.is_valid():
            self.message_user(request, "Enter an address for the test e-mail.", messages.ERROR)
        else:
            result = send_test_email(to=form.cleaned_data["to"], actor=actor(request))
            self.message_user(
                request, result.message, messages.SUCCESS if result.ok else messages.ERROR
            )
        return redirect(self.settings_url())


# --- Jobs ------------------------------------------------------------------------------------


class EmailAttemptInline(admin.TabularInline):
    model = EmailAttempt
    fields = ("number", "started_at", "duration_seconds", "outcome", "smtp_code", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        # Attempts belong to their job: whoever may see the job sees them.
        opts = EmailJob._meta
        return any(
            request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")
            for action in ("view", "change")
        )

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


LIST_COLUMNS = ("id", "recipient", "subject", "status", "attempts", "created_at", "sent_at")


class EmailJobChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        # Only the listed columns: never the MIME bytes or bodies of a page of jobs. `to` is for
        # str(job), which each row's checkbox label shows: deferred, it cost a query a row.
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.only(*LIST_COLUMNS, "last_error", "to")


@admin.register(EmailJob)
class EmailJobAdmin(admin.ModelAdmin):
    """Jobs are read-only records; the actions retry or cancel them through the services."""

    list_display = (*LIST_COLUMNS[:2], "short_subject", *LIST_COLUMNS[3:], "short_last_error")
    list_filter = ("status", "created_at")
    # Newest first by creation, the order of the (created_at) and (status, created_at) indexes:
    # the first page of any filter reads 100 index entries. By -id, SQLite scanned the whole
    # table for a rare status, and sorted every job of a date range (0.3-2 s on a million).
    ordering = ("-created_at", "-id")
    sortable_by = ("created_at",)  # sorting a million jobs by another column takes seconds
    # A whole address or Message-ID goes to get_search_results' index lookup. Other text is
    # matched within these two, which the optional search index serves (search_index.py), or
    # is a Message-ID as it was stored. Not "=message_id": Django's "=" compares UPPER(...),
    # which no index serves, and that in the OR would leave the whole condition to a scan.
    search_fields = ("recipient", "subject")
    search_help_text = (
        "A whole address or Message-ID is looked up at once. Other text is searched for within "
        "recipients and subjects by reading every job, unless the search index is on "
        "(PostgreSQL: manage.py email_queue search-index --on): then text of three characters "
        "or more is found at once."
    )
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-filter counts are full scans too
    paginator = CappedCountPaginator
    actions = ("retry_failed", "cancel_pending")
    inlines = (EmailAttemptInline,)
    fieldsets = (
        ("Message", {"fields": ("message_id", "from_email", "to", "cc", "bcc", "reply_to")}),
        ("Content", {"fields": ("subject", "body_preview", "html_size", "attachments", "headers")}),
        ("Delivery", {"fields": ("status", "attempts", "next_attempt_at", "last_smtp_code")}),
        ("Server replies", {"fields": ("last_error", "smtp_response", "refused_recipients")}),
        ("Envelope", {"fields": ("envelope_from", "envelope_recipients", "message_size")}),
        ("Times", {"fields": ("created_at", "updated_at", "sent_at")}),
    )
    readonly_fields = ("body_preview", "html_size", "message_size")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("mime_message")

    def get_changelist(self, request, **kwargs):
        return EmailJobChangeList

    def get_search_results(self, request, queryset, search_term):
        # An address or Message-ID by its own index; other text through search_fields.
        found = selectors.jobs_with_address(queryset, search_term)
        if found is not None:
            return found, False
        matched, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term.strip():  # a sender's own Message-ID need not look like an address
            matched |= queryset.filter(message_id=search_term.strip())
        return matched, duplicates

    def has_add_permission(self, request):
        return False  # jobs come from send_mail(), never from a form

    def has_change_permission(self, request, obj=None):
        # The list's actions need "change"; a job's own fields are never edited.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False  # a job is a record of what was sent; old ones are purged, not deleted

    @admin.display(description="subject", ordering="subject")
    def short_subject(self, job):
        return Truncator(job.subject).chars(60)

    @admin.display(description="last error")
    def short_last_error(self, job):
        return Truncator(job.last_error).chars(80)

    @admin.display(description=f"body (first {BODY_PREVIEW_CHARACTERS} characters)")
    def body_preview(self, job):
        body = Truncator(job.body).chars(BODY_PREVIEW_CHARACTERS)
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', body) if body else "-"

    @admin.display(description="HTML body")
    def html_size(self, job):
        return f"{len(job.html_body)} characters (not shown)" if job.html_body else "-"

    @admin.display(description="MIME message")
    def message_size(self, job):
        if job.layout:  # rendered by the worker; the size is that of the subject and bodies
            return f"about {filesizeformat(job.size_bytes)}, rendered when sent; not shown"
        return f"{filesizeformat(job.size_bytes)}; not shown"

    @admin.action(description="Retry failed jobs", permissions=["change"])
    def retry_failed(self, request, queryset):
        selected = list(queryset.values_list("pk", flat=True))
        retried = services.retry_jobs(job_ids=selected)
        self._report(request, retried, len(selected), "queued again", "not failed")

    @admin.action(description="Cancel pending jobs", permissions=["change"])
    def cancel_pending(self, request, queryset):
        selected = list(queryset.values_list("pk", flat=True))
        cancelled = services.cancel_jobs(job_ids=selected)
        self._report(request, cancelled, len(selected), "cancelled", "not pending")

    def _report(self, request, done: int, selected: int, what: str, why_not: str) -> None:
        text = f"{jobs(done)} {what}."
        if selected > done:
            text += f" {jobs(selected - done)} {why_not}, left as they were."
        self.message_user(request, text, messages.SUCCESS if done else messages.WARNING)


# --- Audit log -------------------------------------------------------------------------------


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: the log is only ever appended to."""

    list_display = ("created_at", "actor", "action", "purpose", "field_names", "outcome")
    list_filter = ("action", "actor")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="fields")
    def field_names(self, entry):
        return ", ".join(entry.fields)

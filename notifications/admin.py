"""The admin: the settings page with write-only secrets and the test e-mail."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from . import smtp_config
from .forms import SECRETS, NotificationSettingsForm, TestEmailForm
from .models import NotificationSettings
from .test_email import send_test_email

SEND_TEST_EMAIL_PERMISSION = "notifications.send_test_email"


def actor(request) -> str:
    return f"admin:{request.user.get_username()}"


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

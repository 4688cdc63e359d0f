"""Admin forms: the notification settings, whose secrets are write-only, and the test e-mail."""

import re

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html

from . import smtp_config
from .composition import envelope_address
from .exceptions import EmailRejected
from .models import NotificationSettings

# form field -> (model property saying one is stored, what to call it)
SECRETS = {
    "smtp_password": ("has_smtp_password", "password"),
    "telegram_bot_token": ("has_telegram_token", "bot token"),
}


def secret_field(label: str) -> forms.CharField:
    """A write-only input: never rendered back, revealed only by the toggle while typing."""
    return forms.CharField(
        label=label,
        required=False,
        strip=False,
        widget=forms.PasswordInput(
            render_value=False,
            # new-password: browsers must not fill in the admin's own login password here.
            attrs={"autocomplete": "new-password", "spellcheck": "false", "data-secret-toggle": ""},
        ),
    )


def on_off_default(label: str) -> forms.TypedChoiceField:
    """Yes, no, or blank for the environment's default (the choices are labelled in __init__)."""
    return forms.TypedChoiceField(
        label=label, required=False, coerce=lambda value: value == "True", empty_value=None
    )


class NotificationSettingsForm(forms.ModelForm):
    smtp_port = forms.IntegerField(label="SMTP port", required=False, min_value=1, max_value=65535)
    use_tls = on_off_default("Use STARTTLS")
    use_ssl = on_off_default("Use SSL/TLS")
    timeout = forms.FloatField(label="Timeout (seconds)", required=False, min_value=0.1)
    smtp_password = secret_field("SMTP password")
    clear_smtp_password = forms.BooleanField(label="Clear the stored password", required=False)
    admin_emails = forms.CharField(
        label="Alert e-mail addresses",
        required=False,
        help_text="Separated by commas.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    alert_failure_rate = forms.FloatField(
        label="Alert above failure rate",
        min_value=0,
        max_value=1,
        help_text="A fraction: 0.10 is 10%.",
    )
    telegram_bot_token = secret_field("Telegram bot token")
    clear_telegram_bot_token = forms.BooleanField(
        label="Clear the stored bot token", required=False
    )

    class Meta:
        model = NotificationSettings
        fields = smtp_config.PLAIN_FIELDS

    class Media:
        js = ("notifications/secret_toggle.js",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial["admin_emails"] = ", ".join(self.instance.admin_emails or [])
        self._describe_defaults(smtp_config.environment_defaults())
        for name, (has_one, what) in SECRETS.items():
            stored = getattr(self.instance, has_one)
            self.fields[name].help_text = (
                f"A {what} is set. Leave blank to keep it; type a new one to replace it."
                if stored
                else f"No {what} set."
            )
            if not stored:
                del self.fields[f"clear_{name}"]

    def _describe_defaults(self, defaults) -> None:
        """Blank fields fall back to the environment: show its values where they apply."""
        for name, value in (
            ("smtp_host", defaults.host),
            ("smtp_port", defaults.port),
            ("from_email", defaults.from_email),
            ("timeout", defaults.timeout),
        ):
            if name not in self.fields:  # a view-only form has none
                continue
            self.fields[name].widget.attrs["placeholder"] = value
            # The admin renders help text as HTML: escape the value.
            self.fields[name].help_text = format_html(
                "Blank: the environment's default, {}.", value
            )
        for name, value in (("use_tls", defaults.use_tls), ("use_ssl", defaults.use_ssl)):
            if name not in self.fields:
                continue
            self.fields[name].choices = [
                ("", f"Environment default ({'on' if value else 'off'})"),
                ("True", "On"),
                ("False", "Off"),
            ]

    def clean_admin_emails(self) -> list[str]:
        text = self.cleaned_data["admin_emails"]
        addresses = [part.strip() for part in re.split(r"[,;\n]", text) if part.strip()]
        errors = []
        for address in addresses:
            try:
                envelope_address("address", address)
            except EmailRejected as error:
                errors.append(str(error))
        if errors:
            raise ValidationError(errors)
        return addresses

    def clean(self):
        cleaned = super().clean()
        for name in SECRETS:
            if cleaned.get(name) and cleaned.get(f"clear_{name}"):
                self.add_error(
                    f"clear_{name}", "Either type a new value or clear the stored one, not both."
                )
        plain = {name: cleaned[name] for name in smtp_config.PLAIN_FIELDS if name in cleaned}
        try:  # the service's own rules, so the form and the command line agree
            smtp_config.validate_changes(plain)
        except ValidationError as error:
            for name, messages in error.message_dict.items():
                if name in cleaned:
                    self.add_error(name, messages)
        return cleaned

    def plain_changes(self) -> dict:
        return {name: self.cleaned_data[name] for name in smtp_config.PLAIN_FIELDS}

    def secret(self, name: str):
        """What update_settings takes for one secret: CLEAR, a new value, or None to keep it."""
        if self.cleaned_data.get(f"clear_{name}"):
            return smtp_config.CLEAR
        return self.cleaned_data.get(name) or None


class TestEmailForm(forms.Form):
    __test__ = False  # not a pytest test class, despite the name

    to = forms.CharField(
        label="Send a test e-mail to",
        max_length=320,
        widget=forms.EmailInput(attrs={"size": 40, "autocomplete": "email"}),
    )

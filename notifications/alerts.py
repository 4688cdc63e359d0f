"""Failure-rate alerts: evaluated from beat, sent by e-mail and Telegram, kept as history.

An alert fires when, over the settings' window, there were at least `alert_min_attempts`
attempts and more than `alert_failure_rate` of them failed, or while sending is paused because
the SMTP server is unreachable or refuses our credentials (the circuit breaker). While it keeps
firing it is repeated at most once per EMAIL_ALERT_COOLDOWN; when it stops, a "recovered" notice
goes out.
A channel that fails is logged and recorded; it never raises into beat.
"""

import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import timezone

from . import selectors, smtp_config, throttle
from .conf import option
from .models import AlertEvent, NotificationSettings

logger = logging.getLogger(__name__)
ACTOR = "alerting"


def evaluate_alerts(*, now=None) -> AlertEvent | None:
    """Send an alert or a recovery notice if one is due; returns the event recorded, if any."""
    now = now or timezone.now()
    row = smtp_config.load_row()
    window = timedelta(minutes=row.alert_window_minutes)
    outcomes = selectors.attempt_outcomes(window)
    attempts, rate = sum(outcomes.values()), selectors.failure_rate(outcomes)
    pauses = throttle.pauses()
    firing = (attempts >= row.alert_min_attempts and rate > row.alert_failure_rate) or pauses[
        "circuit_open"
    ]
    last = AlertEvent.objects.first()
    was_firing = last is not None and last.kind == AlertEvent.Kind.FIRING
    cooled = last is None or now - last.created_at >= timedelta(seconds=option("ALERT_COOLDOWN"))
    if firing and (not was_firing or cooled):
        kind = AlertEvent.Kind.FIRING
    elif not firing and was_firing:
        kind = AlertEvent.Kind.RECOVERED
    else:
        return None
    event = AlertEvent(
        kind=kind,
        failure_rate=rate,
        attempts=attempts,
        threshold=row.alert_failure_rate,
        window_minutes=row.alert_window_minutes,
    )
    context = {
        "event": event,
        "outcomes": outcomes,
        "errors": selectors.recent_errors(5),
        "pauses": pauses,
    }
    event.email_result = _send_email(row, context)
    event.telegram_result = _send_telegram(row, context)
    event.save()
    logger.warning(
        "alert %s: failure rate %.1f%% over %d attempts (threshold %.1f%%); email: %s; "
        "telegram: %s",
        kind,
        rate * 100,
        attempts,
        row.alert_failure_rate * 100,
        event.email_result,
        event.telegram_result,
    )
    return event


def _recipients(row: NotificationSettings) -> list[str]:
    return list(row.admin_emails) or list(settings.ADMIN_EMAILS)


def _send_email(row: NotificationSettings, context: dict) -> str:
    recipients = _recipients(row)
    if not recipients:
        return "skipped: no admin e-mail addresses"
    name = f"notifications/email/alert_{context['event'].kind}"
    try:
        message = EmailMultiAlternatives(
            subject=render_to_string(f"{name}_subject.txt", context).strip(),
            body=render_to_string(f"{name}.txt", context),
            to=recipients,
            from_email=smtp_config.default_from_email(),
        )
        message.attach_alternative(render_to_string(f"{name}.html", context), "text/html")
        message.send()
    except Exception as error:  # an alert that cannot be queued is logged, not raised
        logger.exception("could not queue the alert e-mail")
        return f"failed: {type(error).__name__}"
    return f"queued for {len(recipients)} address(es)"


def _send_telegram(row: NotificationSettings, context: dict) -> str:
    if not (row.has_telegram_token and row.telegram_chat_id):
        return "skipped: no Telegram bot token or chat id"
    try:
        token = smtp_config.decrypt_secret(
            row.telegram_bot_token_encrypted,
            smtp_config.TELEGRAM_CONTEXT,
            actor=ACTOR,
            purpose="failure-rate alert",
        )
        text = render_to_string(
            f"notifications/telegram/alert_{context['event'].kind}.txt", context
        )
        base = option("TELEGRAM_API_BASE_URL").rstrip("/")
        if not base.startswith(("https://", "http://")):
            return "failed: TELEGRAM_API_BASE_URL must be an http(s) URL"
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            f"{base}/bot{token}/sendMessage",
            data=json.dumps({"chat_id": row.telegram_chat_id, "text": text}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:  # its text never holds the URL, hence the token
        logger.error("Telegram alert refused: HTTP %s", error.code)
        return f"failed: HTTP {error.code}"
    except Exception as error:  # never let the token into the log: report the type only
        logger.error("Telegram alert failed: %s", type(error).__name__)
        return f"failed: {type(error).__name__}"
    return "sent" if answer.get("ok") else f"failed: {answer.get('description', 'no ok')}"[:255]

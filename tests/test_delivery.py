"""End to end: send_mail() in this process, real Celery workers, the real SMTP server."""

import time
from datetime import timedelta
from email.utils import mktime_tz, parsedate_tz
from itertools import pairwise

import pytest
from django.core.mail import EmailMultiAlternatives, send_mail, send_mass_mail

from notifications import delivery, publishing, services
from notifications.models import EmailJob
from tests.factories import make_message
from tests.support.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
Status = EmailJob.Status


def wait_for_settled(count: int, timeout: float = 60) -> None:
    def settled():
        return EmailJob.objects.filter(status__in=[Status.SENT, Status.FAILED]).count() >= count

    wait_until(settled, timeout, 0.1, f"{count} jobs to be sent or failed")


def test_200_messages_arrive_exactly_once(start_worker, smtp):
    start_worker(concurrency=2)
    for i in range(200):
        send_mail(f"Message {i}", "Body", "from@example.org", [f"user{i}@example.org"])
    wait_for_settled(200)
    job_ids = set(EmailJob.objects.values_list("message_id", flat=True))
    assert EmailJob.objects.filter(status=Status.SENT).count() == 200
    assert smtp.by_message_id() == dict.fromkeys(job_ids, 1)
    assert set(EmailJob.objects.values_list("attempts", flat=True)) == {1}


def test_send_mail_while_a_worker_drains_publishes_almost_nothing(
    start_worker, smtp, monkeypatch, settings
):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "WAKE_QUEUE_DEPTH": 1000}  # not that
    published = []
    real_publish = publishing.publish_jobs
    monkeypatch.setattr(
        publishing,
        "publish_jobs",
        lambda ids, **kw: published.extend(ids) or real_publish(ids, **kw),
    )
    smtp.accept_delay = 0.02  # a relay: the worker drains for as long as we enqueue
    start_worker(concurrency=1)
    for i in range(100):
        send_mail(f"Message {i}", "Body", "from@example.org", [f"user{i}@example.org"])
    wait_for_settled(100)
    assert EmailJob.objects.filter(status=Status.SENT).count() == 100
    assert len(smtp.by_message_id()) == 100 and smtp.count() == 100
    assert len(published) < 30, published  # not one task per message


def test_a_worker_that_finds_a_backlog_calls_in_the_others(start_worker, smtp, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BATCH_SIZE": 1000}  # one wake-up only
    smtp.accept_delay = 0.05
    start_worker(concurrency=4, EMAIL_BATCH_SIZE="10")
    send_mass_mail(
        [(f"M {i}", "Body", "from@example.org", [f"u{i}@example.org"]) for i in range(80)]
    )
    wait_for_settled(80)
    assert EmailJob.objects.filter(status=Status.SENT).count() == 80
    assert smtp.count() == 80 and len(smtp.by_message_id()) == 80
    assert smtp.greetings >= 3  # connections: more than the one process woken at first


def test_451_twice_then_accepted_is_sent_on_the_third_attempt(start_worker, smtp):
    start_worker(concurrency=1, EMAIL_RETRY_DELAYS="0.5,1")
    smtp.data_replies.extend(["451 4.3.0 busy", "451 4.3.0 still busy"])
    send_mail("Retry me", "Body", "from@example.org", ["to@example.org"])
    wait_for_settled(1, timeout=30)
    job = EmailJob.objects.get()
    assert (job.status, job.attempts) == (Status.SENT, 3)
    attempts = list(job.attempt_log.all())
    assert [a.outcome for a in attempts] == ["retry", "retry", "sent"]
    assert [a.smtp_code for a in attempts] == [451, 451, 250]
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in pairwise(attempts)]
    assert gaps[0] >= 0.8 * 0.5 and gaps[1] >= 0.8 * 1.0, gaps
    assert gaps[0] < 5 and gaps[1] < 5, gaps  # the countdown, not a sweep, brought them back
    assert smtp.count() == 1


def test_550_fails_after_one_attempt_keeping_code_and_text(start_worker, smtp):
    start_worker(concurrency=1)
    smtp.refused["nobody@example.org"] = "550 5.1.1 No such user here"
    send_mail("Refused", "Body", "from@example.org", ["nobody@example.org"])
    wait_for_settled(1)
    job = EmailJob.objects.get()
    assert (job.status, job.attempts, job.last_smtp_code) == (Status.FAILED, 1, 550)
    assert "No such user here" in job.last_error
    assert job.refused_recipients == {"nobody@example.org": [550, "5.1.1 No such user here"]}
    assert smtp.count() == 0


def test_mixed_recipients_are_sent_to_the_accepted_and_the_refused_are_recorded(start_worker, smtp):
    start_worker(concurrency=1)
    smtp.refused["gone@example.org"] = "550 5.1.1 Mailbox gone"
    send_mail("Mixed", "Body", "from@example.org", ["here@example.org", "gone@example.org"])
    wait_for_settled(1)
    job = EmailJob.objects.get()
    assert (job.status, job.attempts) == (Status.SENT, 1)
    assert job.refused_recipients == {"gone@example.org": [550, "5.1.1 Mailbox gone"]}
    assert "gone@example.org: 550" in job.last_error
    (received,) = smtp.messages
    assert received.rcpt_tos == ["here@example.org"]


def test_everything_a_message_carries_arrives_intact(start_worker, smtp):
    start_worker(concurrency=1)
    message = EmailMultiAlternatives(
        subject="Grüße, Zoë — 日本語",
        body="Plain text: naïve café\n",
        from_email="Zoë Sender <sender@example.org>",
        to=["Jürgen Empfänger <juergen@bücher.example>"],
        cc=["cc@example.org"],
        bcc=["hidden@example.org"],
        reply_to=["Réponse <reply@example.org>"],
        headers={"X-Campaign": "spring-2026", "List-Unsubscribe": "<mailto:u@example.org>"},
    )
    message.attach_alternative("<p>HTML: <b>naïve</b> café</p>", "text/html")
    pdf = bytes(range(256)) * 40
    message.attach("résumé.pdf", pdf, "application/pdf")
    message.attach("notes.txt", "Notizen: Übermut\n", "text/plain")
    message.send()
    wait_for_settled(1)
    job = EmailJob.objects.get()
    assert job.status == Status.SENT
    assert job.layout == EmailJob.Layout.RENDERED and job.mime_message  # attachments: at enqueue
    (received,) = smtp.messages
    parsed = received.message
    assert sorted(received.rcpt_tos) == sorted(
        ["juergen@xn--bcher-kva.example", "cc@example.org", "hidden@example.org"]
    )
    assert received.mail_from == "sender@example.org"
    assert parsed["Subject"] == "Grüße, Zoë — 日本語"
    assert parsed["From"].addresses[0].display_name == "Zoë Sender"
    assert parsed["To"].addresses[0].display_name == "Jürgen Empfänger"
    assert parsed["Cc"] == "cc@example.org"
    assert parsed["Bcc"] is None
    assert parsed["Reply-To"].addresses[0].display_name == "Réponse"
    assert parsed["X-Campaign"] == "spring-2026"
    assert parsed["Message-ID"] == job.message_id
    assert parsed.get_body(("plain",)).get_content() == "Plain text: naïve café\n"
    assert parsed.get_body(("html",)).get_content() == "<p>HTML: <b>naïve</b> café</p>"
    attachments = {part.get_filename(): part for part in parsed.iter_attachments()}
    assert attachments["résumé.pdf"].get_content() == pdf
    assert attachments["notes.txt"].get_content() == "Notizen: Übermut\n"


def test_a_simple_message_is_rendered_by_the_worker_dated_when_queued(start_worker, smtp):
    message = EmailMultiAlternatives(
        subject="Grüße, Zoë — 日本語 ✓",
        body="Plain: naïve café\n",
        from_email="Zoë Sender <sender@example.org>",
        to=["Jürgen <juergen@example.org>"],
        headers={"List-Unsubscribe": "<mailto:u@example.org>"},
    )
    message.attach_alternative("<p>naïve café</p>", "text/html")
    message.send()
    job = EmailJob.objects.get()
    assert (job.layout, job.mime_message) == (EmailJob.Layout.PLAIN_HTML, b"")
    time.sleep(1.1)  # sent a second later at least: the Date is still the enqueue time
    start_worker(concurrency=1)
    wait_for_settled(1)
    job.refresh_from_db()
    assert job.status == Status.SENT and job.sent_at - job.created_at > timedelta(seconds=1)
    (received,) = smtp.messages
    parsed = received.message
    assert parsed["Message-ID"] == job.message_id
    assert mktime_tz(parsedate_tz(parsed["Date"])) == int(job.created_at.timestamp())
    assert parsed["Subject"] == "Grüße, Zoë — 日本語 ✓"
    assert parsed["From"].addresses[0].display_name == "Zoë Sender"
    assert parsed["List-Unsubscribe"] == "<mailto:u@example.org>"
    assert parsed.get_body(("plain",)).get_content() == "Plain: naïve café\n"
    assert parsed.get_body(("html",)).get_content() == "<p>naïve café</p>"


def test_a_job_whose_fields_cannot_be_rendered_fails_and_nothing_is_sent(smtp, broker):
    job = services.enqueue_email(message=make_message())
    assert job.layout
    EmailJob.objects.filter(pk=job.pk).update(headers={"X-Broken": "a\nBcc: x@example.org"})
    assert delivery.deliver_job(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.FAILED, 1)
    assert job.last_error.startswith("the message cannot be rendered: ")
    assert [a.outcome for a in job.attempt_log.all()] == ["failed"]
    assert smtp.count() == 0 and smtp.greetings == 0


def test_send_mass_mail_delivers_each_message(start_worker, smtp):
    start_worker(concurrency=2)
    batch = [(f"Mass {i}", "Body", "from@example.org", [f"m{i}@example.org"]) for i in range(30)]
    assert send_mass_mail(batch) == 30
    wait_for_settled(30)
    assert smtp.count() == 30
    assert sorted(r.rcpt_tos[0] for r in smtp.messages) == sorted(
        f"m{i}@example.org" for i in range(30)
    )

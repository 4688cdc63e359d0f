"""Bad input is refused at enqueue with a clear error, and no job is written."""

import pytest
from django.core.mail import BadHeaderError, EmailMessage, send_mail, send_mass_mail

from notifications import services
from notifications.composition import wire_message
from notifications.exceptions import (
    EmailRejected,
    HeaderInjection,
    InvalidAddress,
    MessageTooLarge,
    NoRecipients,
)
from notifications.models import EmailJob

pytestmark = pytest.mark.django_db

GOOD = "user@example.org"


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"to": ["not-an-address"]}, InvalidAddress, "not a valid e-mail address"),
        ({"to": ["a@b"]}, InvalidAddress, "not a valid e-mail address"),
        ({"to": ["jöhn@example.org"]}, InvalidAddress, "non-ASCII local part"),
        ({"to": ["x" * 65 + "@example.org"]}, InvalidAddress, "longer than 64"),
        ({"to": [""]}, InvalidAddress, "expected an e-mail address"),
        ({"to": [None]}, InvalidAddress, "expected an e-mail address"),
        ({"cc": ["bad@@example.org"]}, InvalidAddress, "cc"),
        ({"bcc": ["bad address@example.org"]}, InvalidAddress, "bcc"),
        ({"reply_to": ["nope"]}, InvalidAddress, "reply_to"),
        ({"from_email": "nobody"}, InvalidAddress, "from_email"),
        ({"to": [f"{GOOD}\r\nBcc: victim@evil.test"]}, HeaderInjection, "newline"),
        ({"from_email": f"{GOOD}\nBcc: victim@evil.test"}, HeaderInjection, "newline"),
        ({"subject": "Hello\r\nBcc: victim@evil.test"}, HeaderInjection, "subject"),
        ({"subject": "Hello\nX-Evil: 1"}, HeaderInjection, "subject"),
        ({"headers": {"X-Note": "a\r\nBcc: victim@evil.test"}}, HeaderInjection, "X-Note"),
        ({"headers": {"X-A\nBcc": "v"}}, HeaderInjection, "header name"),
        ({"to": [], "cc": [], "bcc": []}, NoRecipients, "no recipients"),
        ({"body": b"bytes are not text"}, EmailRejected, "body must be text"),
        ({"subject": 42}, EmailRejected, "subject must be text"),
    ],
)
def test_bad_input_is_refused_and_writes_no_job(kwargs, error, text):
    fields = {"subject": "s", "body": "b", "from_email": "from@example.org", "to": [GOOD], **kwargs}
    with pytest.raises(error, match=text):
        services.enqueue_email(message=EmailMessage(**fields))
    assert EmailJob.objects.count() == 0


def test_send_without_recipients_is_a_no_op_as_in_django():
    # EmailMessage.send() returns 0 before reaching any backend when nobody is addressed.
    assert EmailMessage("s", "b", "from@example.org", [""]).send() == 0
    assert EmailJob.objects.count() == 0


def test_invalid_address_through_send_mail_raises():
    with pytest.raises(InvalidAddress, match="'not-an-address' is not a valid e-mail address"):
        send_mail("s", "b", "from@example.org", ["not-an-address"])
    assert EmailJob.objects.count() == 0


def test_header_injection_is_also_a_django_bad_header_error():
    with pytest.raises(BadHeaderError):
        send_mail("Hi\nBcc: x@evil.test", "body", "from@example.org", [GOOD])
    assert EmailJob.objects.count() == 0


def test_a_string_instead_of_a_list_of_recipients_is_refused():
    message = EmailMessage("s", "b", "from@example.org", [GOOD])
    message.to = GOOD  # a common mistake, set after construction where Django does not check
    with pytest.raises(InvalidAddress, match="list or tuple"):
        services.enqueue_email(message=message)
    assert EmailJob.objects.count() == 0


def test_oversized_message_is_refused(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "MAX_MESSAGE_BYTES": 50_000}
    message = EmailMessage("big", "x", "from@example.org", [GOOD])
    message.attach("big.bin", b"\0" * 60_000, "application/octet-stream")
    with pytest.raises(MessageTooLarge, match="over the limit of 50000 bytes"):
        message.send()
    assert EmailJob.objects.count() == 0


def test_one_bad_message_in_a_mass_send_writes_none_of_them():
    batch = [("s", "b", "from@example.org", [f"user{i}@example.org"]) for i in range(5)]
    batch.append(("s", "b", "from@example.org", ["broken"]))
    with pytest.raises(InvalidAddress):
        send_mass_mail(batch)
    assert EmailJob.objects.count() == 0


def test_fail_silently_returns_zero_and_writes_nothing():
    assert send_mail("s", "b", "from@example.org", ["broken"], fail_silently=True) == 0
    assert EmailJob.objects.count() == 0


@pytest.mark.parametrize(
    "address",
    ["user@bücher.example", "Zoë Ünicode <zoe@example.org>", "user+tag@sub.example.org"],
)
def test_valid_unusual_addresses_are_accepted(address):
    assert send_mail("s", "b", "from@example.org", [address]) == 1
    job = EmailJob.objects.get()
    assert all(a.isascii() for a in job.envelope_recipients)


def test_a_message_id_already_queued_is_refused_clearly():
    services.enqueue_email(
        message=EmailMessage("s", "b", to=[GOOD], headers={"Message-ID": "<x@y>"})
    )
    again = EmailMessage("s", "b", to=[GOOD], headers={"Message-ID": "<x@y>"})
    with pytest.raises(EmailRejected, match=r"Message-ID <x@y> is already queued as job \d+"):
        services.enqueue_email(message=again)
    with pytest.raises(EmailRejected, match=r"Message-ID <x@y> is already queued"):  # many rows
        services.enqueue_emails(messages=[EmailMessage("s", "b", to=[GOOD]), again])
    twice = [EmailMessage("s", "b", to=[GOOD], headers={"Message-ID": "<z@y>"}) for _ in range(2)]
    with pytest.raises(EmailRejected, match="given to two messages"):
        services.enqueue_emails(messages=twice)
    assert EmailJob.objects.count() == 1


def test_attachment_content_of_the_wrong_type_is_refused():
    message = EmailMessage("s", "b", to=[GOOD])
    message.attachments.append(("n.txt", 42, "text/plain"))
    with pytest.raises(EmailRejected, match="content must be text or bytes, not int"):
        services.enqueue_email(message=message)
    assert EmailJob.objects.count() == 0


def test_a_missing_subject_is_sent_empty_not_as_none():
    job = services.enqueue_email(message=EmailMessage(None, None, to=[GOOD]))
    assert b"Subject: None" not in wire_message(job)
    assert job.subject == "" and job.body == ""

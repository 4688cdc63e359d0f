"""Scenario 10: bad input. Each case is a clear error (EmailRejected or Django's BadHeaderError)
and no job, or a complete job that a worker then delivers; never another exception, never half a
job. Inputs go through Django's public API (EmailMessage.send / send_mass_mail).
"""

import email
import email.policy

import pytest
from django.core.mail import (
    BadHeaderError,
    EmailMessage,
    EmailMultiAlternatives,
    get_connection,
    send_mass_mail,
)

from notifications.composition import wire_message
from notifications.exceptions import (
    EmailRejected,
    HeaderInjection,
    InvalidAddress,
    MessageTooLarge,
    NoRecipients,
)
from notifications.models import EmailJob
from tests.faults.helpers import wait_drained

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]
GOOD = "user@example.org"
LIMIT = 100_000  # MAX_MESSAGE_BYTES for these tests
ACCEPT = "accept"


def message(**changes) -> EmailMessage:
    """A valid message with `changes`; what Django's constructor would refuse is set after it."""
    after = {
        name: changes.pop(name)
        for name in ("to", "cc", "bcc", "reply_to")
        if name in changes and not isinstance(changes[name], list)
    }
    attachments = changes.pop("attachments", [])
    html = changes.pop("html", None)
    fields = {"subject": "s", "body": "b\n", "from_email": "from@example.org", "to": [GOOD]}
    built = EmailMultiAlternatives(**(fields | changes))
    for name, value in after.items():
        setattr(built, name, value)
    for attachment in attachments:
        built.attachments.append(attachment)
    if html is not None:
        built.attach_alternative(html, "text/html")
    return built


def to(address) -> dict:
    return {"to": [address]}


CASES = {
    # Addresses: malformed ---------------------------------------------------------------------
    "no at sign": (to("not-an-address"), InvalidAddress),
    "no dot in domain": (to("a@b"), InvalidAddress),
    "empty local part": (to("@example.org"), InvalidAddress),
    "empty domain": (to("user@"), InvalidAddress),
    "two at signs": (to("user@@example.org"), InvalidAddress),
    "space in local part": (to("user name@example.org"), InvalidAddress),
    "space in domain": (to("user@exa mple.org"), InvalidAddress),
    "non-ASCII local part": (to("jöhn@example.org"), InvalidAddress),
    "local part of 65": (to("x" * 65 + "@example.org"), InvalidAddress),
    "domain label of 64": (to("user@" + "a" * 64 + ".org"), InvalidAddress),
    "domain starting with a hyphen": (to("user@-example.org"), InvalidAddress),
    "angle brackets in local part": (to("<script>@example.org"), InvalidAddress),
    "bad IP literal": (to("user@[999.1.1.1]"), InvalidAddress),
    "quoted local part": (to('"quoted local"@example.org'), InvalidAddress),
    "NUL in address": (to("us\x00er@example.org"), InvalidAddress),
    "empty address": (to(""), InvalidAddress),
    "None as address": (to(None), InvalidAddress),
    "empty address beside a good one": ({"to": [""], "cc": [GOOD]}, InvalidAddress),
    "no recipients at all": ({"to": [], "cc": [], "bcc": []}, NoRecipients),
    "number as address": (to(42), InvalidAddress),
    "bytes as address": (to(b"user@example.org"), InvalidAddress),
    "string instead of list": ({"to": GOOD}, InvalidAddress),
    "None instead of list": ({"to": None}, InvalidAddress),
    "bad cc": ({"cc": ["bad@@example.org"]}, InvalidAddress),
    "bad bcc": ({"bcc": ["bad address@example.org"]}, InvalidAddress),
    "bad reply_to": ({"reply_to": ["nope"]}, InvalidAddress),
    "bad from": ({"from_email": "nobody"}, InvalidAddress),
    # Addresses: unusual but valid -------------------------------------------------------------
    "IDN domain": (to("user@bücher.example"), ACCEPT),
    "IDN domain, Japanese": (to("user@例え.jp"), ACCEPT),
    "punycode domain": (to("user@xn--bcher-kva.example"), ACCEPT),
    "unicode display name": (to("Zoë Ünicode <zoe@example.org>"), ACCEPT),
    "plus tag and subdomain": (to("user+tag@sub.example.org"), ACCEPT),
    "upper case": (to("USER@EXAMPLE.ORG"), ACCEPT),
    "IP literal": (to("user@[127.0.0.1]"), ACCEPT),
    "same recipient twice": ({"to": [GOOD, GOOD]}, ACCEPT),
    "500 recipients": ({"to": [f"r{i}@example.org" for i in range(500)]}, ACCEPT),
    "empty from uses DEFAULT_FROM_EMAIL": ({"from_email": ""}, ACCEPT),
    # Header injection, in every header ----------------------------------------------------------
    "CRLF in subject": ({"subject": "Hi\r\nBcc: victim@evil.test"}, HeaderInjection),
    "LF in subject": ({"subject": "Hi\nBcc: victim@evil.test"}, HeaderInjection),
    "CR in subject": ({"subject": "Hi\rBcc: victim@evil.test"}, HeaderInjection),
    "CRLF in to": (to(f"{GOOD}\r\nBcc: victim@evil.test"), HeaderInjection),
    "LF in cc": ({"cc": [f"{GOOD}\nBcc: victim@evil.test"]}, HeaderInjection),
    "CR in bcc": ({"bcc": [f"{GOOD}\rBcc: victim@evil.test"]}, HeaderInjection),
    "CRLF in reply_to": ({"reply_to": [f"{GOOD}\r\nBcc: victim@evil.test"]}, HeaderInjection),
    "LF in from": ({"from_email": f"{GOOD}\nBcc: victim@evil.test"}, HeaderInjection),
    "CRLF in a display name": (
        to('"Evil\r\nBcc: victim@evil.test" <a@example.org>'),
        HeaderInjection,
    ),
    "CRLF in an extra header": (
        {"headers": {"X-Note": "a\r\nBcc: victim@evil.test"}},
        HeaderInjection,
    ),
    "LF in a header name": ({"headers": {"X-A\nBcc": "v"}}, HeaderInjection),
    "CRLF in Message-ID": (
        {"headers": {"Message-ID": "<a@x>\r\nBcc: victim@evil.test"}},
        HeaderInjection,
    ),
    "LF in a Reply-To header": (
        {"headers": {"Reply-To": "a@example.org\nBcc: v@evil.test"}},
        HeaderInjection,
    ),
    "LF in a From header": (
        {"headers": {"From": "a@example.org\nBcc: v@evil.test"}},
        HeaderInjection,
    ),
    # Sizes --------------------------------------------------------------------------------------
    "body over the limit": ({"body": "x" * (LIMIT + 1)}, MessageTooLarge),
    "attachment over the limit": (
        {"attachments": [("big.bin", b"\0" * LIMIT, "application/octet-stream")]},
        MessageTooLarge,
    ),
    "many attachments over the limit": (
        {
            "attachments": [
                (f"{i}.bin", b"\1" * 9000, "application/octet-stream") for i in range(12)
            ]
        },
        MessageTooLarge,
    ),
    "long subject": ({"subject": "word " * 200}, ACCEPT),
    "10,000-character line": ({"body": "y" * 10_000}, ACCEPT),
    # Types --------------------------------------------------------------------------------------
    "number as subject": ({"subject": 42}, EmailRejected),
    "bytes as body": ({"body": b"bytes are not text"}, EmailRejected),
    "bytes as HTML": ({"html": b"<p>bytes</p>"}, EmailRejected),
    "number as attachment content": (
        {"attachments": [("n.txt", 123, "text/plain")]},
        EmailRejected,
    ),
    "None as subject": ({"subject": None}, ACCEPT),
    "None as body": ({"body": None}, ACCEPT),
    "number as header value": ({"headers": {"X-Count": 5}}, ACCEPT),
    # Text ---------------------------------------------------------------------------------------
    "empty subject and body": ({"subject": "", "body": ""}, ACCEPT),
    "emoji, RTL and CJK": ({"subject": "✉️ مرحبا 日本語", "body": "שלום 🌍\n"}, ACCEPT),
    "lone surrogate in body": ({"body": "broken \ud800 text"}, EmailRejected),
    "unicode line separator in subject": ({"subject": "a\u2028b\u0085c"}, ACCEPT),
}


def send(built: EmailMessage) -> int:
    """What send_mail, send_mass_mail and EmailMessage.send all end in: the backend's send_messages.

    (EmailMessage.send() itself returns 0 before any backend when no address is truthy, and
    raises TypeError in Django's own code when `to` is not a list: neither reaches the queue.)
    """
    return get_connection().send_messages([built])


@pytest.fixture
def limit(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "MAX_MESSAGE_BYTES": LIMIT}


def assert_complete_job(built: EmailMessage) -> EmailJob:
    job = EmailJob.objects.get()
    assert job.status == EmailJob.Status.PENDING and job.attempts == 0
    wire = wire_message(job)
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert parsed["Message-ID"] == job.message_id
    if job.layout:  # rendered by the worker: no bytes stored, the size is the text's
        assert not job.mime_message
    else:
        assert job.size_bytes == len(wire)
    assert job.envelope_recipients and all(a.isascii() for a in job.envelope_recipients)
    assert job.envelope_from.isascii()
    return job


def test_there_are_at_least_50_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error_or_a_complete_job(name, limit, broker):
    changes, expected = CASES[name]
    built = message(**dict(changes))
    if expected == ACCEPT:
        assert send(built) == 1
        assert_complete_job(built)
        return
    with pytest.raises((EmailRejected, BadHeaderError)) as raised:
        send(built)
    assert isinstance(raised.value, expected), f"{type(raised.value).__name__}: {raised.value}"
    assert str(raised.value)
    assert EmailJob.objects.count() == 0


def test_send_without_a_truthy_recipient_is_djangos_no_op(limit, broker):
    assert message(to=[""]).send() == 0 and message(to=[None]).send() == 0
    assert EmailJob.objects.count() == 0


def test_one_bad_message_in_a_mass_send_writes_none(limit, broker):
    batch = [("s", "b", "from@example.org", [f"u{i}@example.org"]) for i in range(20)]
    batch.insert(10, ("s\nBcc: victim@evil.test", "b", "from@example.org", [GOOD]))
    with pytest.raises(BadHeaderError):
        send_mass_mail(batch)
    assert EmailJob.objects.count() == 0


def test_a_message_id_given_twice_is_refused_clearly(limit, broker):
    """A caller reusing a Message-ID (retrying its own send_mail) gets a clear error."""
    first = message(headers={"Message-ID": "<same@example.org>"})
    second = message(headers={"Message-ID": "<same@example.org>"})
    assert send(first) == 1
    with pytest.raises(EmailRejected):
        send(second)
    assert EmailJob.objects.count() == 1


def test_every_accepted_case_is_delivered_once_and_intact(fault_worker, faulty, limit, reliability):
    accepted = {
        name: message(**dict(changes)) for name, (changes, kind) in CASES.items() if kind == ACCEPT
    }
    for built in accepted.values():
        assert send(built) == 1
    fault_worker(concurrency=2)
    wait_drained(len(accepted), timeout=60, status=EmailJob.Status.SENT)

    jobs = {job.message_id: job for job in EmailJob.objects.all()}
    copies = faulty.copies()
    lost = len(set(jobs) - set(copies))
    duplicated = sum(n - 1 for n in copies.values())
    assert sorted(copies.values()) == [1] * len(accepted)
    assert set(copies) == {job.message_id for job in jobs.values()}
    by_id = {str(m["Message-ID"]): m for m in faulty.messages()}
    # compared word by word: a parser may read U+2028 or U+0085 inside a header as a space
    altered = [
        f"{job.subject!r} arrived as {by_id[job.message_id]['Subject']!r}"
        for job in jobs.values()
        if (by_id[job.message_id]["Subject"] or "").split() != job.subject.split()
    ]
    reliability.record(
        f"10. bad input ({len(CASES)} cases)",
        n=len(CASES),
        lost=lost,
        duplicated=duplicated,
        statuses={"refused at enqueue": len(CASES) - len(accepted), "sent": len(accepted)},
        drain_seconds=None,
        note="refused: a clear EmailRejected/BadHeaderError, no job; accepted: delivered once"
        + (f"; NOT MET, subject altered: {'; '.join(altered)}" if altered else ""),
    )
    assert altered == []

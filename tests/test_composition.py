"""Which messages the worker renders, and that it renders them to the very bytes enqueue would."""

import random
from email.policy import compat32
from email.utils import formatdate

import pytest
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail import message as django_message
from django.core.validators import validate_email
from django.utils import timezone

from notifications import claiming, composition
from notifications.composition import job_fields, wire_message
from notifications.exceptions import EmailRejected
from notifications.models import EmailJob

pytestmark = pytest.mark.django_db
Layout = EmailJob.Layout
FROM = "sender@example.org"
TO = ["to@example.org"]
LONG_LINE = "Zoë's order: " + "ä€x" * 400  # one line over 998 bytes: quoted-printable
LONG_SUBJECT = "Ihre Bestellung Nr. 4711 wurde versandt — Lieferung voraussichtlich morgen " * 3


def html_only(**fields) -> EmailMessage:
    message = EmailMessage(**fields)
    message.content_subtype = "html"
    return message


def with_html(html: str, **fields) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(**fields)
    message.attach_alternative(html, "text/html")
    return message


SIMPLE = {
    "ascii": (Layout.PLAIN, lambda: EmailMessage("Hello", "Body\n", FROM, TO)),
    "non-ascii subject and names": (
        Layout.PLAIN,
        lambda: EmailMessage(
            "ご注文の商品を発送しました №42 ✓",
            "こんにちは!\nありがとう。",
            "Zoë Ünicode <zoe@example.org>",
            ["Jürgen Groß <j@example.de>", "plain@example.org"],
        ),
    ),
    "long line, quoted-printable": (Layout.PLAIN, lambda: EmailMessage("QP", LONG_LINE, FROM, TO)),
    "long folded subject": (Layout.PLAIN, lambda: EmailMessage(LONG_SUBJECT, "b", FROM, TO)),
    "none subject and body": (Layout.PLAIN, lambda: EmailMessage(None, None, FROM, TO)),
    "plain+html": (
        Layout.PLAIN_HTML,
        lambda: with_html("<p>Grüße, €5</p>", subject="Hi", body="Grüße", from_email=FROM, to=TO),
    ),
    "html alternative only, empty text": (
        Layout.PLAIN_HTML,
        lambda: with_html("<p>only</p>", subject="Hi", body="", from_email=FROM, to=TO),
    ),
    "html with a long line": (
        Layout.HTML,
        lambda: html_only(subject="H", body=f"<p>{LONG_LINE}</p>", from_email=FROM, to=TO),
    ),
    "cc, bcc and reply_to": (
        Layout.PLAIN,
        lambda: EmailMessage(
            "s",
            "b",
            "Shop <shop@example.com>",
            TO,
            bcc=["hidden@example.org"],
            cc=["Ann <ann@example.org>", "bob@example.org"],
            reply_to=["Support Team <support@example.com>"],
        ),
    ),
    "list headers": (
        Layout.PLAIN_HTML,
        lambda: with_html(
            "<b>x</b>",
            subject="News",
            body="x",
            from_email=FROM,
            to=TO,
            headers={
                "X-Tag": "digest",
                "List-Unsubscribe": "<https://example.com/u/abc>, <mailto:u@example.com>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        ),
    ),
    "non-ascii header value": (
        Layout.PLAIN,
        lambda: EmailMessage("s", "b", FROM, TO, headers={"X-Note": "für dich"}),
    ),
    "user date": (
        Layout.PLAIN,
        lambda: EmailMessage("s", "b", FROM, TO, headers={"date": "Tue, 1 Jan 2030 10:00 -0000"}),
    ),
    "user message-id, last": (
        Layout.PLAIN,
        lambda: EmailMessage("s", "b", FROM, TO, headers={"X-A": "1", "Message-ID": "<m@x.org>"}),
    ),
}


def stored(message: EmailMessage) -> EmailJob:
    now = timezone.now()
    return EmailJob.objects.create(**job_fields(message), next_attempt_at=now)


def rendered_at_enqueue(message: EmailMessage, job: EmailJob, monkeypatch) -> bytes:
    """What job_fields() stores for `message` when it renders it, with the job's Message-ID and
    with the Date the worker gives it."""
    with monkeypatch.context() as patch:
        patch.setattr(composition, "_lazy_layout", lambda *args: Layout.RENDERED)
        patch.setattr(composition, "new_message_id", lambda: job.message_id)
        patch.setattr(
            django_message,
            "formatdate",
            lambda localtime: formatdate(job.created_at.timestamp(), localtime=localtime),
        )
        random.seed(7)  # the same multipart boundary
        fields = job_fields(message)
    assert fields["layout"] == Layout.RENDERED and fields["message_id"] == job.message_id
    return fields["mime_message"]


@pytest.mark.parametrize("localtime", [False, True])
@pytest.mark.parametrize("case", SIMPLE)
def test_the_worker_renders_the_bytes_enqueue_would(case, localtime, settings, monkeypatch):
    settings.EMAIL_USE_LOCALTIME = localtime
    layout, build = SIMPLE[case]
    job = stored(build())
    job.refresh_from_db()  # as the worker reads it
    assert (job.layout, job.mime_message) == (layout, b"")
    random.seed(7)
    lazily = wire_message(job)
    assert lazily == rendered_at_enqueue(build(), job, monkeypatch)


def test_the_date_is_the_enqueue_time_and_the_size_that_of_the_text():
    job = stored(with_html("<p>€</p>", subject="Sujet", body="Corps", from_email=FROM, to=TO))
    assert job.size_bytes == len("Sujet") + len("Corps") + len("<p>€</p>".encode())
    rendered = wire_message(job)
    assert f"Date: {formatdate(job.created_at.timestamp())}\r\n".encode() in rendered
    assert f"Message-ID: {job.message_id}\r\n".encode() in rendered


def test_the_columns_the_worker_loads_are_all_it_renders_from(django_assert_num_queries):
    job = stored(with_html("<p>x</p>", subject="s", body="b", from_email=FROM, to=TO, cc=TO))
    loaded = EmailJob.objects.only(*claiming.SEND_FIELDS).get(pk=job.pk)
    random.seed(7)
    expected = wire_message(job)
    random.seed(7)  # the same multipart boundary
    with django_assert_num_queries(0):
        assert wire_message(loaded) == expected


def test_a_job_rendered_at_enqueue_is_sent_as_stored():
    job = stored(EmailMessage("s", "b", FROM, TO, attachments=[("a.txt", "x", "text/plain")]))
    assert job.layout == Layout.RENDERED and job.mime_message
    assert wire_message(job) == bytes(job.mime_message)


class CustomMessage(EmailMessage):
    pass


def alternatives(*pairs) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives("s", "b", FROM, TO)
    for content, mimetype in pairs:
        message.attach_alternative(content, mimetype)
    return message


def with_attributes(message: EmailMessage, **attributes) -> EmailMessage:
    for name, value in attributes.items():
        setattr(message, name, value)
    return message


RENDERED_AT_ENQUEUE = {
    "attachment": lambda: EmailMessage("s", "b", FROM, TO, attachments=[("a.txt", "x", None)]),
    "subclass": lambda: CustomMessage("s", "b", FROM, TO),
    "own encoding": lambda: with_attributes(EmailMessage("s", "b", FROM, TO), encoding="utf-8"),
    "other subtype": lambda: with_attributes(EmailMessage("s", "b", FROM, TO), mixed_subtype="x"),
    "two alternatives": lambda: alternatives(("<p>", "text/html"), ("<q>", "text/html")),
    "not html": lambda: alternatives(("a: b", "text/x-yaml")),
    "empty html": lambda: alternatives(("", "text/html")),
    "html with an alternative": lambda: with_attributes(
        alternatives(("<p>", "text/html")), content_subtype="html"
    ),
    "address header": lambda: EmailMessage("s", "b", FROM, TO, headers={"Sender": FROM}),
    "headers out of jsonb order": lambda: EmailMessage(
        "s", "b", FROM, TO, headers={"List-Unsubscribe": "<mailto:u@x.org>", "X-Tag": "t"}
    ),
    "message-id not last": lambda: EmailMessage(
        "s", "b", FROM, TO, headers={"Message-ID": "<m@x.org>", "X-A": "1"}
    ),
    "message-id spelled otherwise": lambda: EmailMessage(
        "s", "b", FROM, TO, headers={"Message-Id": "<m@x.org>"}
    ),
    "odd header name": lambda: EmailMessage("s", "b", FROM, TO, headers={"X Space": "1"}),
}


@pytest.mark.parametrize("case", RENDERED_AT_ENQUEUE)
def test_other_messages_are_rendered_at_enqueue_as_before(case):
    fields = job_fields(RENDERED_AT_ENQUEUE[case]())
    assert fields["layout"] == Layout.RENDERED
    assert fields["mime_message"] and fields["size_bytes"] == len(fields["mime_message"])


def test_a_message_that_may_outgrow_the_limit_once_rendered_is_rendered_at_enqueue(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "MAX_MESSAGE_BYTES": 20_000}
    assert job_fields(EmailMessage("s", "x" * 3000, FROM, TO))["layout"] == Layout.PLAIN
    fields = job_fields(EmailMessage("s", "x" * 5000, FROM, TO))  # 4 x 5000 + 4096 > 20000
    assert fields["layout"] == Layout.RENDERED and len(fields["mime_message"]) < 20_000


@pytest.mark.parametrize("field", ["subject", "body"])
def test_lone_surrogates_are_refused_at_enqueue_as_before(field):
    message = EmailMessage("s", "b", FROM, TO)
    setattr(message, field, "broken \udc80")
    with pytest.raises(EmailRejected, match="cannot be rendered"):
        job_fields(message)


ALL_MESSAGES = {
    **{name: build for name, (_, build) in SIMPLE.items()},
    **{f"rendered at enqueue: {name}": build for name, build in RENDERED_AT_ENQUEUE.items()},
}


@pytest.mark.parametrize("case", ALL_MESSAGES)
def test_the_quicker_header_folding_gives_the_bytes_django_does(case):
    mime = ALL_MESSAGES[case]().message()
    django_bytes = mime.as_bytes(linesep="\r\n")  # also fixes the multipart boundary
    assert composition.mime_bytes(mime) == django_bytes


def test_the_quicker_header_folding_on_random_header_values():
    """Printable ASCII with spaces and tabs, short and long: folded as compat32 folds them."""
    rng = random.Random(5)
    alphabet = "abcXYZ019 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~=?\t  "
    quick = composition.QUICK_FOLDING.clone(linesep="\r\n")
    stock = compat32.clone(linesep="\r\n")
    names = ["Subject", "To", "Message-ID", "X-A", "List-Unsubscribe-Post"]
    for _ in range(5000):
        name = rng.choice(names)
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90)))
        assert quick.fold_binary(name, value) == stock.fold_binary(name, value), (name, value)


def test_plain_text_written_directly_is_what_django_renders():
    """Random text-only messages: whenever the direct path writes one, Django's classes render
    the very same bytes; and it writes most ordinary ones."""
    rng = random.Random(11)
    ordinary = ["a@example.org", "first.last+tag@mail.example.com", "o'brien@example.ie"]
    unusual = ["Ann Smith <ann@example.org>", '"quoted local"@example.org', "a" * 70 + "@b.org"]
    words = ["Your", "order", "#42:", "a,b;c", "(note)", "=?utf-8?q?x?=", "Grüße", "x" * 70]
    pieces = ["Hello", " ", "\n", "\r\n", "\r", ".", "From me", "ä€", "\u2028", "\x0c"]

    def some(choices: list[str], rare: int, count: int) -> list[str]:
        """`count` of `choices`, the last `rare` of them one time in twenty-five each."""
        weights = [25] * (len(choices) - rare) + [1] * rare
        return rng.choices(choices, weights, k=count)

    written = 0
    for number in range(3000):
        addresses = some(ordinary + unusual, len(unusual), 4)
        job = EmailJob(
            layout=Layout.PLAIN,
            subject=" ".join(some(words, 3, rng.randint(0, 4))),
            body="".join(some(pieces, 2, rng.randint(0, 12))) + "x" * rng.choice([0, 10, 998, 999]),
            from_email=addresses[0],
            to=addresses[1 : rng.randint(2, 3)],
            cc=addresses[3:] if rng.random() < 0.3 else [],
            reply_to=addresses[:1] if rng.random() < 0.2 else [],
        )
        headers = {"Date": formatdate(1_700_000_000 + number)}
        if rng.random() < 0.3:
            headers["X-Tag"] = rng.choice(["digest", "a  b", "x" * 80, "café"])
        headers["Message-ID"] = f"<{number}.{rng.randint(0, 10**12)}@vertex-email.local>"
        quick = composition.plain_text_bytes(job, headers)
        if quick is not None:
            written += 1
            assert quick == composition.rendered_by_django(job, headers), job.__dict__
    assert 600 < written < 2900, written  # both paths taken


def test_message_ids_stay_unique_when_the_random_module_is_seeded(monkeypatch):
    """An application (or hypothesis) that seeds `random` must not make two messages queued in
    the same 10 ms share a Message-ID: the second would be refused as a duplicate."""
    monkeypatch.setattr(composition.time, "time", lambda: 1_700_000_000.0)
    ids = set()
    for _ in range(2):
        random.seed(1)
        ids.add(job_fields(EmailMessage("s", "b", FROM, TO))["message_id"])
    assert len(ids) == 2


def _accepts(validator, address: str) -> bool:
    try:
        validator(address)
    except ValidationError:
        return False
    return True


def _random_ascii_addresses(rng: random.Random, count: int):
    """Addresses around the limits of Django's domain pattern (labels of up to 63 characters,
    top level domains of 2 to 63 letters, punycode, hyphens at a label's ends, a trailing dot,
    K and S, whose case folds reach outside ASCII) and arbitrary ASCII text."""

    def text(alphabet: str, longest: int) -> str:
        length = rng.choice([rng.randint(0, 12), rng.randint(longest - 4, longest)])
        chars = rng.choices(alphabet, k=length)
        if length > 2 and rng.random() < 0.3:
            chars[rng.randrange(1, length - 1)] = "-"
        hyphens = rng.choices(["", "-"], [19, 1], k=2)
        return hyphens[0] + "".join(chars) + hyphens[1]

    anything = [chr(code) for code in range(128)]
    for _ in range(count):
        labels = [text("abKkSs09", 65) for _ in range(rng.randint(1, 3))]
        tld = rng.choice([text("abKkSsz", 64), "xn--" + text("ab09", 60)])
        domain = ".".join([*labels, tld]) + rng.choice(["", "", "."])
        local = rng.choice(["user", "a.b+tag", "o'brien", "x" * 64, text(anything, 8)])
        others = [f"{local}@{text(anything, 12)}", text(anything, 30)]
        yield rng.choice([f"{local}@{domain}"] * 4 + others)


def test_ascii_addresses_are_judged_as_djangos_validator_judges_them():
    """Our quicker validator for ASCII addresses accepts exactly what Django's accepts."""
    judged = {True: 0, False: 0}
    for address in _random_ascii_addresses(random.Random(3), 10_000):
        accepted = _accepts(composition.validate_ascii_email, address)
        assert accepted == _accepts(validate_email, address), address
        judged[accepted] += 1
    assert min(judged.values()) > 1_000, judged  # many of each

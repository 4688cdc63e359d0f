"""What enqueue_emails() writes without the ORM: the rows bulk_create writes, with the right ids."""

import contextlib
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.db import connection
from django.db.models import JSONField
from django.db.models.signals import post_init
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import inserts, services
from notifications.composition import job_fields
from notifications.models import EmailJob
from tests.factories import make_message
from tests.support.processes import python_output

pytestmark = pytest.mark.django_db(transaction=True)


def varied_messages() -> list[EmailMessage]:
    soon = timezone.now() + timedelta(hours=1)
    html = EmailMultiAlternatives("Text and HTML", "text", "a@example.org", ["b@example.org"])
    html.attach_alternative("<p>html</p>", "text/html")
    html_only = EmailMessage("HTML only", "<b>hi</b>", "a@example.org", ["b@example.org"])
    html_only.content_subtype = "html"
    attached = make_message(1, subject="Attached")
    attached.attach("report.csv", "a,b\n1,2\n", "text/csv")
    attached.attach("logo.png", b"\x89PNG\r\n", "image/png")
    scheduled = make_message(2, subject="Scheduled, high")
    scheduled.priority, scheduled.send_at = "high", soon.astimezone(ZoneInfo("Europe/Paris"))
    scheduled.expires_at = soon + timedelta(days=1)
    return [
        make_message(0),
        html,
        html_only,
        attached,
        scheduled,
        make_message(
            3,
            subject="Überall, ça va? 🎉",
            body="Grüße\n" * 40,
            from_email="Zoë Doe <zoe@example.org>",
            to=["x@example.org", "Y Person <y@example.org>"],
            cc=["c@example.org"],
            bcc=["hidden@example.org"],
            reply_to=["r@example.org"],
            headers={"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.org>"},
        ),
        make_message(4, headers={"Message-ID": "<given@example.org>", "X-Tag": "ünï"}),
        make_message(5, subject="", body=""),
    ]


def stored_rows(pks) -> list[tuple]:
    """The rows as the database gives them back, every column."""
    table = connection.ops.quote_name(EmailJob._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - our own table
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return [row for row in rows if row["id"] in pks]


@pytest.mark.parametrize(
    ("one_at_a_time", "watched"),
    [(False, False), (True, False), (False, True)],
    ids=["one call", "send_mail each", "one call, queries watched"],
)
def test_rows_are_those_bulk_create_writes_for_the_same_jobs(one_at_a_time, watched):
    """Many rows are prepared a column at a time, a lone row (send_mail()) a value at a time.
    They are written by the driver's own means (SQLite's connection, PostgreSQL's COPY), or
    through Django's cursor, where DEBUG's query log and execute wrappers see them."""
    with CaptureQueriesContext(connection) if watched else contextlib.nullcontext() as queries:
        if one_at_a_time:
            jobs = [
                job
                for message in varied_messages()
                for job in services.enqueue_emails(messages=[message], priority="low")
            ]
        else:
            jobs = services.enqueue_emails(messages=varied_messages(), priority="low")
    if watched:
        assert any(query["sql"].startswith("INSERT INTO") for query in queries.captured_queries)
    # The ORM writes copies of the same jobs; only their Message-IDs (unique) differ.
    copies = [
        EmailJob(**{f.attname: getattr(job, f.attname) for f in inserts._inserted_fields()})
        for job in jobs
    ]
    for copy in copies:
        copy.message_id = "<copy-" + copy.message_id[1:]
    EmailJob.objects.bulk_create(copies)

    ours = stored_rows({job.pk for job in jobs})
    theirs = stored_rows({copy.pk for copy in copies})
    assert len(ours) == len(theirs) == 8
    for mine, orm in zip(ours, theirs, strict=True):
        assert orm["message_id"] == "<copy-" + mine["message_id"][1:]
        # auto_now(_add): the ORM stamps its own time, ours is the call's, as dispatched_at.
        assert mine["created_at"] == mine["updated_at"] == mine["dispatched_at"]
        skip = {"id", "message_id", "created_at", "updated_at"}
        assert {k: v for k, v in mine.items() if k not in skip} == {
            k: v for k, v in orm.items() if k not in skip
        }
    layouts = {row["subject"]: row["layout"] for row in ours}
    assert layouts["Attached"] == EmailJob.Layout.RENDERED
    assert layouts["Text and HTML"] == EmailJob.Layout.PLAIN_HTML


def test_each_returned_job_has_the_id_of_its_own_row(monkeypatch):
    monkeypatch.setattr(inserts, "ROWS_PER_STATEMENT", 3)  # 3 statements for 7 jobs
    messages = [make_message(i, subject=f"number {i}") for i in range(7)]
    jobs = services.enqueue_emails(messages=messages)
    assert len({job.pk for job in jobs}) == 7
    for number, job in enumerate(jobs):
        stored = EmailJob.objects.get(pk=job.pk)
        assert (stored.subject, stored.message_id) == (f"number {number}", job.message_id)
        assert stored.status == EmailJob.Status.PENDING and stored.to == [
            f"user{number}@example.org"
        ]
        assert not job._state.adding
    assert EmailJob.objects.count() == 7


def test_returned_jobs_read_as_stored():
    [job] = services.enqueue_emails(messages=[varied_messages()[4]])
    stored = EmailJob.objects.get(pk=job.pk)
    for field in inserts._inserted_fields():
        assert getattr(job, field.attname) == getattr(stored, field.attname), field.name


@pytest.mark.parametrize("listened", [False, True], ids=["made directly", "post_init listened"])
def test_new_jobs_are_the_instances_the_model_makes(listened):
    """Made without Model.__init__ unless a signal listens: then through it, so it is sent."""
    now = timezone.now()
    values = [
        {**job_fields(message), "next_attempt_at": now, "dispatched_at": now}
        for message in varied_messages()
    ]
    seen = []

    def note(sender, instance, **kwargs):
        seen.append(instance)

    if listened:
        post_init.connect(note, sender=EmailJob)
    try:
        jobs = inserts.new_jobs(values, now=now)
    finally:
        post_init.disconnect(note, sender=EmailJob)
    assert seen == (jobs if listened else [])
    attnames = {field.attname for field in EmailJob._meta.concrete_fields}
    for job, given in zip(jobs, values, strict=True):
        made = EmailJob(**{"created_at": now, "updated_at": now, **given})
        assert {name: getattr(job, name) for name in attnames} == {
            name: getattr(made, name) for name in attnames
        }
        assert set(vars(job)) == attnames | {"_state"}
        assert (job._state.adding, job._state.db) == (True, None)
        assert job.pk is None and job.get_status_display() == made.get_status_display()


def test_json_goes_to_copy_as_its_text_and_null_as_null():
    """PostgreSQL's COPY path: each adapted JSON value becomes its text (a shared empty one too,
    wherever it recurs); a None stays None, for the column to refuse as the INSERT's would."""
    from psycopg.types.json import Jsonb

    kinds = inserts._kinds()
    json_columns = [index for index, kind in enumerate(kinds) if kind is JSONField]
    shared = Jsonb([])
    rows = []
    for value in (shared, Jsonb(["a@example.org"]), None, shared):
        rows.append(tuple(value if index in json_columns else "x" for index in range(len(kinds))))
    texts = list(inserts._json_as_text(rows))
    for index in json_columns:
        assert [row[index] for row in texts] == ["[]", '["a@example.org"]', None, "[]"]
    others = [
        row[index] for row in texts for index in range(len(kinds)) if index not in json_columns
    ]
    assert set(others) == {"x"}


def test_on_sqlite_the_send_path_does_not_load_psycopg(tmp_path):
    """Importing psycopg costs 24 MiB of RSS; only PostgreSQL's paths need it (it put 9 MiB on
    each worker process of a SQLite deployment when inserts.py imported it)."""
    code = (
        "import sys, django; django.setup(); "
        "import vertex_email.celery, notifications.tasks, notifications.inserts; "
        "print(sorted(name for name in sys.modules if name.startswith('psycopg')))"
    )
    assert python_output(code, tmp_path) == "[]"


def test_no_messages_write_no_job(broker):
    assert services.enqueue_emails(messages=[]) == []
    assert not EmailJob.objects.exists()

"""The job admin: list, search, filters, actions, a read-only detail page; the audit log admin."""

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.admin import CappedCountPaginator
from notifications.composition import job_fields
from notifications.models import AuditLogEntry, EmailAttempt, EmailJob
from notifications.search_index import create_search_index, drop_search_index
from notifications.smtp_config import audit
from tests.factories import EmailJobFactory, make_message

pytestmark = pytest.mark.django_db
Status = EmailJob.Status
JOBS_URL = "/admin/notifications/emailjob/"
AUDIT_URL = "/admin/notifications/auditlogentry/"


def job_url(job: EmailJob, view: str = "change") -> str:
    return f"{JOBS_URL}{job.pk}/{view}/"


def user_with(django_user_model, *codenames, username="staffer"):
    user = django_user_model.objects.create_user(username, f"{username}@example.org", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def failed_job():
    job = EmailJobFactory(
        index=1,
        status=Status.FAILED,
        attempts=2,
        last_smtp_code=550,
        last_error="550 5.1.1 <user1@example.org>: Recipient address rejected: " + "x" * 200,
    )
    now = timezone.now()
    for number, outcome in ((1, EmailAttempt.Outcome.RETRY), (2, EmailAttempt.Outcome.FAILED)):
        EmailAttempt.objects.create(
            job=job, number=number, started_at=now, outcome=outcome, smtp_code=550, error="no"
        )
    return job


def action(client, name: str, jobs: list[EmailJob]):
    data = {"action": name, "_selected_action": [job.pk for job in jobs]}
    return client.post(JOBS_URL, data, follow=True)


def test_list_shows_the_columns_and_truncates_the_error(admin_client, failed_job):
    page = admin_client.get(JOBS_URL).content.decode()
    assert "user1@example.org" in page
    assert "Message 1" in page
    assert "Failed" in page
    assert "550 5.1.1 &lt;user1@example.org&gt;: Recipient address rejected" in page
    assert "x" * 100 not in page


def test_list_never_counts_the_whole_table(admin_client, failed_job):
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(JOBS_URL).status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the paginator counts, with a limit"
    assert all("LIMIT" in sql.upper() for sql in counts)
    listed = next(q["sql"] for q in queries.captured_queries if '"subject"' in q["sql"])
    assert '"mime_message"' not in listed  # a page of jobs does not load their MIME bytes


def test_a_page_of_jobs_costs_the_same_queries_whatever_its_rows(admin_client):
    def queries_for_the_list() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(JOBS_URL).status_code == 200
        return len(queries.captured_queries)

    EmailJobFactory(index=1)
    one_row = queries_for_the_list()
    for index in range(2, 6):
        EmailJobFactory(index=index)
    assert queries_for_the_list() == one_row  # str(job), in each checkbox's label, loads nothing


def test_the_capped_count_is_unordered(admin_client, failed_job):
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(JOBS_URL, {"status__exact": "failed"})
    count = next(q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper())
    assert "ORDER BY" not in count.upper()  # an ORDER BY made SQLite scan the table in that order


def test_past_the_cap_the_list_says_more_than(admin_client, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "cap", 3)
    for index in range(5):
        EmailJobFactory(index=index)
    page = admin_client.get(JOBS_URL).content.decode()
    assert "More than 3 email jobs" in page


def test_search_by_exact_message_id_recipient_and_subject(admin_client, failed_job):
    other = EmailJobFactory(index=2)
    for term in (failed_job.message_id, "user1@", "Message 1"):
        page = admin_client.get(JOBS_URL, {"q": term}).content.decode()
        assert job_url(failed_job) in page
        assert job_url(other) not in page
    partial = failed_job.message_id[:10]
    assert job_url(failed_job) not in admin_client.get(JOBS_URL, {"q": partial}).content.decode()


def test_a_message_id_a_sender_gave_is_found_even_when_it_is_not_an_address(admin_client):
    odd = EmailJobFactory(index=3)
    EmailJob.objects.filter(pk=odd.pk).update(message_id="<campaign-42 part 7>")
    other = EmailJobFactory(index=4)
    page = admin_client.get(JOBS_URL, {"q": "<campaign-42 part 7>"}).content.decode()
    assert job_url(odd) in page
    assert job_url(other) not in page
    unfiltered = admin_client.get(JOBS_URL).content.decode()
    assert job_url(odd) in unfiltered and job_url(other) in unfiltered


def test_a_whole_address_or_message_id_is_looked_up_without_a_scan(admin_client, failed_job):
    other = EmailJobFactory(index=2)
    bare_id = failed_job.message_id.strip("<>")
    for term in ("USER1@Example.org", f" {failed_job.message_id} ", bare_id):
        with CaptureQueriesContext(connection) as queries:
            page = admin_client.get(JOBS_URL, {"q": term}).content.decode()
        assert job_url(failed_job) in page
        assert job_url(other) not in page
        assert not any(" LIKE " in q["sql"].upper() for q in queries.captured_queries)
    assert (
        job_url(failed_job)
        not in admin_client.get(JOBS_URL, {"q": "ser1@example.org"}).content.decode()
    )


@pytest.fixture
def search_index():
    """The trigram indexes of `email_queue search-index --on`, built outside a transaction."""
    create_search_index()
    yield
    drop_search_index()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the search index is PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_with_the_search_index_a_search_within_texts_is_served_by_it(
    search_index, admin_client, failed_job
):
    other = EmailJobFactory(index=2)
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(JOBS_URL, {"q": "essage 1"}).content.decode()
    assert job_url(failed_job) in page
    assert job_url(other) not in page
    searches = [q["sql"] for q in queries.captured_queries if " LIKE " in q["sql"]]
    assert len(searches) == 2  # the capped count and the page
    with transaction.atomic(), connection.cursor() as cursor:
        # The table is tiny, so the planner would read it all: the question is whether it can.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")  # nor walk the (created_at) index
        for sql in searches:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "emailjob_recipient_trgm" in plan, plan
            assert "emailjob_subject_trgm" in plan, plan


def test_filter_by_status_and_date(admin_client, failed_job):
    pending = EmailJobFactory(index=2)
    page = admin_client.get(JOBS_URL, {"status__exact": "failed"}).content.decode()
    assert job_url(failed_job) in page
    assert job_url(pending) not in page
    today = timezone.now().date()
    page = admin_client.get(JOBS_URL, {"created_at__gte": str(today)}).content.decode()
    assert job_url(pending) in page


def test_retry_failed_jobs_action(admin_client, failed_job):
    pending = EmailJobFactory(index=2)
    page = action(admin_client, "retry_failed", [failed_job, pending]).content.decode()
    assert "1 job queued again. 1 job not failed, left as they were." in page
    failed_job.refresh_from_db()
    assert (failed_job.status, failed_job.attempts) == (Status.PENDING, 0)


def test_cancel_pending_jobs_action(admin_client, failed_job):
    pending = [EmailJobFactory(index=i) for i in (2, 3)]
    page = action(admin_client, "cancel_pending", [*pending, failed_job]).content.decode()
    assert "2 jobs cancelled. 1 job not pending, left as they were." in page
    assert EmailJob.objects.filter(status=Status.CANCELLED).count() == 2
    failed_job.refresh_from_db()
    assert failed_job.status == Status.FAILED


def test_detail_page_is_read_only_with_attempts_and_no_mime_bytes(admin_client, failed_job):
    page = admin_client.get(job_url(failed_job)).content.decode()
    assert "View email job" in page
    assert "Body of message 1" in page
    assert failed_job.layout  # a simple message: rendered by the worker, its size estimated
    assert f"about {failed_job.size_bytes}\xa0bytes, rendered when sent; not shown" in page
    assert "MIME-Version" not in page and "Content-Transfer-Encoding" not in page
    assert "Transient failure, will retry" in page  # the attempt inline
    assert 'name="_save"' not in page
    assert 'name="status"' not in page


def test_detail_page_gives_the_rendered_size_of_a_message_rendered_at_enqueue(admin_client):
    message = make_message(attachments=[("a.txt", "attached", "text/plain")])
    now = timezone.now()
    job = EmailJob.objects.create(**job_fields(message), next_attempt_at=now, dispatched_at=now)
    page = admin_client.get(job_url(job)).content.decode()
    assert f">{job.size_bytes}\xa0bytes; not shown" in page and "rendered when sent" not in page


def test_jobs_cannot_be_added_changed_or_deleted(admin_client, failed_job):
    assert admin_client.get(f"{JOBS_URL}add/").status_code == 403
    assert admin_client.post(job_url(failed_job), {"status": "sent"}).status_code == 403
    assert admin_client.post(job_url(failed_job, "delete"), {"post": "yes"}).status_code == 403
    page = admin_client.get(JOBS_URL).content.decode()
    assert "delete_selected" not in page
    failed_job.refresh_from_db()
    assert failed_job.status == Status.FAILED


def test_a_viewer_sees_jobs_but_gets_no_actions(client, django_user_model, failed_job):
    client.force_login(user_with(django_user_model, "view_emailjob"))
    page = client.get(JOBS_URL).content.decode()
    assert "user1@example.org" in page
    assert "Retry failed jobs" not in page
    assert "Transient failure" in client.get(job_url(failed_job)).content.decode()
    response = client.post(
        JOBS_URL, {"action": "retry_failed", "_selected_action": [failed_job.pk]}
    )
    failed_job.refresh_from_db()
    assert failed_job.status == Status.FAILED
    assert response.status_code == 200  # the list again, nothing done


# --- The audit log ---------------------------------------------------------------------------


@pytest.fixture
def entries():
    audit("admin:alice", AuditLogEntry.Action.CHANGE, fields=["smtp_host", "smtp_password"])
    audit("email_service", AuditLogEntry.Action.DECRYPT, purpose="send email", outcome="ok")
    return list(AuditLogEntry.objects.order_by("id"))


def test_audit_log_lists_and_filters(admin_client, entries):
    page = admin_client.get(AUDIT_URL).content.decode()
    assert "smtp_host, smtp_password" in page
    assert "email_service" in page
    page = admin_client.get(AUDIT_URL, {"action__exact": "decrypt"}).content.decode()
    assert f"{AUDIT_URL}{entries[1].pk}/change/" in page
    assert f"{AUDIT_URL}{entries[0].pk}/change/" not in page
    page = admin_client.get(AUDIT_URL, {"actor": "admin:alice"}).content.decode()
    assert f"{AUDIT_URL}{entries[0].pk}/change/" in page
    assert f"{AUDIT_URL}{entries[1].pk}/change/" not in page


def test_audit_log_is_read_only_even_for_superusers(admin_client, entries):
    entry = entries[0]
    assert admin_client.get(f"{AUDIT_URL}add/").status_code == 403
    assert admin_client.post(f"{AUDIT_URL}add/", {"actor": "x"}).status_code == 403
    assert admin_client.post(f"{AUDIT_URL}{entry.pk}/change/", {"actor": "x"}).status_code == 403
    assert admin_client.get(f"{AUDIT_URL}{entry.pk}/delete/").status_code == 403
    assert admin_client.post(f"{AUDIT_URL}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    page = admin_client.get(AUDIT_URL).content.decode()
    assert "delete_selected" not in page
    entry.refresh_from_db()
    assert entry.actor == "admin:alice"
    assert AuditLogEntry.objects.count() == 2


# --- Who may see them ------------------------------------------------------------------------


def list_endpoints(job: EmailJob, entry: AuditLogEntry) -> list[tuple[str, str]]:
    return [
        ("get", JOBS_URL),
        ("get", job_url(job)),
        ("post", JOBS_URL),
        ("get", AUDIT_URL),
        ("get", f"{AUDIT_URL}{entry.pk}/change/"),
    ]


def test_anonymous_and_non_staff_are_sent_to_the_login(
    client, django_user_model, failed_job, entries
):
    member = django_user_model.objects.create_user("member", password="x" * 12)
    data = {"action": "retry_failed", "_selected_action": [failed_job.pk]}
    for user in (None, member):
        if user:
            client.force_login(user)
        for method, url in list_endpoints(failed_job, entries[0]):
            response = getattr(client, method)(url, data)
            assert response.status_code == 302, url
            assert response.url.startswith("/admin/login/"), url
    failed_job.refresh_from_db()
    assert failed_job.status == Status.FAILED


def test_staff_without_permissions_are_refused(client, django_user_model, failed_job, entries):
    client.force_login(user_with(django_user_model))
    data = {"action": "retry_failed", "_selected_action": [failed_job.pk]}
    for method, url in list_endpoints(failed_job, entries[0]):
        assert getattr(client, method)(url, data).status_code == 403, url
    failed_job.refresh_from_db()
    assert failed_job.status == Status.FAILED

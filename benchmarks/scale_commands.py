"""How the operator commands and the stats API behave on a million jobs. Prints figures; no test.

Builds a throwaway database (SQLite by default; --database-url for another, whose EmailJob and
EmailAttempt rows are REPLACED), migrates it, fills it with --jobs jobs spread over --days days
(about 96% sent with one attempt, 3% failed with five, 1% cancelled, a few hundred pending and
sending in the last minutes; --healthy-days: no failures that recently), then times, in this
process:

  - each query behind `email_queue stats` and the API, with its query plan
  - `email_queue stats --json`, `failed --limit 20`, `purge --dry-run`
  - GET /api/monitoring/email-stats, GET /metrics and the admin's EmailJob list (its first page,
    each choice of each list filter, a search) through Django's test client, as a superuser
  - `email_queue purge --status sent --older-than --purge-days` (last: it deletes), with its
    batches and the longest one, while a thread stands in for a sender: a short write every
    20 ms, whose waits show whether the purge holds senders up
  - a summary: each read, its median, and whether it answers in under 200 ms (issue 5)

The stats, the API and /metrics also read Redis (pauses, attempt tallies) at EMAIL_REDIS_URL;
start one (`redis-server --port 6390 --save ''`, EMAIL_REDIS_URL=redis://127.0.0.1:6390/0) so
that their figures include it rather than a refused connection.

    .venv/bin/python benchmarks/scale_commands.py             # 1,000,000 jobs, /tmp/scale.sqlite3
    .venv/bin/python benchmarks/scale_commands.py --reuse     # keep the rows of an earlier run
    .venv/bin/python benchmarks/scale_commands.py --database-url postgres://u:p@127.0.0.1/scale_db
    ... --reuse --no-purge --search-index on    # the admin's search with its index (PostgreSQL)
"""

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 20_000
GOAL_MS = 200  # issue 5: every operator read under 200 ms on a million jobs
SUMMARY: list[tuple[str, float]] = []  # (read, median ms), in the order they ran


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="sqlite:////tmp/scale.sqlite3")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60, help="Spread of created_at (60).")
    parser.add_argument("--purge-days", type=int, default=30)
    parser.add_argument(
        "--healthy-days",
        type=int,
        default=0,
        help="No job failed in the last N days (a healthy queue: recent errors are far back).",
    )
    parser.add_argument("--mime-bytes", type=int, default=1500, help="Size of each stored message.")
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each read; median shown.")
    parser.add_argument("--reuse", action="store_true", help="Keep the rows already there.")
    parser.add_argument("--no-purge", action="store_true", help="Skip the (destructive) purge.")
    parser.add_argument(
        "--search-index",
        choices=("on", "off"),
        help="PostgreSQL: build (timed) or drop the admin's search index before the reads.",
    )
    parser.add_argument("--purge-batch-size", type=int, help="The purge's --batch-size.")
    return parser.parse_args()


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_DEBUG", "false")  # DEBUG would keep every query in memory
    os.environ.setdefault("DJANGO_ENV", "development")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def timed(repeat: int, function) -> tuple[float, object]:
    """Median wall time in milliseconds over `repeat` runs, and the last result."""
    times, result = [], None
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def build(jobs: int, days: int, mime_bytes: int, healthy_days: int) -> None:
    from django.db import connection, transaction
    from django.utils import timezone

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM notifications_emailattempt")
        cursor.execute("DELETE FROM notifications_emailjob")
    job_sql, job_row = _job_insert(connection)
    attempt_sql = (
        "INSERT INTO notifications_emailattempt (job_id, number, started_at, duration_seconds,"
        " outcome, smtp_code, error) VALUES (%s, %s, %s, 0.05, %s, %s, %s)"
    )
    at = connection.ops.adapt_datetimefield_value  # SQLite stores naive UTC text, as Django does
    now, mime = timezone.now(), b"x" * mime_bytes
    span, healthy = timedelta(days=days).total_seconds(), timedelta(days=healthy_days)
    start = time.perf_counter()
    for first in range(1, jobs + 1, CHUNK):
        job_rows, attempt_rows = [], []
        for pk in range(first, min(first + CHUNK, jobs + 1)):
            when = now - timedelta(seconds=span * (jobs - pk) / jobs + 1)
            status, attempts, code, error = _fate(pk, jobs, healthy=now - when < healthy)
            address = f"user{pk % 50_000}@example.org"
            sent_at = at(when + timedelta(seconds=1)) if status == "sent" else None
            job_rows.append(
                job_row(
                    id=pk,
                    status=status,
                    from_email="app@example.org",
                    envelope_from="app@example.org",
                    recipient=address,
                    to=[address],
                    envelope_recipients=[address],
                    subject=f"Message {pk}",
                    body="body",
                    message_id=f"<{pk}@scale.example>",
                    mime_message=mime,
                    size_bytes=mime_bytes,
                    attempts=attempts,
                    last_error=error,
                    last_smtp_code=code,
                    smtp_response="250 OK" if status == "sent" else "",
                    next_attempt_at=at(when),
                    dispatched_at=at(when),
                    created_at=at(when),
                    updated_at=sent_at or at(when),
                    sent_at=sent_at,
                )
            )
            for number in range(1, attempts + 1 if status in ("sent", "failed") else 1):
                last = number == attempts
                outcome = "sent" if status == "sent" else ("failed" if last else "retry")
                attempt_code = code if last or status == "sent" else 451
                attempt_error = error if last else "451 4.7.1 try again later"
                started = at(when + timedelta(seconds=number))
                attempt_rows.append((pk, number, started, outcome, attempt_code, attempt_error))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(job_sql, job_rows)
            cursor.executemany(attempt_sql, attempt_rows)
        print(f"\rbuilding: {min(first + CHUNK - 1, jobs):,}/{jobs:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('notifications_emailjob', 'id'), %s)", [jobs]
            )
            cursor.execute("VACUUM ANALYZE notifications_emailjob")
            cursor.execute("VACUUM ANALYZE notifications_emailattempt")
        else:
            cursor.execute("ANALYZE")
    print(f"built {jobs:,} jobs in {time.perf_counter() - start:.0f}s")


def _job_insert(connection):
    """The INSERT for every column of EmailJob, and a function making a row of it: the values
    given, each other column its model default (so new columns need no change here)."""
    from notifications.models import EmailJob

    fields = EmailJob._meta.concrete_fields
    json_fields = {f.attname: f for f in fields if f.get_internal_type() == "JSONField"}
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO notifications_emailjob ({columns}) VALUES ({marks})"  # noqa: S608
    defaults = {f.attname: f.get_db_prep_save(f.get_default(), connection) for f in fields}

    def row(**values) -> tuple:
        for name in values.keys() & json_fields.keys():
            values[name] = json_fields[name].get_db_prep_save(values[name], connection)
        return tuple(values.get(f.attname, defaults[f.attname]) for f in fields)

    return sql, row


def _fate(pk: int, jobs: int, healthy: bool) -> tuple[str, int, int | None, str]:
    """(status, attempts, last code, last error) of job `pk`; the newest ones are still queued."""
    if pk > jobs - 30:
        return "sending", 1, None, ""
    if pk > jobs - 500:
        return "pending", 0, None, ""
    share = pk % 100
    if share < 3 and not healthy:
        return "failed", 5, 550, "550 5.1.1 <user@example.org>: Recipient address rejected"
    if share == 3:
        return "cancelled", 0, None, ""
    return "sent", 1, 250, ""


def explain(queryset) -> str:
    plan = queryset.explain()
    return " | ".join(line.strip() for line in plan.splitlines() if line.strip())


def report_queries(repeat: int) -> None:
    from django.db.models import Count
    from django.utils import timezone

    from notifications import selectors
    from notifications.models import EmailAttempt, EmailJob

    hour = timedelta(hours=1)
    queries = [
        ("counts_by_status", selectors.counts_by_status,
         EmailJob.objects.order_by().values("status").annotate(n=Count("*"))),
        ("oldest_pending_age_seconds", selectors.oldest_pending_age_seconds,
         EmailJob.objects.filter(status="pending").order_by("created_at")[:1]),
        ("attempt_outcomes(1 h)", lambda: selectors.attempt_outcomes(hour),
         EmailAttempt.objects.filter(started_at__gte=timezone.now() - hour).order_by()
         .values("outcome").annotate(n=Count("*"))),
        ("recent_errors(10)", lambda: selectors.recent_errors(10),
         EmailAttempt.objects.filter(outcome__in=selectors.FAILURE_OUTCOMES).order_by("-started_at")[:10]),
        ("failed_jobs(20)", lambda: selectors.failed_jobs(limit=20),
         EmailJob.objects.filter(status="failed").order_by("-created_at", "-pk")[:20]),
    ]  # fmt: skip
    print("\nqueries (median ms)")
    for name, function, plan_of in queries:
        ms, _ = timed(repeat, function)
        SUMMARY.append((f"query {name}", ms))
        print(f"  {name:<28} {ms:8.1f}")
        if plan_of is not None:
            print(f"    plan: {explain(plan_of)[:300]}")


def run_command(*args: str) -> str:
    from django.core.management import call_command

    out = StringIO()
    call_command("email_queue", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def report_commands(repeat: int, purge_days: int) -> None:
    print("\ncommands, in process (median ms)")
    for args in (
        ("stats", "--json"),
        ("failed", "--limit", "20"),
        ("purge", "--status", "sent", "--older-than", str(purge_days), "--dry-run"),
    ):
        ms, out = timed(repeat, lambda args=args: run_command(*args))
        SUMMARY.append((f"email_queue {args[0]}", ms))
        print(f"  email_queue {' '.join(args):<52} {ms:8.1f}   {out.splitlines()[0][:60]}")


def superuser_client():
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # lets the test client's host in, and keeps each response's context
    user, _ = get_user_model().objects.get_or_create(
        username="scale-benchmark", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client, user


def report_api(repeat: int, client) -> None:
    ms, response = timed(repeat, lambda: client.get("/api/monitoring/email-stats"))
    SUMMARY.append(("GET /api/monitoring/email-stats", ms))
    body = response.json()
    print(
        f"\nGET /api/monitoring/email-stats (median ms) {ms:8.1f}   status {response.status_code}"
    )
    print(f"  pending {body['pending']:,}, sent {body['sent']:,}, failed {body['failed']:,}, "
          f"{len(body['recent_errors'])} recent errors")  # fmt: skip


def report_metrics(repeat: int, client) -> None:
    ms, response = timed(repeat, lambda: client.get("/metrics"))
    SUMMARY.append(("GET /metrics", ms))
    depth = [
        line for line in response.content.decode().splitlines()
        if line.startswith("vertex_ar_email_queue_depth{")
    ]  # fmt: skip
    print(f"\nGET /metrics (median ms) {ms:8.1f}   status {response.status_code}, "
          f"{len(response.content):,} bytes")  # fmt: skip
    print(f"  {', '.join(line.split('{', 1)[1] for line in depth)}")


def admin_reads(user) -> list[tuple[str, str]]:
    """(label, query string) of the job list: its first page, every choice each list filter
    offers (as the admin builds them), and searches."""
    from django.contrib import admin
    from django.test import RequestFactory

    from notifications.models import EmailJob

    model_admin = admin.site.get_model_admin(EmailJob)
    request = RequestFactory().get("/")
    request.user = user
    changelist = model_admin.get_changelist_instance(request)
    reads, seen = [("first page", "")], {"", "?"}
    for spec in changelist.filter_specs:
        for choice in spec.choices(changelist):
            query = choice["query_string"]
            if query not in seen:
                seen.add(query)
                reads.append((f"{spec.title}: {choice['display']}", query.lstrip("?")))
    if model_admin.search_fields:
        jobs = EmailJob.objects.count()
        terms = {
            "search a recipient": f"user{jobs // 3 % 50_000}@example.org",
            "search a message id": f"<{jobs // 2}@scale.example>",
            "search part of an address": f"user{jobs // 7 % 50_000}@",
            "search part of a subject": f"Message {jobs // 5}",
            "search a word no job has": "rejected",  # without an index, a scan to the end
            "search text every job has": "example.org",  # with an index, every job matches
        }
        reads += [(label, f"q={quote(term)}") for label, term in terms.items()]
    return reads


def report_admin(repeat: int, client, user) -> None:
    url = "/admin/notifications/emailjob/"
    print("\nGET admin EmailJob list (median ms)")
    for label, query in admin_reads(user):
        ms, response = timed(repeat, lambda query=query: client.get(f"{url}?{query}"))
        SUMMARY.append((f"admin jobs, {label}", ms))
        changelist = response.context["cl"] if response.context else None
        shown = f"{len(changelist.result_list)} rows" if changelist else "no list"
        print(f"  {label:<44} {ms:8.1f}   status {response.status_code}, {shown}")


def report_purge(purge_days: int, batch_size: int | None) -> None:
    from unittest import mock

    from notifications import services
    from notifications.models import EmailAttempt, EmailJob

    batches: list[float] = []  # seconds each batch took, its transaction from start to commit
    purge_jobs, rest = services.purge_jobs, services.sleep
    mark = 0.0

    def timed_purge(*, on_batch, **kwargs):
        def on_each(count: int) -> None:  # called just after each batch commits
            nonlocal mark
            batches.append(time.perf_counter() - mark)
            on_batch(count)
            mark = time.perf_counter()

        return purge_jobs(on_batch=on_each, **kwargs)

    def timed_rest(seconds: float) -> None:  # the purge's rest between batches is not a batch
        nonlocal mark
        rest(seconds)
        mark = time.perf_counter()

    before = EmailJob.objects.count(), EmailAttempt.objects.count()
    pending = EmailJob.objects.filter(status="pending").values_list("pk", flat=True).first()
    stop, writes = threading.Event(), []
    sender = threading.Thread(target=sender_writes, args=(pending, stop, writes))
    sender.start()
    start = mark = time.perf_counter()
    options = ["--batch-size", str(batch_size)] if batch_size else []
    try:
        with (
            mock.patch.object(services, "purge_jobs", timed_purge),
            mock.patch.object(services, "sleep", timed_rest),
        ):
            out = run_command(
                "purge", "--status", "sent", "--older-than", str(purge_days), "--json", *options
            )
    finally:
        seconds = time.perf_counter() - start
        stop.set()
        sender.join()
    after = EmailJob.objects.count(), EmailAttempt.objects.count()
    print(f"\npurge --status sent --older-than {purge_days} {' '.join(options)}: "
          f"{seconds:.1f}s   {out.strip()}")  # fmt: skip
    print(f"  jobs {before[0]:,} -> {after[0]:,}, attempts {before[1]:,} -> {after[1]:,}, "
          f"{(before[0] - after[0]) / seconds:,.0f} jobs/s")  # fmt: skip
    if batches:
        print(f"  {len(batches)} batches; each a transaction of median "
              f"{statistics.median(batches) * 1000:.0f} ms, longest {max(batches) * 1000:.0f} ms "
              "(the longest a sender waits for the purge)")  # fmt: skip
    if writes:
        writes.sort()
        print(f"  a sender's write during the purge ({len(writes)} of them): median "
              f"{statistics.median(writes) * 1000:.0f} ms, p99 "
              f"{writes[int(len(writes) * 0.99)] * 1000:.0f} ms, longest "
              f"{writes[-1] * 1000:.0f} ms")  # fmt: skip
    first, _ = timed(1, lambda: run_command("stats", "--json"))
    ms, _ = timed(3, lambda: run_command("stats", "--json"))
    print(f"  stats --json after the purge: {first:.1f} ms, then {ms:.1f} ms (median of 3)")


def sender_writes(job_id: int | None, stop, writes: list[float]) -> None:
    """Stands in for a worker settling jobs while the purge runs, on its own connection: a short
    write transaction every 20 ms, each timed from asking for it to its commit."""
    from django.db import connection, transaction
    from django.utils import timezone

    from notifications.models import EmailJob

    try:
        while job_id is not None and not stop.is_set():
            start = time.perf_counter()
            with transaction.atomic():
                EmailJob.objects.filter(pk=job_id).update(updated_at=timezone.now())
            writes.append(time.perf_counter() - start)
            stop.wait(0.02)
    finally:
        connection.close()


def report_summary() -> None:
    print(f"\nsummary: each read, median ms, under {GOAL_MS} ms")
    width = max(len(name) for name, _ in SUMMARY)
    for name, ms in SUMMARY:
        print(f"  {name:<{width}} {ms:8.1f}   <{GOAL_MS} ms: {'yes' if ms < GOAL_MS else 'no'}")


def switch_search_index(on: bool) -> None:
    from django.db import connection

    from notifications import search_index

    start = time.perf_counter()
    (search_index.create_search_index if on else search_index.drop_search_index)()
    print(f"search index {'built' if on else 'dropped'} in {time.perf_counter() - start:.1f} s")
    with connection.cursor() as cursor:
        for name in search_index.INDEXES:
            cursor.execute("SELECT pg_size_pretty(pg_relation_size(to_regclass(%s)))", [name])
            print(f"  {name}: {cursor.fetchone()[0] or 'absent'}")


def main() -> None:
    args = parse_args()
    setup_django(args.database_url)
    from django.core.management import call_command
    from django.db import connection

    from notifications.models import EmailJob

    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    if not (args.reuse and EmailJob.objects.exists()):
        build(args.jobs, args.days, args.mime_bytes, args.healthy_days)
    print(f"{EmailJob.objects.count():,} jobs")
    if args.search_index:
        switch_search_index(args.search_index == "on")
    report_queries(args.repeat)
    report_commands(args.repeat, args.purge_days)
    client, user = superuser_client()
    report_api(args.repeat, client)
    report_metrics(args.repeat, client)
    report_admin(args.repeat, client, user)
    report_summary()
    if not args.no_purge:
        report_purge(args.purge_days, args.purge_batch_size)


if __name__ == "__main__":
    main()

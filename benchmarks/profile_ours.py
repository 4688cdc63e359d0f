"""Where our time goes: the parts of one send_mail(), and cProfiles of enqueue and of sending.

Prints figures; no test. Starts its own redis-server and catcher (smtp-sink when compare.py finds
it, else aiosmtpd) and a throwaway SQLite database, all ended or removed at the end. Runs in this
process, one thread, no Celery worker: what it shows is the cost of our code, not contention.

    .venv/bin/python benchmarks/profile_ours.py                # 1,000 messages
    .venv/bin/python benchmarks/profile_ours.py --messages 300 --top 15
    .venv/bin/python benchmarks/profile_ours.py --accept-delay 20 --connections 10   # a relay
    .venv/bin/python benchmarks/profile_ours.py --database-url postgres://postgres@127.0.0.1:5432/postgres

1. Each part of one send_mail(), timed alone (median of --messages calls, ms).
2. cProfile of send_mail() --messages times (the broker's queue kept short, as when workers run).
3. cProfile of notifications.delivery.deliver_due_jobs() draining --messages queued jobs.
"""

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_stack
import throughput as tp
from bench_driver import BODY, RECIPIENT, SENDER, SUBJECT

ROOT = tp.ROOT


def timed(function, count: int) -> float:
    """Median milliseconds of `count` calls."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def profile(function, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(function)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30, help="lines of each profile")
    parser.add_argument(
        "--accept-delay", type=float, default=0.0, help="ms before each 250 (aiosmtpd catcher)"
    )
    parser.add_argument("--connections", type=int, default=1, help="EMAIL_SMTP_CONNECTIONS")
    parser.add_argument(
        "--database-url",
        help="postgres://USER@HOST:PORT/DB: profile on a fresh database created on that server "
        "(dropped at the end) instead of a SQLite file",
    )
    args = parser.parse_args()
    if not 1 <= args.messages <= 20_000:
        parser.error("--messages must be between 1 and 20000")
    with local_stack.project_in_this_process(
        ROOT,
        name="profile",
        database_url=args.database_url,
        accept_delay=args.accept_delay,
        environment={"EMAIL_SMTP_CONNECTIONS": str(args.connections)},
    ) as stack:
        return profile_all(args, stack)


def profile_all(args: argparse.Namespace, stack: local_stack.Stack) -> int:
    """The three parts of the report, in a process `project_in_this_process` set up."""
    redis, catcher = stack.redis, stack.catcher
    from celery import current_app
    from django.core.mail import EmailMessage, send_mail
    from django.db import transaction
    from django.utils import timezone

    from notifications import delivery, publishing, services
    from notifications.composition import job_fields
    from notifications.models import EmailJob

    n = args.messages

    def message() -> EmailMessage:
        return EmailMessage(SUBJECT, BODY, SENDER, [RECIPIENT])

    def row_only() -> None:
        now = timezone.now()
        with transaction.atomic():
            EmailJob.objects.bulk_create(
                [EmailJob(**job_fields(message()), next_attempt_at=now, dispatched_at=now)]
            )

    def depth_over_pool() -> int:
        with current_app.pool.acquire(block=True) as connection:
            return connection.default_channel.client.llen(publishing.QUEUE)

    parts = {
        "job_fields(): validate (a simple message: no render)": lambda: job_fields(message()),
        "the row: job_fields() + INSERT + COMMIT": row_only,
        "publishing._messages_waiting(): the wake-up's queue-depth check": (
            publishing._messages_waiting
        ),
        "a bare LLEN over the app's connection pool, for comparison": depth_over_pool,
        "publishing.publish_jobs([id]): one send task": lambda: publishing.publish_jobs([0]),
        "send_mail(), all of it": lambda: send_mail(SUBJECT, BODY, SENDER, [RECIPIENT]),
    }
    print(f"{stack.summary}; catcher {catcher.name}")
    print(f"{n} calls each, one thread, no worker running\n")
    print("1. Parts of one send_mail(), median ms")
    for name, function in parts.items():
        redis.client.delete(publishing.QUEUE)
        print(f"   {timed(function, n):7.3f}  {name}")

    EmailJob.objects.all().delete()
    redis.client.flushall()

    def enqueue() -> None:
        for number in range(n):
            if number % 5 == 0:  # workers would keep the queue short: publish every call
                redis.client.delete(publishing.QUEUE)
            send_mail(SUBJECT, BODY, SENDER, [RECIPIENT])

    start = time.perf_counter()
    report = profile(enqueue, args.top)
    print(f"\n2. send_mail() x{n} under cProfile: {time.perf_counter() - start:.2f}s")
    print(report)

    EmailJob.objects.all().delete()
    services.enqueue_emails(messages=[message() for _ in range(n)])
    redis.client.flushall()
    catcher.reset()

    def drain() -> None:
        while delivery.deliver_due_jobs(job_id=None):
            pass

    start, cpu = time.perf_counter(), time.process_time()
    report = profile(drain, args.top)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    sent = EmailJob.objects.filter(status=EmailJob.Status.SENT).count()
    print(
        f"\n3. deliver_due_jobs() draining {n} jobs in one process under cProfile: "
        f"{seconds:.2f}s, {sent} sent, {catcher.count()} at the catcher; {cpu:.2f}s of CPU "
        f"(every thread; the profile shows the task's thread only), catcher delay "
        f"{args.accept_delay:g} ms, {args.connections} SMTP connection(s)"
    )
    print(report)
    return 0 if sent == n else 1


if __name__ == "__main__":
    sys.exit(main())

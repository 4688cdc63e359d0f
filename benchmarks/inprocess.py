"""Our code alone, in one process: CPU and wall time a message of a drain or an enqueue.

compare.py measures whole systems (workers, producer, catcher) on a 2-core machine, and its
figures move by 30% from one minute to the next. To tell whether a change to the send path or
the enqueue path is faster, this script runs just that path in one process, one thread, no
Celery worker, and prints microseconds of CPU and of wall time a message: in each process the
median of --repeats runs after an untimed first message, then the median over --rounds processes
(noise about 5% for the drain, more for the quicker bulk call):

  drain   N jobs queued beforehand, then `delivery.deliver_due_jobs()` until all are sent
          (claim, compose, SMTP to smtp-sink or aiosmtpd, journal, settle, metrics)
  bulk    `services.enqueue_emails()` of N messages, until its wake-ups are published
  send    N calls of `EmailMessage.send()` (our e-mail backend, one job each: `send_mail()`)

With several checkouts (`git worktree add /tmp/old <commit>`), each round runs once in a fresh
process in each of them, alternated, so both see the same minutes of the machine:

    .venv/bin/python benchmarks/inprocess.py drain
    .venv/bin/python benchmarks/inprocess.py bulk --messages 2000 --rounds 8
    .venv/bin/python benchmarks/inprocess.py drain --checkouts /tmp/old . --rounds 4
    .venv/bin/python benchmarks/inprocess.py bulk --search-index both --database-url ...

Starts its own redis-server and catcher and a throwaway SQLite database a process (or, with
--database-url, a database created on that PostgreSQL server and dropped at the end); ends and
removes them at the end. A figure, not a test: it exits 1 only if a round did not send or queue
every message.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402
import local_stack  # noqa: E402
import throughput as tp  # noqa: E402
from bench_driver import BODY, RECIPIENT, SENDER, SUBJECT  # noqa: E402

MODES = ("drain", "bulk", "send")


def one_round(
    mode: str, messages: int, repeats: int, database_url: str | None, search_index: bool
) -> dict:
    """Run `mode` `repeats` times in this process against the project in the current directory,
    with the admin's search index built first if `search_index` (PostgreSQL)."""
    with local_stack.project_in_this_process(
        Path.cwd(), name="inprocess", database_url=database_url
    ) as stack:
        from django.core.mail import EmailMessage

        from notifications import delivery, services, wakeups
        from notifications.models import EmailJob

        if search_index:
            from notifications.search_index import create_search_index

            create_search_index()

        def batch() -> list[EmailMessage]:
            return [
                EmailMessage(f"{SUBJECT} #{n}", BODY, SENDER, [RECIPIENT]) for n in range(messages)
            ]

        # One untimed message first: what is timed is a process that has sent before.
        services.enqueue_emails(messages=batch()[:1])
        delivery.deliver_due_jobs(job_id=None)
        wakeups.flush()
        samples = []
        for _ in range(repeats):  # the median of a few in this process, after a warmed-up one
            EmailJob.objects.all().delete()
            samples.append(_timed(mode, batch(), stack.redis, stack.catcher))
        return {
            "wall_us": statistics.median(wall for wall, _, _ in samples) / messages * 1e6,
            "cpu_us": statistics.median(cpu for _, cpu, _ in samples) / messages * 1e6,
            "done": min(done for _, _, done in samples),
        }


def _timed(mode: str, messages: list, redis, catcher) -> tuple[float, float, int]:
    """Wall and CPU seconds of one drain or bulk enqueue, and how many messages it did."""
    from notifications import delivery, services, wakeups
    from notifications.models import EmailJob

    if mode == "drain":
        services.enqueue_emails(messages=messages)
        wakeups.flush()
        redis.client.flushall()  # the wake-ups: nothing consumes them here
        catcher.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        while delivery.deliver_due_jobs(job_id=None):
            pass
        done = catcher.count()
    elif mode == "send":
        wall, cpu = time.perf_counter(), time.process_time()
        for message in messages:
            message.send()
        wakeups.flush()
        done = EmailJob.objects.count()
    else:
        wall, cpu = time.perf_counter(), time.process_time()
        services.enqueue_emails(messages=messages)
        wakeups.flush()
        done = EmailJob.objects.count()
    return time.perf_counter() - wall, time.process_time() - cpu, done


def run_in(checkout: Path, search_index: str, args: argparse.Namespace) -> dict:
    """One round in a fresh process, in `checkout` (this script, that checkout's project)."""
    command = [sys.executable, __file__, args.mode, "--one", "--search-index", search_index]
    command += ["--messages", str(args.messages), "--repeats", str(args.repeats)]
    if args.database_url:
        command += ["--database-url", args.database_url]
    finished = subprocess.run(
        command, cwd=checkout, capture_output=True, text=True, timeout=args.round_timeout
    )
    if finished.returncode != 0:
        raise SystemExit(f"a round in {checkout} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4, help="fresh processes a checkout")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs a process (median)")
    parser.add_argument(
        "--checkouts",
        nargs="+",
        type=Path,
        default=[HERE.parent],
        help="project directories (git worktrees), alternated round by round",
    )
    parser.add_argument("--database-url", help="postgres://USER@HOST:PORT/DB instead of SQLite")
    parser.add_argument(
        "--search-index",
        choices=("off", "on", "both"),
        default="off",
        help="PostgreSQL: with the admin's search index built (on), or alternated (both)",
    )
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.messages <= 20_000 and 1 <= args.rounds <= 20 and 1 <= args.repeats <= 10):
        parser.error("--messages must be 1-20000, --rounds 1-20 and --repeats 1-10")
    if args.one:
        on = args.search_index == "on"
        result = one_round(args.mode, args.messages, args.repeats, args.database_url, on)
        print(json.dumps(result), flush=True)
        return 0
    print(f"{args.mode} of {args.messages} messages, {args.rounds} rounds, {tp.HOST}")
    indexes = ("off", "on") if args.search_index == "both" else (args.search_index,)
    variants = [(checkout, index) for checkout in args.checkouts for index in indexes]
    results: dict[str, list[dict]] = {}
    for number in range(1, args.rounds + 1):
        for checkout, index in variants:
            label = f"{checkout}" + (", search index" if index == "on" else "")
            result = run_in(checkout, index, args)
            results.setdefault(label, []).append(result)
            print(
                f"  round {number} {label}: {result['cpu_us']:.0f} us CPU, "
                f"{result['wall_us']:.0f} us wall a message; {result['done']} done",
                flush=True,
            )
    print(f"\n{'checkout':40s} {'CPU us/msg':>12s} {'wall us/msg':>12s} {'messages/s':>11s}")
    complete = True
    for label, rounds in results.items():
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        wall = statistics.median(r["wall_us"] for r in rounds)
        complete &= all(r["done"] == args.messages for r in rounds)
        print(f"{label:40s} {cpu:12.0f} {wall:12.0f} {1e6 / wall:11,.0f}")
    print(f"\n{compare.machine_summary()}; load average {os.getloadavg()[0]:.2f}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())

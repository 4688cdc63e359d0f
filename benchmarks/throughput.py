"""Throughput of the e-mail queue end to end, against plain smtplib to the same SMTP server.

Prints figures; it is not a test. Everything runs on 127.0.0.1: the script starts its own
redis-server, its own SMTP catcher (aiosmtpd, in a process of its own so it neither shares the
GIL with what is measured nor is started by it) and its own Celery workers, each in a session of
its own, and ends them by pid. The database is a throwaway SQLite file in a temporary directory,
or --database-url (its EmailJob and EmailAttempt rows are deleted between runs!).

    .venv/bin/python benchmarks/throughput.py --messages 2000 --runs 3
    .venv/bin/python benchmarks/throughput.py --accept-delay 20     # a relay taking 20 ms a message

Rows:
  smtplib xP        P processes, one SMTP connection each, sendmail() in a loop.
  queue -c C pf F   `celery -A vertex_email worker -Q email -c C` with prefetch multiplier F;
                    send_mail() N times from this process while the worker runs. Timed from the
                    first send_mail() until the catcher has every message and every job is `sent`.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SENDER = "bench@example.com"
RECIPIENT = "inbox@example.com"
SUBJECT = "Your weekly summary"
BODY = (
    "Hello,\n\n"
    + "This line stands for the text of an ordinary notification e-mail.\n" * 15
    + "\nRegards,\nVertex\n"
)  # about 1 KB, a typical transactional message
MESSAGE_ID_DOMAIN = "vertex-email.local"
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
SUBJECT_LINE = re.compile(rb"^Subject:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- The SMTP catcher (runs as `throughput.py _catcher`, in its own process) ---------------------
class CountingHandler:
    """Accepts every message, counting it by Message-ID; waits `delay` seconds before its 250."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.ids: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}  # Message-ID -> time.time() of its first DATA
        self.subjects: Counter[str] = Counter()  # compare.py numbers each message in its Subject
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        headers = envelope.original_content.split(b"\r\n\r\n", 1)[0]
        found = MESSAGE_ID.search(headers)
        message_id = found.group(1).decode("ascii", "replace") if found else "<none>"
        self.ids[message_id] += 1
        self.first_seen.setdefault(message_id, time.time())
        subject = SUBJECT_LINE.search(headers)
        self.subjects[subject.group(1).decode("utf-8", "replace") if subject else "<none>"] += 1
        self.count += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 2.0.0 Accepted"

    def command(self, line: str) -> dict:
        if line == "STATS":
            return {"count": self.count, "distinct": len(self.ids)}
        if line == "IDS":
            return dict(self.ids)
        if line == "TIMES":
            return self.first_seen
        if line == "SUBJECTS":
            return dict(self.subjects)
        if line == "RESET":
            self.ids.clear()
            self.first_seen.clear()
            self.subjects.clear()
            self.count = 0
            return {}
        return {"error": f"unknown command {line!r}"}


async def _serve_catcher(delay_ms: float) -> None:
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = CountingHandler(delay_ms / 1000)
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(
        lambda: SMTP(handler, hostname="catcher.local", ident="bench catcher"), HOST, 0
    )

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(json.dumps(handler.command(line.decode().strip())).encode() + b"\n")
            await writer.drain()
        writer.close()

    controller = await asyncio.start_server(control, HOST, 0)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = {
        "smtp": smtp.sockets[0].getsockname()[1],
        "control": controller.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    async with smtp, controller:
        await stop.wait()


# --- Processes started here, ended here by pid ------------------------------------------------
STARTED: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_process(args: list[str], **kwargs) -> subprocess.Popen:
    kwargs.setdefault("cwd", ROOT)
    process = subprocess.Popen(args, start_new_session=True, **kwargs)
    STARTED.append(process)
    return process


def group_pids(pgid: int) -> list[int]:
    """Live processes of the process group `pgid` (a process started here and its children)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            rest = stat.read_text().rsplit(")", 1)[1].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def end_process(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group of `process` (its leader), then SIGKILL whatever is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    if group_pids(process.pid):  # the leader's children (e.g. prefork pool processes)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    if process in STARTED:
        STARTED.remove(process)


def end_all() -> None:
    for process in reversed(list(STARTED)):
        end_process(process, grace=10)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])  # utime, stime
    return total / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (for what others used meanwhile)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = start_process(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(host=HOST, port=self.port)
        wait_until(self._answers, 10, "redis-server to answer PING")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("redis-server exited at start")
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def command_counts(self) -> Counter[str]:
        stats = self.client.info("commandstats")
        return Counter({name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()})

    def consumers(self) -> int:
        """Connections blocked in BRPOP: a Celery worker consuming its queue."""
        return sum(1 for client in self.client.client_list() if client.get("cmd") == "brpop")


class Catcher:
    def __init__(self, accept_delay_ms: float) -> None:
        self.process = start_process(
            [sys.executable, __file__, "_catcher", "--accept-delay", str(accept_delay_ms)],
            stdout=subprocess.PIPE,
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 20)
        if not ready:
            raise TimeoutError("the SMTP catcher did not report its ports within 20s")
        ports = json.loads(self.process.stdout.readline() or "{}")
        self.smtp_port = ports["smtp"]
        self.control = socket.create_connection((HOST, ports["control"]), timeout=30)
        self.replies = self.control.makefile("rb")

    def call(self, command: str) -> dict:
        self.control.sendall(command.encode() + b"\n")
        return json.loads(self.replies.readline())

    def count(self) -> int:
        return self.call("STATS")["count"]

    def ids(self) -> dict[str, int]:
        return self.call("IDS")

    def arrival_times(self) -> dict[str, float]:
        """time.time() at which each Message-ID's DATA first arrived."""
        return self.call("TIMES")

    def reset(self) -> None:
        self.call("RESET")

    def cpu(self) -> float:
        return cpu_seconds([self.process.pid])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.replies.close()
            self.control.close()
        end_process(self.process)


class Worker:
    """`celery -A vertex_email worker -Q email -c C`, ready once it is blocked in BRPOP."""

    def __init__(self, env: dict[str, str], concurrency: int, log_path: Path, redis: Redis):
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = start_process(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "vertex_email",
                "worker",
                "-Q",
                "email",
                "-c",
                str(concurrency),
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"bench-{os.getpid()}-{time.monotonic_ns()}@%h",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._ready(redis, concurrency), 60, "the Celery worker to be ready")

    def _ready(self, redis: Redis, concurrency: int) -> bool:
        self.check_alive()
        return redis.consumers() >= 1 and len(group_pids(self.process.pid)) >= 1 + concurrency

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of the main worker process and of its pool processes."""
        children = [pid for pid in group_pids(self.process.pid) if pid != self.process.pid]
        return cpu_seconds([self.process.pid]), cpu_seconds(children)

    def stop(self) -> None:
        end_process(self.process)
        self.log.close()


# --- Measurements -------------------------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    delivered: int
    enqueue_seconds: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core, over the run
    redis_calls: Counter[str] = field(default_factory=Counter)  # broker commands in the run
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    @property
    def enqueue_rate(self) -> float | None:
        return self.delivered / self.enqueue_seconds if self.enqueue_seconds else None


@dataclass
class Scenario:
    label: str
    processes: int
    kind: str  # "smtplib" or "queue"
    prefetch: int = 1
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""


def build_payloads(count: int) -> list[bytes]:
    """The bytes the queue sends for one send_mail(): Django's rendering, a Message-ID each."""
    from email.utils import make_msgid

    from django.core.mail import EmailMessage

    placeholder = "<placeholder-message-id@bench>"
    template = (
        EmailMessage(SUBJECT, BODY, SENDER, [RECIPIENT], headers={"Message-ID": placeholder})
        .message()
        .as_bytes(linesep="\r\n")  # as notifications.composition renders it
    )
    return [
        template.replace(placeholder.encode(), make_msgid(domain=MESSAGE_ID_DOMAIN).encode())
        for _ in range(count)
    ]


def _smtplib_client(port: int, payloads: list[bytes], ready, go, results) -> None:
    import smtplib

    try:
        smtp = smtplib.SMTP(HOST, port, local_hostname="bench.local", timeout=30)
    except OSError as exc:
        ready.put(("error", repr(exc)))
        return
    try:
        smtp.ehlo()
        ready.put(("ready", os.getpid()))
        if not go.wait(120):
            return
        cpu = time.process_time()
        for payload in payloads:
            smtp.sendmail(SENDER, [RECIPIENT], payload)
        results.put(("done", time.process_time() - cpu))
    except Exception as exc:
        results.put(("error", repr(exc)))
    finally:
        with contextlib.suppress(Exception):
            smtp.quit()


def run_smtplib(catcher: Catcher, processes: int, payloads: list[bytes], timeout: float) -> Run:
    mp = multiprocessing.get_context("spawn")
    ready, results, go = mp.Queue(), mp.Queue(), mp.Event()
    catcher.reset()
    clients = [
        mp.Process(
            target=_smtplib_client,
            args=(catcher.smtp_port, payloads[i::processes], ready, go, results),
            daemon=True,
        )
        for i in range(processes)
    ]
    for client in clients:
        client.start()
    try:
        for _ in clients:
            state, detail = ready.get(timeout=60)
            if state != "ready":
                raise RuntimeError(f"an smtplib client could not connect: {detail}")
        catcher_cpu, busy, own = catcher.cpu(), machine_busy_seconds(), time.process_time()
        start = time.perf_counter()
        go.set()
        outcomes = [results.get(timeout=timeout) for _ in clients]
        seconds = time.perf_counter() - start
        catcher_cpu = catcher.cpu() - catcher_cpu
        busy, own = machine_busy_seconds() - busy, time.process_time() - own
        errors = [detail for state, detail in outcomes if state != "done"]
        if errors:
            raise RuntimeError(f"an smtplib client failed: {errors[0]}")
        clients_cpu = sum(detail for _, detail in outcomes)
        run = Run(
            seconds=seconds,
            delivered=catcher.count(),
            cpu={
                "catcher": catcher_cpu / seconds,
                "clients": clients_cpu / seconds,
                "others": max(0.0, busy - catcher_cpu - clients_cpu - own) / seconds,
            },
        )
        ids = catcher.ids()
        if len(ids) != len(payloads) or any(n != 1 for n in ids.values()):
            run.problems.append(f"catcher saw {len(ids)} distinct ids for {len(payloads)} sent")
        return run
    finally:
        for client in clients:
            client.join(10)
            if client.is_alive():
                client.kill()
                client.join(5)


class QueueBench:
    """The system end to end: Django's send_mail() here, Celery workers, the catcher."""

    def __init__(self, env: dict[str, str], redis: Redis, catcher: Catcher, workdir: Path):
        self.env, self.redis, self.catcher, self.workdir = env, redis, catcher, workdir

    def clear(self) -> None:
        from notifications.models import EmailAttempt, EmailJob

        EmailAttempt.objects.all().delete()
        EmailJob.objects.all().delete()
        self.redis.client.flushall()
        self.catcher.reset()

    def run(self, count: int, concurrency: int, prefetch: int, timeout: float, tag: str) -> Run:
        from django.core.mail import send_mail

        from notifications.models import EmailJob

        self.clear()
        env = {**self.env, "CELERY_WORKER_PREFETCH_MULTIPLIER": str(prefetch)}
        worker = Worker(env, concurrency, self.workdir / f"worker-{tag}.log", self.redis)
        try:
            self.redis.client.config_resetstat()
            before = self._cpu(worker)
            deadline = time.monotonic() + timeout
            start = time.perf_counter()
            for _ in range(count):
                send_mail(SUBJECT, BODY, SENDER, [RECIPIENT])
            enqueue_seconds = time.perf_counter() - start

            def delivered() -> bool:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not all {count} messages delivered within {timeout:.0f}s")
                worker.check_alive()
                return (
                    self.catcher.count() >= count
                    and EmailJob.objects.filter(status=EmailJob.Status.SENT).count() == count
                )

            wait_until(delivered, timeout + 1, "every message", interval=0.02)
            seconds = time.perf_counter() - start
            after = self._cpu(worker)
            used = {name: after[name] - before[name] for name in before}
            used["others"] = max(0.0, used.pop("machine") - sum(used.values()))
            run = Run(
                seconds=seconds,
                delivered=count,
                enqueue_seconds=enqueue_seconds,
                cpu={name: value / seconds for name, value in used.items()},
                redis_calls=self.redis.command_counts(),
            )
            time.sleep(0.3)  # a late duplicate, if there were one, would arrive by now
            run.problems = self.verify(count)
            return run
        finally:
            worker.stop()

    def _cpu(self, worker: Worker) -> dict[str, float]:
        main, pool = worker.cpu()
        return {
            "catcher": self.catcher.cpu(),
            "redis": cpu_seconds([self.redis.process.pid]),
            "worker": main,
            "pool": pool,
            "bench": time.process_time(),
            "machine": machine_busy_seconds(),
        }

    def verify(self, count: int) -> list[str]:
        from django.db.models import Count

        from notifications.models import EmailAttempt, EmailJob

        problems = []
        ids = self.catcher.ids()
        twice = sum(1 for n in ids.values() if n > 1)
        if len(ids) != count or twice:
            problems.append(
                f"catcher: {len(ids)} distinct Message-IDs, {twice} seen more than once"
            )
        if set(ids) != set(EmailJob.objects.values_list("message_id", flat=True)):
            problems.append("catcher's Message-IDs differ from the jobs'")
        jobs = EmailJob.objects.count()
        not_sent = EmailJob.objects.exclude(status=EmailJob.Status.SENT).count()
        if jobs != count or not_sent:
            problems.append(f"{jobs} jobs, {not_sent} not sent")
        attempts = EmailAttempt.objects.filter(outcome=EmailAttempt.Outcome.SENT).count()
        per_job = Counter(
            EmailAttempt.objects.values("job_id")
            .annotate(n=Count("id"))
            .values_list("n", flat=True)
        )
        if attempts != count or set(per_job) != {1} or per_job[1] != count:
            problems.append(f"attempt rows per job: {dict(per_job)} ({attempts} sent)")
        return problems


# --- Report -------------------------------------------------------------------------------------
def _range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"


def print_table(scenarios: list[Scenario]) -> None:
    smtplib_median = {
        s.processes: statistics.median(r.rate for r in s.runs)
        for s in scenarios
        if s.kind == "smtplib" and s.runs
    }
    rows = [("system", "delivered/s median (min-max)", "enqueue calls/s", "ratio vs smtplib")]
    for s in scenarios:
        if not s.runs:
            rows.append((s.label, f"skipped: {s.skipped}", "", ""))
            continue
        rates = [r.rate for r in s.runs]
        enqueue = [r.enqueue_rate for r in s.runs if r.enqueue_rate]
        reference = smtplib_median.get(s.processes)
        ratio = f"{statistics.median(rates) / reference:.2f}" if reference else "n/a"
        rows.append(
            (s.label, _range(rates), _range(enqueue), f"{ratio} (vs smtplib x{s.processes})")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))


def print_cpu(scenarios: list[Scenario]) -> None:
    print(
        f"\nCPU, % of one core over the run, median of runs ({os.cpu_count()} cores = "
        f"{100 * (os.cpu_count() or 1)}%; 'others' = processes this script did not start):"
    )
    for s in scenarios:
        if s.runs:
            names = s.runs[0].cpu
            shares = {n: statistics.median(r.cpu[n] for r in s.runs) * 100 for n in names}
            per_message = statistics.median(
                sum(v for n, v in r.cpu.items() if n != "others") / r.rate * 1000 for r in s.runs
            )
            print(
                f"  {s.label:<26} "
                + "  ".join(f"{n} {v:3.0f}%" for n, v in shares.items())
                + f"  | ours: {per_message:.1f} ms CPU a message"
            )
    print("\nRedis commands per delivered message (all processes, median of runs):")
    for s in scenarios:
        if s.runs and s.runs[0].redis_calls:
            names = {name for r in s.runs for name in r.redis_calls}
            per = {
                n: statistics.median(r.redis_calls[n] / r.delivered for r in s.runs) for n in names
            }
            top = sorted(per.items(), key=lambda item: -item[1])[:6]
            print(
                f"  {s.label:<26} {sum(per.values()):.1f}: "
                + ", ".join(f"{n} {v:.2f}" for n, v in top)
            )


def environment_summary() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10
    ).stdout.split()
    redis_version = next((w.split("=")[1] for w in server if w.startswith("v=")), "?")
    packages = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("Django", "celery", "kombu", "billiard", "redis", "aiosmtpd")
    )
    from django.conf import settings

    return (
        f"CPUs: {os.cpu_count()} ({usable} usable) {model}; load average "
        + " ".join(f"{load:.2f}" for load in os.getloadavg())
        + f"\nPython {platform.python_version()} on {platform.platform()}\n"
        f"{packages}, redis-server {redis_version}, SQLite {sqlite3.sqlite_version}\n"
        f"code: {git_state()}; Django DEBUG={settings.DEBUG}"
    )


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "notifications", "vertex_email").splitlines()
    head = git("rev-parse", "--short", "HEAD") or "?"
    return f"git {head}" + (
        f" + {len(changed)} uncommitted change(s) in the app" if changed else ""
    )


# --- Main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, choices=range(1, 6), help="runs (1-5)")
    parser.add_argument("--concurrency", type=int, default=2, help="celery worker -c")
    parser.add_argument(
        "--prefetch", type=int, nargs="+", default=[1, 4], help="prefetch multipliers to try"
    )
    parser.add_argument(
        "--accept-delay", type=float, default=0.0, help="ms the catcher waits before each 250"
    )
    parser.add_argument(
        "--database-url", help="instead of a throwaway SQLite file; its email jobs get DELETED"
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument(
        "--time-limit", type=float, default=840.0, help="seconds for everything; later runs skip"
    )
    parser.add_argument("--no-smtplib", action="store_true", help="skip the smtplib rows")
    parser.add_argument("--no-queue", action="store_true", help="skip the queue rows")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 100_000:
        parser.error("--messages must be between 1 and 100000")
    if not 1 <= args.concurrency <= 16:
        parser.error("--concurrency must be between 1 and 16")
    return args


def run_scenarios(
    args: argparse.Namespace,
    scenarios: list[Scenario],
    catcher: Catcher,
    queue: QueueBench,
    began: float,
) -> int:
    """Run each scenario --runs times within the time limit; returns how many runs failed."""
    errors = 0
    for scenario in scenarios:
        for index in range(args.runs):
            remaining = args.time_limit - (time.monotonic() - began)
            if remaining < 20:
                scenario.skipped = scenario.skipped or "out of --time-limit"
                break
            timeout = min(args.run_timeout, remaining - 15)
            try:
                if scenario.kind == "smtplib":
                    payloads = build_payloads(args.messages)
                    run = run_smtplib(catcher, scenario.processes, payloads, timeout)
                else:
                    tag = f"pf{scenario.prefetch}-{index + 1}"
                    run = queue.run(
                        args.messages, args.concurrency, scenario.prefetch, timeout, tag
                    )
            except Exception as error:  # report it, go on with the next scenario
                errors += 1
                scenario.skipped = f"run {index + 1} failed"
                print(f"  {scenario.label} run {index + 1} FAILED: {error}", flush=True)
                break
            scenario.runs.append(run)
            enqueue = f", enqueue loop {run.enqueue_seconds:.2f}s" if run.enqueue_seconds else ""
            ok = "each Message-ID once" + (
                ", 1 attempt per job" if scenario.kind == "queue" else ""
            )
            print(
                f"  {scenario.label} run {index + 1}: {run.delivered} in {run.seconds:.2f}s "
                f"= {run.rate:.0f}/s{enqueue}; {'; '.join(run.problems) or ok}",
                flush=True,
            )
    return errors


def _on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="vertex-bench-"))
    catcher = None
    try:
        redis = Redis(workdir)
        catcher = Catcher(args.accept_delay)
        database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "vertex_email.settings",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": redis.url,
            "SMTP_HOST": HOST,
            "SMTP_PORT": str(catcher.smtp_port),
            "DJANGO_ENV": "development",
            "DJANGO_DEBUG": "False",  # as deployed: no query log, no debug cursors
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=180,
        )
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        import vertex_email  # noqa: F401 - the Celery app, so send_mail() publishes to our redis

        print(environment_summary())
        print(
            f"{args.messages} messages of {len(build_payloads(1)[0])} bytes a run, "
            f"{args.runs} run(s), catcher accept delay {args.accept_delay:g} ms, "
            f"database {'SQLite (throwaway)' if not args.database_url else 'from --database-url'}"
        )
        scenarios = []
        if not args.no_smtplib:
            scenarios += [Scenario("smtplib x1 (1 conn)", 1, "smtplib")]
            if args.concurrency != 1:
                scenarios += [
                    Scenario(
                        f"smtplib x{args.concurrency} (1 conn each)", args.concurrency, "smtplib"
                    )
                ]
        if not args.no_queue:
            scenarios += [
                Scenario(f"queue -c {args.concurrency} prefetch {p}", args.concurrency, "queue", p)
                for p in args.prefetch
            ]
        queue = QueueBench(env, redis, catcher, workdir)
        errors = run_scenarios(args, scenarios, catcher, queue, began)
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print_table(scenarios)
        print_cpu(scenarios)
        failed = errors or any(run.problems for s in scenarios for run in s.runs)
        return 1 if failed else 0
    finally:
        if catcher is not None:
            catcher.close()
        end_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_catcher"]:
        catcher_args = argparse.ArgumentParser()
        catcher_args.add_argument("--accept-delay", type=float, default=0.0)
        asyncio.run(_serve_catcher(catcher_args.parse_args(sys.argv[2:]).accept_delay))
    else:
        sys.exit(main(sys.argv[1:]))

"""Our queue beside django-post_office, django-celery-email, django-mailer and plain smtplib.

One command, bounded in messages and time, prints the tables of docs/PERFORMANCE.md:

    .venv/bin/python benchmarks/compare.py              # 2,000 messages a run, 3 runs (~15 min)
    .venv/bin/python benchmarks/compare.py --quick      # 300 messages, 1 run: a smoke test
    .venv/bin/python benchmarks/compare.py --only ours --sections throughput,latency
    .venv/bin/python benchmarks/compare.py --database-url postgres://postgres@127.0.0.1:5432/postgres

Everything stays on 127.0.0.1. The script starts and ends by pid: a redis-server of its own, the
catchers (Postfix's smtp-sink unpacked from Debian's .deb for the fast runs, the aiosmtpd catcher
of throughput.py for the 20 ms relay and the latency runs), each system's Celery worker or
back-to-back drain command. The peers run from throwaway virtualenvs (see peers.py), each with
its own generated Django project and SQLite database in WAL mode; ours runs from this checkout's
.venv with DEBUG off. Each run's producer is bench_driver.py in the system's own venv.
With --database-url postgres://..., every system gets a fresh database of its own on that
PostgreSQL server instead, dropped at the end (databases.py).

Sections (--sections):
  throughput  N messages: send_mail() N times while the consumer runs, timed from the first call
              until the catcher has every message and the system's own rows say sent
  drain       N messages queued in one bulk call first, then the consumer started: timed from
              the first message at the catcher to the last (the sending side alone)
  enqueue     with no consumer: send_mail() N times on one thread; N messages in one bulk call;
              each in a fresh process, and in one that made one such call before (untimed)
  slow        the catcher takes 20 ms before each 250 reply; 1,000 messages; concurrency varied
              (ours: -c 2 with EMAIL_SMTP_CONNECTIONS=10 is 20 connections, as peers' -c 20)
  latency     ours, idle queue: send_mail() returning -> message at the catcher, p50/p99
  memory      ours, worker PSS (summed over its processes) after 2,000 and after 20,000 messages
  scale       ours, a table of --scale-jobs jobs (1,000,000): each operator read (stats, the API,
              /metrics, the admin's list, filters and searches) and a purge, by scale_commands.py
              on a database of its own (about 5 minutes on SQLite, 10 on PostgreSQL)
"""

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import databases
import peers
import throughput as tp
from peers import DRIVER, HOST, System

SECTIONS = ("throughput", "drain", "enqueue", "slow", "latency", "memory", "scale")
SCALE_READ = re.compile(r"^  (.+?)\s+(\d[\d.]*)\s+<200 ms: (yes|no)$")
SYSTEMS = ("ours", "post_office", "post_office-celery", "celery_email", "mailer")
LOAD_WARNING = 1.5
SUBJECT = re.compile(rb"^Subject:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
SINK_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vertex-email-bench"


def log(message: str) -> None:
    print(message, flush=True)


# --- Catchers -----------------------------------------------------------------------------------
def find_smtp_sink(explicit: str | None) -> tuple[list[str], dict[str, str]] | None:
    """Postfix's smtp-sink: --smtp-sink, on the PATH, or unpacked from Debian's postfix .deb into
    ~/.cache/vertex-email-bench (apt-get download + dpkg -x; no mail system is installed)."""
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(p) for p in (shutil.which("smtp-sink"), "/usr/sbin/smtp-sink") if p]
    unpacked = SINK_CACHE / "postfix" / "usr" / "sbin" / "smtp-sink"
    candidates.append(unpacked)
    if not explicit and not any(c.exists() for c in candidates):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            debs = SINK_CACHE / "debs"
            debs.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["apt-get", "download", "postfix"], cwd=debs, timeout=300, capture_output=True
            )
            for deb in sorted(debs.glob("postfix_*.deb")):
                subprocess.run(
                    ["dpkg", "-x", str(deb), str(SINK_CACHE / "postfix")], check=True, timeout=120
                )
    for candidate in candidates:
        if candidate.exists():
            libs = candidate.parent.parent / "lib" / "postfix"
            env = {**os.environ}
            if libs.is_dir():
                env["LD_LIBRARY_PATH"] = str(libs)
            check = subprocess.run(
                [str(candidate), "-h", "x", "bad-address-for-usage"],
                env=env,
                capture_output=True,
                timeout=10,
            )
            if b"error while loading shared libraries" not in check.stderr:
                return [str(candidate)], env
            log(f"  {candidate} does not run: {check.stderr.decode(errors='replace').strip()}")
    return None


class SinkCatcher:
    """Postfix's smtp-sink in C: `-c` counters to a file (live count), `-D` every message appended
    to a dump file (Message-IDs, read after a run for the exactly-once check)."""

    name = "smtp-sink"

    def __init__(self, command: list[str], env: dict[str, str], workdir: Path) -> None:
        self.dir = workdir / "sink"
        self.dir.mkdir()
        # smtp-sink drops to `nobody`, which writes the dump: a throwaway directory of its own
        os.chmod(workdir, 0o711)  # noqa: S103
        os.chmod(self.dir, 0o777)  # noqa: S103
        self.dump = self.dir / "messages.dump"
        self.counters = self.dir / "counters"
        self.smtp_port = tp.free_port()
        drop = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.out = open(self.counters, "wb")  # noqa: SIM115 - closed in close()
        self.process = tp.start_process(
            [*command, *drop, "-c", "-D", str(self.dump), f"{HOST}:{self.smtp_port}", "100"],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        tp.wait_until(self._answers, 10, "smtp-sink to answer")
        self.base, self.offset = self._messages(), 0

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited: {self.counters.read_text(errors='replace')}")
        try:
            with socket.create_connection((HOST, self.smtp_port), timeout=2) as sock:
                return sock.recv(64).startswith(b"220")
        except OSError:
            return False

    def _messages(self) -> int:
        with open(self.counters, "rb") as counters:
            counters.seek(max(0, counters.seek(0, os.SEEK_END) - 200))
            found = re.findall(rb"mesg=(\d+)", counters.read())
        return int(found[-1]) if found else 0

    def count(self) -> int:
        return self._messages() - self.base

    def reset(self) -> None:
        self.base = self._messages()
        self.offset = self.dump.stat().st_size if self.dump.exists() else 0

    def _dump(self) -> bytes:
        """What arrived since the last reset."""
        if not self.dump.exists():
            return b""
        with open(self.dump, "rb") as dump:
            dump.seek(self.offset)
            return dump.read()

    def ids(self) -> dict[str, int]:
        return dict(
            Counter(m.decode("ascii", "replace") for m in tp.MESSAGE_ID.findall(self._dump()))
        )

    def subjects(self) -> dict[str, int]:
        return dict(Counter(s.decode("utf-8", "replace") for s in SUBJECT.findall(self._dump())))

    def cpu(self) -> float:
        return tp.cpu_seconds([self.process.pid])

    def close(self) -> None:
        tp.end_process(self.process)
        self.out.close()


class AioCatcher(tp.Catcher):
    name = "aiosmtpd"

    def subjects(self) -> dict[str, int]:
        return self.call("SUBJECTS")


# --- Consumers ----------------------------------------------------------------------------------
class Worker:
    """`celery -A APP worker -c C -P POOL [-Q QUEUE]` of a system, ready once it consumes."""

    def __init__(
        self,
        system: System,
        env: dict,
        concurrency: int,
        pool: str,
        log_path: Path,
        redis: tp.Redis,
    ) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [
            system.python,
            "-m",
            "celery",
            "-A",
            system.celery_app,
            "worker",
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"bench-{os.getpid()}-{time.monotonic_ns()}@%h",
        ]
        if system.queue:
            args += ["-Q", system.queue]
        self.process = tp.start_process(
            args, cwd=system.cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        children = concurrency if pool == "prefork" else 0
        tp.wait_until(lambda: self._ready(redis, children), 90, "the Celery worker to be ready")

    def _ready(self, redis: tp.Redis, children: int) -> bool:
        self.check_alive()
        return redis.consumers() >= 1 and len(tp.group_pids(self.process.pid)) >= 1 + children

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError("the Celery worker exited:\n" + "\n".join(tail))

    def pids(self) -> list[int]:
        return tp.group_pids(self.process.pid)

    def stop(self) -> None:
        tp.end_process(self.process)
        self.log.close()


class DrainLoop(threading.Thread):
    """A cron-like command (post_office's send_queued_mail, django-mailer's send_mail) started
    again as soon as it ends, until stopped: the closest a command gets to a running worker."""

    def __init__(self, system: System, env: dict, log_path: Path) -> None:
        super().__init__(daemon=True)
        self.system, self.env, self.log_path = system, env, log_path
        self.halt = threading.Event()
        self.runs = 0
        self.failures: list[str] = []
        self.process: subprocess.Popen | None = None

    def run(self) -> None:
        with open(self.log_path, "ab") as out:
            while not self.halt.is_set():
                self.process = tp.start_process(
                    self.system.drain,
                    cwd=self.system.cwd,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                code = self.process.wait()
                tp.end_process(self.process, grace=1)
                self.runs += 1
                if code:
                    self.failures.append(f"exit {code}")
                    time.sleep(0.2)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        if self.process is not None:
            tp.end_process(self.process, grace=5)


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


# --- One run ------------------------------------------------------------------------------------
@dataclass
class Result:
    seconds: float = 0.0
    count: int = 0
    enqueue_seconds: float | None = None
    pss_mib: float | None = None
    processes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def enqueue_rate(self) -> float | None:
        return self.count / self.enqueue_seconds if self.enqueue_seconds else None


class Bench:
    def __init__(self, args, workdir: Path, redis: tp.Redis) -> None:
        self.args, self.workdir, self.redis = args, workdir, redis
        self.began = time.monotonic()
        self.tag = 0

    def remaining(self) -> float:
        return self.args.time_limit - (time.monotonic() - self.began)

    def _driver(self, system: System, env: dict, mode: str, count: int) -> subprocess.Popen:
        driver = tp.start_process(
            [system.python, str(DRIVER), mode, str(count)],
            cwd=system.cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        ready, _, _ = select.select([driver.stdout], [], [], 120)
        line = driver.stdout.readline() if ready else b""
        if line.strip() != b"READY":
            tp.end_process(driver)
            raise RuntimeError(f"the driver did not start ({line!r}); exit {driver.poll()}")
        return driver

    @staticmethod
    def _go(driver: subprocess.Popen) -> None:
        driver.stdin.write(b"GO\n")
        driver.stdin.flush()

    @staticmethod
    def _result(driver: subprocess.Popen, timeout: float) -> dict:
        ready, _, _ = select.select([driver.stdout], [], [], timeout)
        line = driver.stdout.readline() if ready else b""
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver.wait(10)
        tp.end_process(driver, grace=5)
        if not line:
            raise RuntimeError("the driver gave no result")
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"driver: {result['error']}")
        return result

    def end_to_end(
        self,
        system: System,
        catcher,
        count: int,
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        timeout: float | None = None,
        backlog: bool = False,
        extra_env: dict | None = None,
    ) -> Result:
        """send_mail() `count` times while the consumer runs; until every message is at the
        catcher and, where the system keeps rows, every row says sent.

        backlog: first queue `count` messages in one bulk call with no consumer running, then
        start the consumer; timed from the first message at the catcher to the last (so neither
        the enqueue nor the consumer's start-up counts)."""
        timeout = min(timeout or self.args.run_timeout, self.remaining() - 10)
        if timeout < 10:
            raise TimeoutError("out of --time-limit")
        self.tag += 1
        self.redis.client.flushall()
        env = {**system.environment(catcher.smtp_port, self.redis.url), **(extra_env or {})}
        token = env["BENCH_TOKEN"] = f"{os.getpid()}r{self.tag}"  # numbers this run's subjects
        if self.args.profile_dir:  # a cProfile of the producer, per run
            env["BENCH_PROFILE"] = str(Path(self.args.profile_dir) / f"{system.key}-{token}.prof")
        env["BENCH_BULK"] = system.bulk
        log_path = self.workdir / f"{system.key}-{self.tag}.log"
        worker = drain = driver = None
        try:
            # the driver empties the tables before READY
            driver = self._driver(system, env, "bulk" if backlog else "send_mail", count)
            produced = None
            if backlog:
                self._go(driver)
                produced = self._result(driver, timeout)
            catcher.reset()

            def consume() -> None:
                nonlocal worker, drain
                if system.celery_app:
                    worker = Worker(system, env, concurrency, pool, log_path, self.redis)
                else:
                    drain = DrainLoop(system, env, log_path)
                    drain.start()

            if not backlog:
                consume()
            busy = tp.machine_busy_seconds()
            deadline = time.monotonic() + timeout
            start = time.perf_counter()
            if backlog:
                consume()
            else:
                self._go(driver)
            first = last = None
            while True:
                if produced is None and select.select([driver.stdout], [], [], 0)[0]:
                    produced = self._result(driver, 5)
                if worker:
                    worker.check_alive()
                at_catcher = catcher.count()
                now = time.perf_counter()
                if first is None and at_catcher:
                    first = now
                if last is None and at_catcher >= count:
                    last = now
                if last is not None and produced is not None:
                    done = system.finished()
                    if done is None or done >= count:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{at_catcher} of {count} at the catcher after {timeout:.0f}s "
                        f"(rows sent: {system.finished()})"
                    )
                time.sleep(0.02)
            seconds = time.perf_counter() - start
            busy = tp.machine_busy_seconds() - busy
            if backlog:  # from the first message at the catcher to the last
                result = Result(
                    seconds=max(last - first, 1e-3) * count / max(count - 1, 1), count=count
                )
                result.notes.append(f"first message {first - start:.1f}s after the start")
            else:
                result = Result(seconds=seconds, count=count, enqueue_seconds=produced["seconds"])
                result.notes.append(
                    f"producer on CPU {produced['cpu'] / produced['seconds']:.0%} of its loop"
                )
            if worker:
                pids = worker.pids()
                result.pss_mib = pss_kib(pids) / 1024
                result.processes = len(pids)
            result.extra["machine_cpu"] = busy / seconds
            time.sleep(0.5)  # a late duplicate would arrive by now
            result.problems = system.verify(catcher.ids(), catcher.subjects(), count, token)
            if drain:
                result.notes.append(f"{drain.runs + 1} command runs")
                if drain.failures:
                    result.problems.append(f"drain command failed: {drain.failures[:3]}")
            return result
        finally:
            if drain:
                drain.stop()
            if worker:
                worker.stop()
            if driver and driver.poll() is None:
                tp.end_process(driver, grace=2)

    def enqueue_only(
        self, system: System, catcher, mode: str, count: int, *, warm: bool = False
    ) -> Result:
        """No consumer: how fast the producer side alone takes messages; `warm`: in a process
        that made one such call before (untimed)."""
        self.redis.client.flushall()
        env = system.environment(catcher.smtp_port, self.redis.url)
        env["BENCH_BULK"] = system.bulk
        if warm:
            env["BENCH_WARM_UP"] = "1"
        driver = self._driver(system, env, mode, count)
        self._go(driver)
        produced = self._result(driver, min(self.args.run_timeout, self.remaining()))
        result = Result(
            seconds=produced["seconds"], count=count, enqueue_seconds=produced["seconds"]
        )
        result.notes.append(f"on CPU {produced['cpu'] / produced['seconds']:.0%} of the call")
        self.redis.client.flushall()
        return result

    def latency(self, system: System, catcher: AioCatcher, count: int) -> Result:
        self.redis.client.flushall()
        env = system.environment(catcher.smtp_port, self.redis.url)
        driver = self._driver(system, env, "latency", count)
        worker = Worker(system, env, 2, "prefork", self.workdir / "latency.log", self.redis)
        try:
            catcher.reset()
            time.sleep(1)  # let the worker's start-up recovery task pass
            self._go(driver)
            produced = self._result(driver, min(self.args.run_timeout, self.remaining()))
        finally:
            worker.stop()
        arrived = catcher.arrival_times()
        delays = sorted(
            (arrived[mid] - returned) * 1000
            for mid, returned in produced["samples"]
            if mid in arrived
        )
        result = Result(count=len(delays))
        result.extra["p50"] = statistics.median(delays) if delays else None
        result.extra["p99"] = (
            delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else None
        )
        result.extra["max"] = delays[-1] if delays else None
        if len(delays) != count:
            result.problems.append(f"{count - len(delays)} of {count} never reached the catcher")
        if produced.get("not_sent_within_5s"):
            result.problems.append(f"{produced['not_sent_within_5s']} not sent within 5 s")
        return result


# --- Report -------------------------------------------------------------------------------------
def fmt(values: list[float]) -> str:
    values = [v for v in values if v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"\n{title}\n"]
    for index, row in enumerate([header, *rows]):
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@dataclass
class Row:
    label: str
    kind: str  # smtplib | ours | peer | diag
    processes: int = 0
    results: list[Result] = field(default_factory=list)
    failed: str = ""
    note: str = ""
    checked: bool = True  # delivery verified (exactly-once at the catcher, rows)

    def rates(self) -> list[float]:
        return [r.rate for r in self.results]

    def median(self) -> float:
        return statistics.median(self.rates()) if self.results else 0.0

    def cells(self) -> tuple[str, str, str]:
        if not self.results:
            return (f"failed: {self.failed}" if self.failed else "skipped", "", self.note)
        enqueue = [r.enqueue_rate for r in self.results if r.enqueue_rate]
        notes = [self.note] if self.note else []
        pss = [r.pss_mib for r in self.results if r.pss_mib]
        if pss:
            notes.append(
                f"worker PSS {statistics.median(pss):.0f} MiB "
                f"({self.results[0].processes} processes)"
            )
        extra = [n for r in self.results[:1] for n in r.notes]
        problems = sorted({p for r in self.results for p in r.problems})
        verdict = (
            ("PROBLEMS: " + "; ".join(problems))
            if problems
            else ("each Message-ID once" if self.checked and self.kind != "smtplib" else "")
        )
        notes += extra + ([verdict] if verdict else [])
        if self.failed:
            notes.append(f"a later run failed: {self.failed}")
        return (fmt(self.rates()), fmt(enqueue) if enqueue else "-", "; ".join(notes))


def ratio_notes(rows: list[Row]) -> None:
    """Ours against the fastest peer and against smtplib with as many processes."""
    peers_best = max(
        (r for r in rows if r.kind == "peer" and r.results), key=Row.median, default=None
    )
    smtplib = {r.processes: r.median() for r in rows if r.kind == "smtplib" and r.results}
    for row in rows:
        if row.kind != "ours" or not row.results:
            continue
        parts = []
        if peers_best:
            parts.append(f"{row.median() / peers_best.median():.2f}x the fastest peer")
        if row.processes in smtplib:
            parts.append(f"{row.median() / smtplib[row.processes]:.0%} of smtplib x{row.processes}")
        row.note = "; ".join(filter(None, [row.note, ", ".join(parts)]))


def machine_summary() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    memory = next(
        (
            int(line.split()[1]) // 1024 // 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "?",
    )
    import platform
    import sqlite3

    return (
        f"{os.cpu_count()} CPUs ({model}), {memory} GiB; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; {platform.platform()}"
    )


def load_line(when: str) -> str:
    load = os.getloadavg()
    warning = (
        f"  WARNING: load above {LOAD_WARNING}: other work shares the CPUs, figures are low"
        if load[0] > LOAD_WARNING
        else ""
    )
    return f"load average {when}: {' '.join(f'{x:.2f}' for x in load)}{warning}"


def wait_quiet(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] > LOAD_WARNING and time.monotonic() < deadline:
        log(f"  waiting for a quieter machine: load {os.getloadavg()[0]:.2f}")
        time.sleep(min(30, max(1, deadline - time.monotonic())))


# --- Main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 300 messages, 1 run, 200 slow, 50 latency, 3,000 memory",
    )
    parser.add_argument("--messages", type=int, help="messages a throughput run (2000)")
    parser.add_argument("--runs", type=int, help="runs of each throughput row (3)")
    parser.add_argument("--slow-messages", type=int, help="messages a 20 ms relay run (1000)")
    parser.add_argument("--accept-delay", type=float, default=20.0, help="ms, the slow relay")
    parser.add_argument("--latency-samples", type=int, help="latency samples (200)")
    parser.add_argument("--memory-messages", type=int, help="the large memory run (20000)")
    parser.add_argument("--scale-jobs", type=int, help="jobs in the scale section's table (1e6)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=",".join(SECTIONS))
    parser.add_argument("--only", default=",".join(SYSTEMS), help=",".join(SYSTEMS))
    parser.add_argument("--smtp-sink", help="path of Postfix's smtp-sink (else found/unpacked)")
    parser.add_argument("--no-sink", action="store_true", help="aiosmtpd for every run")
    parser.add_argument("--venv-dir", help="keep the peers' venvs here between invocations")
    parser.add_argument(
        "--database-url",
        "--postgres",
        metavar="postgres://USER[:PW]@HOST:PORT/DB",
        help="PostgreSQL instead of SQLite: each system gets a database of its own created on "
        "this server (from DB) and dropped at the end; USER needs CREATEDB",
    )
    parser.add_argument("--run-timeout", type=float, default=240.0, help="seconds a run")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1800.0,
        help="seconds for everything; what does not fit is skipped",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help=f"wait up to this many seconds for load < {LOAD_WARNING} first",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--profile-dir", help="write a cProfile of each run's producer here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, databases) and PostgreSQL's"
    )
    args = parser.parse_args(argv)
    quick = {
        "messages": 300,
        "runs": 1,
        "slow_messages": 200,
        "latency_samples": 50,
        "memory_messages": 3000,
        "scale_jobs": 20_000,
    }
    full = {
        "messages": 2000,
        "runs": 3,
        "slow_messages": 1000,
        "latency_samples": 200,
        "memory_messages": 20000,
        "scale_jobs": 1_000_000,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sections = [s for s in args.sections.split(",") if s]
    args.only = [s for s in args.only.split(",") if s]
    if unknown := set(args.sections) - set(SECTIONS) or set(args.only) - set(SYSTEMS):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if not (
        1 <= args.messages <= 50_000
        and 1 <= args.memory_messages <= 50_000
        and 1 <= args.slow_messages <= 10_000
        and 1 <= args.runs <= 5
        and 1 <= args.latency_samples <= 2_000
        and 1_000 <= args.scale_jobs <= 2_000_000
    ):
        parser.error("counts out of bounds (messages <= 50,000, runs <= 5, ...)")
    return args


def _on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    try:
        stores = databases.server(args.database_url)
    except Exception as error:  # psycopg's errors (no server, bad password) as much as ours
        sys.exit(f"--database-url: {error}")
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    log(machine_summary())
    log(f"database: {stores.summary}")
    log(f"ours: {tp.git_state()}")
    log(load_line("at the start"))
    workdir = Path(tempfile.mkdtemp(prefix="vertex-compare-"))
    venv_root = Path(args.venv_dir) if args.venv_dir else workdir / "venvs"
    venv_root.mkdir(parents=True, exist_ok=True)
    catchers: list = []
    record: dict = {
        "args": vars(args),
        "machine": machine_summary(),
        "database": stores.summary,
        "sections": {},
    }
    failed = False
    try:
        redis = tp.Redis(workdir)
        bench = Bench(args, workdir, redis)
        import django
        from django.conf import settings

        settings.configure()  # enough to render the smtplib rows' messages
        django.setup()
        sink = None if args.no_sink else find_smtp_sink(args.smtp_sink)
        if sink:
            fast = SinkCatcher(*sink, workdir)
        else:
            log("  smtp-sink not available: the aiosmtpd catcher takes every run")
            fast = AioCatcher(0)
        catchers.append(fast)
        log(f"catcher for the fast runs: {fast.name}")

        log("setting up the systems")
        systems: dict[str, System] = {}
        for key in args.only:
            if key == "ours":
                systems[key] = peers.ours(workdir, redis.url, stores)
            else:
                name = key.removesuffix("-celery")
                celery = key.endswith("-celery") or name == "celery_email"
                systems[key] = peers.peer(
                    name, workdir, venv_root, redis.url, stores, celery=celery, log=log
                )
            log(f"  {systems[key].label}: {' '.join(systems[key].versions)}")
        record["versions"] = {k: s.versions for k, s in systems.items()}
        log(f"  common pins in the peers' venvs: {' '.join(peers.common_pins())}")

        def attempt(row: Row, run) -> None:
            nonlocal failed
            if bench.remaining() < 30:
                row.failed = row.failed or "out of --time-limit"
                return
            try:
                result = run()
            except Exception as error:  # report, go on
                failed = True
                row.failed = str(error).splitlines()[0][:160]
                log(f"    {row.label}: FAILED {error}")
                return
            row.results.append(result)
            failed = failed or bool(result.problems)
            if "p50" in result.extra:
                log(
                    f"    {row.label}: p50 {result.extra['p50']:.1f} ms, p99 "
                    f"{result.extra['p99']:.1f} ms; {'; '.join(result.problems) or 'ok'}"
                )
                return
            enqueue = f", enqueue {result.enqueue_rate:,.0f}/s" if result.enqueue_rate else ""
            pss = f", PSS {result.pss_mib:.0f} MiB" if result.pss_mib else ""
            log(
                f"    {row.label}: {result.count} in {result.seconds:.2f}s = {result.rate:,.0f}/s"
                f"{enqueue}{pss}; {'; '.join(result.problems) or 'ok'}"
            )

        def smtplib_row(catcher, processes: int, count: int) -> tuple[Row, object]:
            row = Row(f"plain smtplib x{processes} ({processes} conn.)", "smtplib", processes)
            payloads = tp.build_payloads(count)

            def run() -> Result:
                done = tp.run_smtplib(catcher, processes, payloads, args.run_timeout)
                return Result(seconds=done.seconds, count=done.delivered, problems=done.problems)

            return row, run

        memory_small: Row | None = None
        if "throughput" in args.sections:
            log(f"\n[throughput] {args.messages} messages, {args.runs} run(s), catcher {fast.name}")
            rows = []
            for processes in (1, 2):
                row, run = smtplib_row(fast, processes, args.messages)
                rows.append(row)
                for _ in range(args.runs):
                    attempt(row, run)
            for key, system in systems.items():
                kind = "ours" if key == "ours" else "peer"
                label = system.label + (" (worker -c 2)" if system.celery_app else "")
                row = Row(label, kind, 2 if system.celery_app else 1)
                if system.drain:
                    row.note = "command run back to back, 1 process"
                rows.append(row)
                for _ in range(args.runs):
                    attempt(row, lambda s=system: bench.end_to_end(s, fast, args.messages))
                if key == "ours":
                    memory_small = row
            ratio_notes(rows)
            record["sections"]["throughput"] = rows
            log(
                table(
                    f"End to end, {args.messages:,} messages, {stores.label}, catcher {fast.name}",
                    ("system", "delivered/s", "enqueue calls/s", "notes"),
                    [(r.label, *r.cells()) for r in rows],
                )
            )

        if "drain" in args.sections:
            log(
                f"\n[drain] a backlog of {args.messages} messages queued in one bulk call, then "
                "the consumer started; timed from the first message at the catcher to the last"
            )
            rows = []
            for key, system in systems.items():
                kind = "ours" if key == "ours" else "peer"
                label = system.label + (" (worker -c 2)" if system.celery_app else "")
                row = Row(label, kind, 2 if system.celery_app else 1)
                rows.append(row)
                for _ in range(args.runs):
                    attempt(
                        row, lambda s=system: bench.end_to_end(s, fast, args.messages, backlog=True)
                    )
            ratio_notes(rows)
            record["sections"]["drain"] = rows
            log(
                table(
                    f"Draining a backlog of {args.messages:,}, catcher {fast.name}",
                    ("system", "delivered/s", "", "notes"),
                    [(r.label, r.cells()[0], "", r.cells()[2]) for r in rows],
                )
            )

        if "enqueue" in args.sections:
            log(f"\n[enqueue] {args.messages} messages, no consumer running")
            rows = []
            for key, system in systems.items():
                kind = "ours" if key == "ours" else "peer"
                if key == "post_office-celery":
                    continue  # the same producer path as post_office plus a publish: see above
                bulk_call = (
                    "enqueue_emails()" if system.bulk == "enqueue_emails" else "send_mass_mail()"
                )
                for mode, call in (
                    ("send_mail", f"send_mail() x{args.messages}"),
                    ("bulk", f"{bulk_call} of {args.messages}"),
                ):
                    cold = Row(f"{system.label}: {call}, fresh process", kind, checked=False)
                    warm = Row(f"{system.label}: {call}, after one call", kind, checked=False)
                    rows += [cold, warm]
                    for _ in range(args.runs):
                        for row, is_warm in ((cold, False), (warm, True)):
                            attempt(
                                row,
                                lambda s=system, m=mode, w=is_warm: bench.enqueue_only(
                                    s, fast, m, args.messages, warm=w
                                ),
                            )
            record["sections"]["enqueue"] = rows
            log(
                table(
                    "Enqueue alone (no consumer running), messages/s",
                    ("producer call", "messages/s", "", "notes"),
                    [(r.label, r.cells()[0], "", r.cells()[2]) for r in rows],
                )
            )

        if "slow" in args.sections:
            slow = AioCatcher(args.accept_delay)
            catchers.append(slow)
            n = args.slow_messages
            log(
                f"\n[slow relay] {n} messages, aiosmtpd catcher waiting {args.accept_delay:g} ms "
                "before each 250"
            )
            rows = []
            for processes in (1, 20):
                row, run = smtplib_row(slow, processes, n)
                rows.append(row)
                attempt(row, run)
            connections = {"EMAIL_SMTP_CONNECTIONS": "10"}  # ours: 2 processes x 10
            variants = {
                "ours": [(2, "prefork", connections), (2, "prefork", {}), (20, "threads", {})],
                "post_office": [(None, None, {})],
                "post_office-celery": [(2, "prefork", {})],
                "celery_email": [(2, "prefork", {}), (20, "threads", {})],
                "mailer": [(None, None, {})],
            }
            for key, system in systems.items():
                for concurrency, pool, extra in variants[key]:
                    kind = "ours" if key == "ours" else "peer"
                    if concurrency:
                        label = f"{system.label} (-c {concurrency} -P {pool})"
                        if extra:
                            label = label[:-1] + ", EMAIL_SMTP_CONNECTIONS=10)"
                    elif key == "post_office":
                        label = f"{system.label} (1 process x 5 threads, its default)"
                    else:
                        label = f"{system.label} (serial)"
                    row = Row(label, kind, concurrency or 1)
                    rows.append(row)
                    attempt(
                        row,
                        lambda s=system, c=concurrency, p=pool, e=extra: bench.end_to_end(
                            s, slow, n, concurrency=c or 2, pool=p or "prefork", extra_env=e
                        ),
                    )
            if "ours" in systems:  # what limits ours here: the sending side alone
                for concurrency, pool, extra in ((2, "prefork", connections), (20, "threads", {})):
                    label = f"{systems['ours'].label} (-c {concurrency} -P {pool}"
                    label += ", EMAIL_SMTP_CONNECTIONS=10)" if extra else ")"
                    label += ", diagnostic: backlog queued first, sending side alone"
                    row = Row(label, "diag")
                    rows.append(row)
                    attempt(
                        row,
                        lambda c=concurrency, p=pool, e=extra: bench.end_to_end(
                            systems["ours"],
                            slow,
                            n,
                            concurrency=c,
                            pool=p,
                            backlog=True,
                            extra_env=e,
                        ),
                    )
            ratio_notes(rows)
            record["sections"]["slow"] = rows
            log(
                table(
                    f"Slow relay: {args.accept_delay:g} ms before each 250, {n:,} messages",
                    ("system", "delivered/s", "enqueue calls/s", "notes"),
                    [(r.label, *r.cells()) for r in rows],
                )
            )

        if "latency" in args.sections and "ours" in systems:
            idle = AioCatcher(0)
            catchers.append(idle)
            log(f"\n[latency] ours, {args.latency_samples} messages one at a time, idle queue")
            row = Row("vertex_email (ours), worker -c 2", "ours")
            attempt(row, lambda: bench.latency(systems["ours"], idle, args.latency_samples))
            record["sections"]["latency"] = [row]
            if row.results:
                r = row.results[0]
                log(
                    table(
                        "Latency, send_mail() returning -> message at the catcher (ms)",
                        ("system", "p50", "p99", "max / notes"),
                        [
                            (
                                row.label,
                                f"{r.extra['p50']:.1f}",
                                f"{r.extra['p99']:.1f}",
                                f"{r.extra['max']:.1f}; {r.count} samples; "
                                + ("; ".join(r.problems) or "ok"),
                            )
                        ],
                    )
                )

        if "memory" in args.sections and "ours" in systems:
            log(
                f"\n[memory] ours, worker -c 2 PSS after {args.messages} and "
                f"{args.memory_messages} messages"
            )
            rows = []
            if memory_small is None or not memory_small.results:
                memory_small = Row(f"ours, {args.messages:,} messages", "ours")
                attempt(
                    memory_small, lambda: bench.end_to_end(systems["ours"], fast, args.messages)
                )
            big = Row(f"ours, {args.memory_messages:,} messages", "ours")
            attempt(
                big,
                lambda: bench.end_to_end(
                    systems["ours"], fast, args.memory_messages, timeout=max(args.run_timeout, 600)
                ),
            )
            for count, row in ((args.messages, memory_small), (args.memory_messages, big)):
                r = row.results[-1] if row.results else None
                rows.append(
                    (
                        f"{count:,} messages",
                        f"{r.pss_mib:.1f}" if r else "-",
                        str(r.processes) if r else "-",
                        f"{r.rate:,.0f}/s end to end" if r else row.failed,
                    )
                )
            record["sections"]["memory"] = rows
            log(
                table(
                    "Worker memory, ours (-c 2 prefork), PSS summed over its processes",
                    ("after", "PSS MiB", "processes", "notes"),
                    rows,
                )
            )

        if "scale" in args.sections and "ours" in systems:
            rows = scale_section(args, stores, workdir, redis.url, bench.remaining())
            record["sections"]["scale"] = rows
            failed |= rows is None

        log("\n" + machine_summary())
        log(f"database: {stores.summary}")
        log(load_line("at the end"))
        if args.json:
            Path(args.json).write_text(json.dumps(record, default=_jsonable, indent=1))
        return 1 if failed else 0
    finally:
        for catcher in catchers:
            catcher.close()
        tp.end_all()
        try:  # PostgreSQL: drops the systems' databases, their processes ended above
            kept = stores.close(drop=not args.keep)
        except Exception as error:  # report, but not instead of what ended the run
            kept = []
            log(f"could not drop the PostgreSQL databases: {error}")
        if args.keep:
            log(f"kept {workdir}" + (f" and the databases {', '.join(kept)}" if kept else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def scale_section(args, stores, workdir: Path, redis_url: str, remaining: float) -> list | None:
    """scale_commands.py on a database of its own: (read, median ms, under 200 ms) rows, and its
    purge report printed as it is; None if it failed or had no time."""
    log(f"\n[scale] ours, {args.scale_jobs:,} jobs: operator reads and a purge")
    if remaining < 300:
        log(f"  skipped: {remaining:.0f} s left of --time-limit")
        return None
    database = stores.new("scale", workdir / "scale.sqlite3")
    command = [sys.executable, str(Path(__file__).parent / "scale_commands.py")]
    command += ["--database-url", database.url, "--jobs", str(args.scale_jobs), "--repeat", "3"]
    try:
        finished = subprocess.run(
            command,
            cwd=tp.ROOT,
            env={**os.environ, "EMAIL_REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=min(remaining, 1800),
        )
    except subprocess.TimeoutExpired:
        log("  did not finish in time")
        return None
    (workdir / "scale.log").write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        log(f"  failed:\n{finished.stderr[-2000:]}")
        return None
    lines = finished.stdout.replace("\r", "\n").splitlines()
    summary = next((n for n, line in enumerate(lines) if line.startswith("summary:")), None)
    if summary is None:
        log("  failed: scale_commands.py printed no summary")
        return None
    rows = [
        (match[1], match[2], match[3])
        for line in lines[summary:]
        if (match := SCALE_READ.match(line))
    ]
    header = ("read", "median ms", "< 200 ms")
    log(table(f"A table of {args.scale_jobs:,} jobs, ours", header, rows))
    purge = next((n for n, line in enumerate(lines) if line.startswith("purge --status")), None)
    if purge is not None:
        log("\n" + "\n".join(lines[purge : purge + 5]))
    return rows


def _jsonable(value):
    if isinstance(value, Row):
        return {
            "label": value.label,
            "rates": value.rates(),
            "failed": value.failed,
            "cells": value.cells(),
            "results": [vars(r) for r in value.results],
        }
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

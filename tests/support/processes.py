"""Real redis-server and Celery worker processes for tests: started here, ended here, by pid."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def python_output(code: str, tmp_path: Path) -> str:
    """What `code` prints, run by a fresh interpreter in the project with a throwaway SQLite
    database: for what a process loads or builds from its start (imports, memory)."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}"}
    finished = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def _end_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class RedisServer:
    """A throwaway redis-server without persistence, so a restart also wipes the queue."""

    def __init__(self, workdir: Path):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, 10, message="redis-server to answer PING")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            _end_group(self.process, sig)
            self.process = None

    def restart(self, keep_data: bool = False, sig: int = signal.SIGTERM) -> None:
        """Stop and start on the same port: wiped, or with the keys it held (a snapshot on disk)."""
        snapshot = self.workdir / "dump.rdb"
        if keep_data:
            self.client().save()  # what an AOF/RDB-persistent Redis would bring back
        else:
            snapshot.unlink(missing_ok=True)
        self.stop(sig)
        self.start()


class CeleryWorker:
    """`celery -A vertex_email worker` in its own process group, so it can be SIGKILLed whole."""

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 2, beat: bool = False
    ):
        self.env, self.log_path, self.concurrency, self.beat = env, log_path, concurrency, beat
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60, wait_ready: bool = True) -> None:
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "vertex_email",
            "worker",
            "-Q",
            "email",
            "-c",
            str(self.concurrency),
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
        ]
        if self.beat:
            args += ["-B", "-s", str(self.log_path.with_suffix(".beat-schedule"))]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        offset = self._log.tell()
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait_ready:
            wait_until(lambda: self._ready(offset), timeout, 0.1, "the Celery worker to be ready")

    def _ready(self, offset: int) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the worker exited early:\n{self.log_tail()}")
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return b" ready." in log.read()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the main process and its children at once, as a crash or OOM would."""
        _end_group(self.process, signal.SIGKILL)
        self._log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the worker has ended by itself within `timeout`, else None."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None:
            _end_group(self.process)
            self._log.close()
            self.process = None

"""Fixtures of the fault suite: the fault-injecting SMTP server, workers aimed at it, the secrets
every scenario runs with, and the results table that docs/RELIABILITY.md is rendered from.
"""

import json
import os
import time
from pathlib import Path

import pytest
from django.db import connection
from hypothesis import settings as hypothesis_settings

from notifications import crypto, smtp_config
from notifications.smtp import close_client
from tests.support.fault_smtp import Faults, FaultSmtpServer
from tests.support.processes import CeleryWorker

SOAK = os.environ.get("VERTEX_SOAK") == "1"
RESULTS_DIR = Path(__file__).resolve().parents[2] / "var" / "reliability"

# Every scenario runs with these set, so the secrets scan at the end has something to look for.
USERNAME = "mailer"
PASSWORD = "faults-Pa55w0rd-3c9e1b-unique"
TELEGRAM_TOKEN = "7123456789:AAFaults-token-5d2f8e0a9b7c6d-unique"
ENCRYPTION_KEY = crypto.generate_key()
# Like the retry and lease times of tests/conftest.py, the circuit breaker's pauses (5 s doubling
# to 300 s by default) are shortened so that a scenario fits in CI's time.
WORKER_FAULT_SETTINGS = {
    "EMAIL_ENCRYPTION_KEY": ENCRYPTION_KEY,
    "EMAIL_CIRCUIT_BASE_DELAY": "1",
    "EMAIL_CIRCUIT_MAX_DELAY": "4",
}


# No example database in the work tree (.hypothesis/): CI starts from a clean clone anyway.
hypothesis_settings.register_profile("faults", database=None)
hypothesis_settings.load_profile("faults")


def pytest_collection_modifyitems(config, items):
    """The secrets scan reads what every other scenario left behind, so it runs last."""
    last = [item for item in items if "test_secrets_after_faults" in item.nodeid]
    items[:] = [item for item in items if item not in last] + last


def scaled(default: int, soak: int) -> int:
    return soak if SOAK else default


@pytest.fixture(scope="session")
def evidence() -> dict[str, list]:
    """What the secrets scan reads: worker logs, command output, HTTP responses."""
    return {"logs": [], "outputs": []}


@pytest.fixture(scope="session")
def fault_server():
    server = FaultSmtpServer()
    server.start()
    yield server
    server.shutdown()


@pytest.fixture
def faulty(fault_server, settings, broker, transactional_db):
    """The fault server, reset to behave, and the settings row pointing at it with credentials."""
    fault_server.reset(Faults(credentials=(USERNAME, PASSWORD)))
    fault_server.start()
    settings.EMAIL_ENCRYPTION_KEY = ENCRYPTION_KEY
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "SMTP_PORT": fault_server.port}
    configure_smtp(fault_server.port, PASSWORD)
    close_client()
    smtp_config._cache.clear()
    yield fault_server
    fault_server.start()
    close_client()


def configure_smtp(port: int, password: str, **changes) -> None:
    smtp_config.update_settings(
        actor="faults",
        changes={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_username": USERNAME, **changes},
        smtp_password=password,
        telegram_bot_token=TELEGRAM_TOKEN,
    )


@pytest.fixture
def fault_worker(worker_env, faulty, evidence, tmp_path):
    """Start real `celery worker` processes aimed at the fault server; ended after the test."""
    workers: list[CeleryWorker] = []

    def start(
        concurrency: int = 2, beat: bool = True, wait_ready: bool = True, **env: str
    ) -> CeleryWorker:
        log = tmp_path / f"worker-{len(workers)}.log"
        evidence["logs"].append(log)
        settings = {**WORKER_FAULT_SETTINGS, "SMTP_PORT": str(faulty.port), **env}
        worker = CeleryWorker({**worker_env, **settings}, log, concurrency=concurrency, beat=beat)
        workers.append(worker)
        worker.start(wait_ready=wait_ready)
        return worker

    yield start
    for worker in workers:
        worker.stop()


class Results:
    """One row per scenario and database, kept in var/reliability/<database>.json."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def record(self, scenario: str, **row) -> None:
        row = {"scenario": scenario, "soak": SOAK, **row}
        self.rows[scenario] = row
        print(f"\n[reliability] {json.dumps(row, sort_keys=True)}")

    def save(self, database: str) -> None:
        if not self.rows:
            return
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{database}{'-soak' if SOAK else ''}.json"
        saved = json.loads(path.read_text()) if path.exists() else {"rows": {}}
        saved["rows"].update(self.rows)
        saved.update(
            database=database,
            finished_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            cpus=os.cpu_count(),
            soak=SOAK,
        )
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def reliability():
    results = Results()
    yield results
    results.save("postgresql" if connection.vendor == "postgresql" else connection.vendor)

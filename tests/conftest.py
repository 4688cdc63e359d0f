"""Shared fixtures: a real redis-server, a real SMTP server and real Celery worker processes."""

import logging
import os
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection

from notifications import smtp_config, wakeups
from notifications.smtp import close_client
from tests.support.processes import CeleryWorker, RedisServer, free_port
from tests.support.smtp_sink import SmtpSink

# Short schedules so recovery and retries happen within a test's time.
logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command

WORKER_SETTINGS = {
    "EMAIL_RETRY_DELAYS": "0.5,1,2",
    "EMAIL_LEASE_SECONDS": "8",
    "EMAIL_SWEEP_INTERVAL": "1",
    "EMAIL_REDISPATCH_AFTER": "3",
}


@pytest.fixture(autouse=True)
def queued_email_backend(settings):
    """Django's test runner swaps in the locmem backend; these tests are about ours."""
    settings.EMAIL_BACKEND = "notifications.backends.QueuedEmailBackend"


@pytest.fixture(autouse=True)
def wake_ups_published():
    """A test's wake-ups are published within the test, never into the next test's broker."""
    yield
    assert wakeups.flush(), "wake-ups still unpublished after 5 s"


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory):
    """Every test publishes to a real broker of its own; nothing reaches port 6379."""
    from vertex_email.celery import app

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    app.conf.broker_url = server.url
    django_settings.EMAIL_REDIS_URL = server.url  # rate limits and the circuit breaker
    yield server
    server.stop()


@pytest.fixture
def broker(redis_server):
    """The broker, emptied before the test."""
    redis_server.client().flushall()
    return redis_server


@pytest.fixture(scope="session")
def smtp_sink():
    sink = SmtpSink(free_port())
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def smtp(smtp_sink, settings):
    """The SMTP server, emptied, and this process's SMTP settings pointing at it."""
    smtp_sink.handler.reset()
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "SMTP_PORT": smtp_sink.port}
    close_client()
    smtp_config._cache.clear()
    yield smtp_sink.handler
    close_client()


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def worker_env(redis_server, smtp_sink, django_db_setup) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_ENV": "test",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": redis_server.url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        **WORKER_SETTINGS,
    }


@pytest.fixture
def start_worker(worker_env, broker, smtp, tmp_path):
    """Start real `celery worker` processes against the test database, broker and SMTP server."""
    workers: list[CeleryWorker] = []

    def start(concurrency: int = 2, beat: bool = True, **settings: str) -> CeleryWorker:
        log = tmp_path / f"worker-{len(workers)}.log"
        worker = CeleryWorker({**worker_env, **settings}, log, concurrency=concurrency, beat=beat)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()

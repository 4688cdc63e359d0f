"""Scenario 11, run last: after every scenario ran with an SMTP password and a Telegram token set,
neither is found in plaintext anywhere: the database (dumpdata, the SQLite files or pg_dump),
worker and producer logs, Redis keys and values, command output, HTTP responses.
"""

import shutil
import subprocess
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client

from notifications.models import EmailJob
from tests.faults.conftest import PASSWORD, TELEGRAM_TOKEN
from tests.faults.helpers import enqueue, wait_drained
from tests.test_secrets import plaintext_sources

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.faults]
SECRETS = {"SMTP password": PASSWORD, "Telegram token": TELEGRAM_TOKEN}
PAGES = [
    "/admin/notifications/notificationsettings/1/change/",
    "/admin/notification-settings/",
    "/admin/notifications/emailjob/",
    "/admin/notifications/auditlogentry/",
    "/api/monitoring/email-stats",
    "/metrics",
]


def redis_everything(broker) -> str:
    """Every key and value, whatever its type (the broker's unacked hash and index included)."""
    redis, parts = broker.client(), []
    for key in redis.scan_iter("*"):
        kind = redis.type(key).decode()
        parts.append(key)
        if kind == "zset":
            parts += [member for member, _ in redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            parts += list(redis.smembers(key))
    return b"\n".join(parts).decode("latin-1")


def database_dump() -> str:
    pg_dump = shutil.which("pg_dump")
    if connection.vendor != "postgresql" or pg_dump is None:
        return ""
    db = connection.settings_dict
    command = [pg_dump, "-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432)]
    command += ["-U", db["USER"], "-d", db["NAME"]]
    env = {"PGPASSWORD": db["PASSWORD"] or ""}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout


def commands_output() -> str:
    outputs = []
    for args in (
        ("email_queue", "stats", "--json"),
        ("email_queue", "failed", "--json"),
        ("smtp_settings", "show"),
    ):
        out, err = StringIO(), StringIO()
        call_command(*args, stdout=out, stderr=err)
        outputs += [out.getvalue(), err.getvalue()]
    return "\n".join(outputs)


def http_responses() -> str:
    staff = User.objects.create_superuser("scan", "scan@example.org", "scan-password-x")
    client = Client()
    client.force_login(staff)
    return "\n".join(client.get(page, follow=True).content.decode() for page in PAGES)


def test_no_plaintext_secret_anywhere_after_the_faults(
    fault_worker, faulty, broker, evidence, reliability
):
    fault_worker(concurrency=2, LOG_LEVEL="DEBUG")
    total = 50
    enqueue(total)
    wait_drained(total, timeout=60, status=EmailJob.Status.SENT)

    logs = [path.read_text(errors="replace") for path in evidence["logs"] if path.exists()]
    sources = plaintext_sources(logs, broker)
    sources |= {
        "redis (every type)": redis_everything(broker),
        "pg_dump": database_dump(),
        "commands": commands_output(),
        "HTTP responses": http_responses(),
        "producer and command output during the scenarios": "\n".join(evidence["outputs"]),
    }
    found = {
        f"{name} in {source}"
        for source, text in sources.items()
        for name, secret in SECRETS.items()
        if secret in text
    }
    scanned = sum(len(text) for text in sources.values())
    reliability.record(
        "11. secrets after the scenarios",
        n=len(evidence["logs"]),
        lost=0,
        duplicated=0,
        statuses={"plaintext findings": len(found)},
        drain_seconds=None,
        note=(
            f"{scanned:,} characters scanned from {len(sources)} sources, "
            f"{len(evidence['logs'])} worker logs"
        ),
    )
    assert found == set()
    assert len(evidence["logs"]) > 1 or scanned > 0

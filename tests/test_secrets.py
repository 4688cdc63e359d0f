"""The SMTP password: encrypted at rest, never shown, and a key problem never fails a job."""

import logging
from io import StringIO
from pathlib import Path

import pytest
from django.core.mail import send_mail
from django.core.management import call_command
from django.db import connection

from notifications import crypto, delivery, smtp_config, throttle
from notifications.models import AuditLogEntry, EmailJob
from tests.factories import EmailJobFactory
from tests.support.processes import free_port, wait_until
from tests.support.smtp_sink import Credentials, SmtpSink

pytestmark = pytest.mark.django_db(transaction=True)
Status = EmailJob.Status
PASSWORD = "Pa55-w0rd-7f0e-unique"
WRONG = "wrong-pass-91c2-unique"


@pytest.fixture
def auth_sink():
    sink = SmtpSink(free_port(), Credentials("mailer", PASSWORD))
    sink.start()
    yield sink
    sink.stop()


def configure(port: int, password: str) -> None:
    smtp_config.update_settings(
        actor="test",
        changes={"smtp_port": port, "smtp_username": "mailer"},
        smtp_password=password,
    )


def test_a_key_that_cannot_decrypt_leaves_the_job_pending(smtp, broker, settings, caplog):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    configure(smtp_sink_port := free_port(), PASSWORD)
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()  # the key was lost or swapped
    job = EmailJobFactory()
    with caplog.at_level(logging.CRITICAL):
        assert delivery.deliver_job(job_id=job.pk) == "deferred"
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.PENDING, 0)
    assert (
        "could not be decrypted" in job.last_error or "not among the loaded keys" in job.last_error
    )
    assert "ALERT" in caplog.text and PASSWORD not in caplog.text
    failed = AuditLogEntry.objects.get(action="decrypt")
    assert (failed.actor, failed.outcome) == ("email_service", "failed")
    assert smtp_sink_port  # nothing was attempted against it


def test_rotation_re_encrypts_under_a_new_key_file(settings, tmp_path):
    settings.EMAIL_ENCRYPTION_KEY = ""
    settings.EMAIL_ENCRYPTION_KEY_FILE = tmp_path / "encryption.key"
    configure(2525, PASSWORD)
    old_id = crypto.load_keyring().primary_id
    out = StringIO()
    call_command("rotate_encryption_key", stdout=out)
    ring = crypto.load_keyring()
    assert ring.primary_id != old_id and old_id in ring.keys
    assert f"under key {ring.primary_id}" in out.getvalue() and "--drop-old-keys" in out.getvalue()
    row = smtp_config.load_row()
    assert crypto.token_key_id(row.smtp_password_encrypted) == ring.primary_id
    call_command("rotate_encryption_key", "--drop-old-keys", stdout=StringIO())
    assert list(crypto.load_keyring().keys) == [ring.primary_id]
    assert smtp_config.current_smtp_settings(actor="cli").password == PASSWORD
    assert AuditLogEntry.objects.filter(action="rotate").exists()


def test_every_decryption_and_change_is_audited_without_values(settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    configure(2525, PASSWORD)
    smtp_config.current_smtp_settings(actor="admin:alice", purpose="test e-mail")
    smtp_config.current_smtp_settings(actor="admin:alice", purpose="test e-mail")  # cached
    change = AuditLogEntry.objects.get(action="change")
    assert sorted(change.fields) == ["smtp_password", "smtp_port", "smtp_username"]
    decrypt = AuditLogEntry.objects.get(action="decrypt")
    assert (decrypt.actor, decrypt.purpose, decrypt.outcome) == ("admin:alice", "test e-mail", "ok")
    dumped = StringIO()
    call_command("dumpdata", "notifications", stdout=dumped)
    assert PASSWORD not in dumped.getvalue()


def plaintext_sources(worker_logs: list[str], broker) -> dict[str, str]:
    redis = broker.client()
    redis_dump = []
    for key in redis.keys("*"):
        kind = redis.type(key)
        if kind == b"list":
            redis_dump += redis.lrange(key, 0, -1)
        elif kind == b"hash":
            redis_dump += [v for pair in redis.hgetall(key).items() for v in pair]
        elif kind == b"string":
            redis_dump.append(redis.get(key))
        redis_dump.append(key)
    dumped, shown = StringIO(), StringIO()
    call_command("dumpdata", stdout=dumped)
    call_command("smtp_settings", "show", stdout=shown)
    sources = {
        "dumpdata": dumped.getvalue(),
        "smtp_settings show": shown.getvalue(),
        "worker logs": "\n".join(worker_logs),
        "redis": b"\n".join(redis_dump).decode("latin-1"),
    }
    if connection.vendor == "sqlite":
        name = Path(connection.settings_dict["NAME"])
        files = [name, name.with_name(name.name + "-wal")]
        raw = b"".join(path.read_bytes() for path in files if path.exists())
        sources["sqlite files"] = raw.decode("latin-1")
    return sources


@pytest.mark.integration
def test_refused_credentials_keep_jobs_pending_until_fixed_and_no_secret_leaks(
    start_worker, smtp, auth_sink, broker
):
    configure(auth_sink.port, WRONG)
    worker = start_worker(
        concurrency=2,
        EMAIL_CONFIG_ERROR_DELAY="1",
        EMAIL_CIRCUIT_BASE_DELAY="0.5",
        EMAIL_CIRCUIT_MAX_DELAY="1",
        LOG_LEVEL="DEBUG",
    )
    for i in range(10):
        send_mail(f"Secret test {i}", "Body", "from@example.org", [f"s{i}@example.org"])
    wait_until(
        lambda: auth_sink.credentials.failures >= 2 and throttle.pauses()["circuit_open"],
        30,
        0.2,
        "the refused login to pause sending",
    )
    # Nobody's attempts are used up: a refused login is our configuration, not the message.
    assert not EmailJob.objects.exclude(status__in=[Status.PENDING, Status.SENDING]).exists()
    assert EmailJob.objects.filter(attempt_log__outcome="deferred").exists()
    assert (
        not EmailJob.objects.exclude(attempt_log=None)
        .exclude(attempt_log__outcome="deferred")
        .exists()
    )
    assert "SMTP authentication refused (535)" in throttle.pauses()["circuit_reason"]
    configure(auth_sink.port, PASSWORD)  # the admin fixes the password; no restart
    auth_sink.handler.data_replies.append("451 4.3.0 one transient failure")
    auth_sink.handler.refused["s9@example.org"] = "550 5.1.1 no such user"
    wait_until(
        lambda: EmailJob.objects.filter(status__in=["sent", "failed"]).count() == 10,
        60,
        0.2,
        "every job to be settled after the fix",
    )
    assert EmailJob.objects.filter(status=Status.SENT).count() == 9
    assert EmailJob.objects.get(status=Status.FAILED).last_smtp_code == 550
    assert auth_sink.handler.count() == 9
    # Only real sends used attempts: one each, a second for the 451; the paused ones none.
    assert sorted(EmailJob.objects.values_list("attempts", flat=True)) == [1] * 9 + [2]

    for source, text in plaintext_sources([worker.log_path.read_text()], broker).items():
        assert PASSWORD not in text, f"the SMTP password appears in {source}"
        assert WRONG not in text, f"the wrong password appears in {source}"

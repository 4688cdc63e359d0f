"""One log line per attempt, JSON when asked, secrets masked."""

import io
import json
import logging
import logging.config

import pytest
from django.conf import settings as django_settings

from notifications import delivery
from notifications.redaction import redact
from tests.factories import EmailJobFactory


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("login failed password=hunter2 for user", "hunter2"),
        ('{"password": "hunter2"}', "hunter2"),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        (
            "POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/send",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        ),
        ("send: 'AUTH PLAIN AG1haWxlcgBodW50ZXIy\\r\\n'", "AG1haWxlcgBodW50ZXIy"),
        ("EMAIL_ENCRYPTION_KEY token=Zm9vYmFy", "Zm9vYmFy"),
    ],
)
def test_credential_shapes_are_masked(line, secret):
    cleaned = redact(line)
    assert secret not in cleaned and "[redacted]" in cleaned


def test_ordinary_lines_are_left_alone():
    line = "email job=7 attempt=1 outcome=sent code=250 duration=0.010s"
    assert redact(line) == line


@pytest.fixture
def json_log():
    stream = io.StringIO()
    config = {**django_settings.LOGGING}
    config["handlers"] = {
        "capture": {
            "class": "logging.StreamHandler",
            "stream": stream,
            "formatter": "json",
            "filters": ["redact_secrets"],
        }
    }
    config["root"] = {"handlers": ["capture"], "level": "INFO"}
    logging.config.dictConfig(config)
    yield stream
    logging.config.dictConfig(django_settings.LOGGING)


@pytest.mark.django_db(transaction=True)
def test_each_attempt_is_one_json_line_with_its_fields(json_log, smtp, broker):
    smtp.data_replies.append("451 4.3.0 busy")
    job = EmailJobFactory()
    delivery.deliver_job(job_id=job.pk)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines() if "job_id" in line]
    (line,) = [entry for entry in lines if entry.get("job_id") == job.pk]
    assert line["attempt"] == 1 and line["outcome"] == "retry" and line["smtp_code"] == 451
    assert line["duration_seconds"] >= 0 and line["level"] == "INFO"
    assert "busy" in line["message"]

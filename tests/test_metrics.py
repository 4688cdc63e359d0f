"""/metrics: exact e-mail figures from real worker processes, across restarts and purges; access."""

import json
import logging
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from django.core.mail import send_mail
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from notifications import metrics, metrics_views, services, shared_redis
from notifications.models import EmailJob
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.django_db
URL = "/metrics"
TOKEN = "s3cret-scrape-token-0123456789"
Status = EmailJob.Status
EMAIL_FAMILIES = {
    "vertex_ar_email_sent_total": "counter",
    "vertex_ar_email_failed_total": "counter",
    "vertex_ar_email_queue_depth": "gauge",
    "vertex_ar_email_send_duration_seconds": "histogram",
    "vertex_ar_email_sending_paused": "gauge",
}


def scrape(client, **headers) -> dict[tuple, float]:
    """One scrape, as {(sample name, (label, value), ...): value}."""
    response = client.get(URL, **headers)
    assert response.status_code == 200, response.content
    text = response.content.decode()
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def email_figures(samples: dict[tuple, float]) -> dict[str, float]:
    """The figures the test asserts on, by short names."""
    figures = {
        "sent": samples[("vertex_ar_email_sent_total",)],
        "sent_duration_count": samples[
            ("vertex_ar_email_send_duration_seconds_count", ("outcome", "sent"))
        ],
        "failed_duration_count": samples[
            ("vertex_ar_email_send_duration_seconds_count", ("outcome", "failed"))
        ],
    }
    for outcome in ("retry", "failed", "deferred", "lost"):
        figures[f"failed:{outcome}"] = samples[
            ("vertex_ar_email_failed_total", ("outcome", outcome))
        ]
    for status in Status.values:
        figures[f"depth:{status}"] = samples[("vertex_ar_email_queue_depth", ("status", status))]
    return figures


def send(count: int, *, bad_every: int, offset: int = 0) -> int:
    """Send `count` messages, every `bad_every`th to a recipient the server refuses with 550."""
    bad = 0
    for i in range(offset, offset + count):
        if i % bad_every == 0:
            bad += 1
            send_mail(f"Message {i}", "Body", "from@example.org", [f"bad{i}@example.org"])
        else:
            send_mail(f"Message {i}", "Body", "from@example.org", [f"user{i}@example.org"])
    return bad


def settled(count: int) -> bool:
    return EmailJob.objects.filter(status__in=[Status.SENT, Status.FAILED]).count() >= count


def counted(client, attempts: int) -> dict[str, float]:
    """The figures once `attempts` attempts are counted: a worker counts just after it commits."""

    def figures():
        current = email_figures(scrape(client))
        return current if current["sent"] + current["failed:failed"] >= attempts else None

    return wait_until(figures, 10, 0.05, f"{attempts} attempts to be counted")


def pool_processes_that_sent(worker) -> set[str]:
    log = worker.log_path.read_text(errors="replace")
    return set(re.findall(r" (ForkPoolWorker-\d+) email job=", log))


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_counters_are_exact_across_worker_processes_restarts_and_purges(start_worker, smtp, client):
    for i in range(0, 40, 4):
        smtp.refused[f"bad{i}@example.org"] = "550 5.1.1 No such user here"
    # One job per task and slow acceptance: the sends overlap in several pool processes.
    smtp.accept_delay = 0.05
    worker = start_worker(concurrency=3, EMAIL_BATCH_SIZE="1")

    failed = send(20, bad_every=4)
    wait_until(lambda: settled(20), 60, 0.1, "20 jobs to settle")
    first = counted(client, 20)
    assert failed == 5
    assert first == {
        "sent": 15,
        "sent_duration_count": 15,
        "failed_duration_count": 5,
        "failed:retry": 0,
        "failed:failed": 5,
        "failed:deferred": 0,
        "failed:lost": 0,
        "depth:pending": 0,
        "depth:sending": 0,
        "depth:sent": 15,
        "depth:failed": 5,
        "depth:cancelled": 0,
    }
    assert len(pool_processes_that_sent(worker)) >= 2  # the counts were made in several processes

    # The web process keeps nothing between scrapes: a fresh Redis client is a restarted web.
    shared_redis._clients.clear()
    assert email_figures(scrape(client)) == first

    # A purge deletes the jobs and their attempts; the counters must not go back.
    purged = services.purge_jobs(status=Status.SENT, created_before=timezone.now())
    assert purged["jobs"] == 15
    after_purge = email_figures(scrape(client))
    assert after_purge["sent"] == 15 and after_purge["depth:sent"] == 0

    # Jobs queued while no worker runs are the queue depth.
    worker.stop()
    failed += send(10, bad_every=4, offset=20)  # refused: 20, 24, 28
    assert email_figures(scrape(client))["depth:pending"] == 10

    restarted = start_worker(concurrency=3, EMAIL_BATCH_SIZE="1")
    seen = [email_figures(scrape(client))]
    deadline = time.monotonic() + 60
    while not settled(20 - 15 + 10):  # 15 sent jobs were purged
        assert time.monotonic() < deadline, "timed out waiting for the 10 new jobs to settle"
        seen.append(email_figures(scrape(client)))  # scraped while the new worker sends
        time.sleep(0.05)
    seen.append(counted(client, 30))
    for before, after in pairwise(seen):
        for name in ("sent", "failed:failed", "sent_duration_count", "failed_duration_count"):
            assert after[name] >= before[name], (name, before, after)
    final = seen[-1]
    assert failed == 8
    assert (final["sent"], final["failed:failed"]) == (30 - 8, 8)
    assert (final["sent_duration_count"], final["failed_duration_count"]) == (22, 8)
    assert (final["depth:pending"], final["depth:sent"], final["depth:failed"]) == (0, 7, 8)
    assert pool_processes_that_sent(restarted)


def test_metric_names_and_types_are_exactly_as_documented(client, broker):
    text = client.get(URL).content.decode()
    for name, kind in EMAIL_FAMILIES.items():
        assert f"# TYPE {name} {kind}\n" in text
    email_types = set(re.findall(r"^# TYPE (vertex_ar_email_\w+) ", text, re.MULTILINE))
    assert email_types == set(EMAIL_FAMILIES)
    # django-prometheus' request and database metrics are served beside them.
    assert "django_http_requests_total_by_method_total" in text
    assert "django_db_execute_total" in text


def test_labels_are_bounded_outcomes_and_statuses(client, broker):
    metrics.observe_attempt(outcome="sent", duration=0.2)
    metrics.observe_attempt(outcome="not-an-outcome", duration=0.2)
    labels = {
        name: value
        for key in scrape(client)
        if key[0].startswith("vertex_ar_email_")
        for name, value in key[1:]
    }
    allowed = {"outcome", "status", "le", "reason"}
    assert set(labels) <= allowed
    outcomes = {v for key in scrape(client) for n, v in key[1:] if n == "outcome"}
    assert outcomes == {"sent", "retry", "failed", "deferred", "lost"}


def test_durations_fall_into_their_buckets(client, broker):
    for duration in (0.04, 0.3, 0.3, 7.0, 120.0):
        metrics.observe_attempt(outcome="sent", duration=duration)
    samples = scrape(client)

    def bucket(le):
        key = ("vertex_ar_email_send_duration_seconds_bucket", ("le", le), ("outcome", "sent"))
        return samples[key]

    assert [bucket(le) for le in ("0.05", "0.25", "0.5", "5.0", "10.0", "60.0", "+Inf")] == [
        1,
        1,
        3,
        3,
        4,
        4,
        5,
    ]
    assert samples[("vertex_ar_email_send_duration_seconds_sum", ("outcome", "sent"))] == (
        pytest.approx(127.64)
    )
    assert samples[("vertex_ar_email_sent_total",)] == 5


def test_a_lost_attempt_is_counted_without_a_duration(client, broker):
    metrics.observe_attempt(outcome="lost", duration=None)
    samples = scrape(client)
    assert samples[("vertex_ar_email_failed_total", ("outcome", "lost"))] == 1
    assert ("vertex_ar_email_send_duration_seconds_count", ("outcome", "lost")) not in samples


def test_without_redis_counters_are_left_out_not_zeroed_and_sending_goes_on(
    client, broker, settings, caplog
):
    metrics.observe_attempt(outcome="sent", duration=0.1)
    settings.NOTIFICATIONS = {
        **settings.NOTIFICATIONS,
        "METRICS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    metrics.observe_attempt(outcome="sent", duration=0.1)  # logs, does not raise
    samples = scrape(client)
    assert not [key for key in samples if key[0].startswith("vertex_ar_email_sent")]
    assert ("vertex_ar_email_queue_depth", ("status", "pending")) in samples
    assert "Redis unavailable" in caplog.text


def test_gunicorn_worker_files_are_merged_when_the_multiprocess_dir_is_set(
    client, broker, settings, tmp_path
):
    """Each gunicorn worker writes its request counts to files; /metrics adds them up."""
    program = (
        "import prometheus_client as p;"
        "p.Counter('django_http_requests_total_by_method', 'x', ['method']).labels('GET').inc(3)"
    )
    for _ in range(2):  # two processes, two files
        subprocess.run(
            [sys.executable, "-c", program],
            env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            check=True,
        )
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    samples = scrape(client)
    assert samples[("django_http_requests_total_by_method_total", ("method", "GET"))] == 6
    assert ("vertex_ar_email_sent_total",) in samples


# --- Who may scrape ---------------------------------------------------------------------------


@pytest.fixture
def access(settings):
    def configure(token: str = "", allowed: list[str] | None = None, production: bool = False):
        settings.NOTIFICATIONS = {
            **settings.NOTIFICATIONS,
            "METRICS_BEARER_TOKEN": token,
            "METRICS_ALLOWED_IPS": allowed or [],
        }
        settings.IS_PRODUCTION = production

    return configure


def test_open_in_development_when_nothing_is_configured(client, access):
    access()
    assert client.get(URL).status_code == 200


def test_production_refuses_until_a_token_or_allow_list_is_configured(client, access, caplog):
    access(production=True)
    response = client.get(URL)
    assert response.status_code == 403
    assert "vertex_ar_email" not in response.content.decode()
    assert "no METRICS_BEARER_TOKEN or METRICS_ALLOWED_IPS" in caplog.text
    access(token=TOKEN, production=True)
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_a_missing_or_wrong_token_gets_401(client, access, authorization):
    access(token=TOKEN)
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get(URL, **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"vertex_ar_email" not in response.content


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}"])
def test_the_right_token_is_accepted(client, access, authorization):
    access(token=TOKEN)
    response = client.get(URL, HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 200
    assert b"vertex_ar_email_sent_total" in response.content


def test_the_token_is_compared_in_constant_time(client, access, monkeypatch):
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(metrics_views.hmac, "compare_digest", compare_digest)
    access(token=TOKEN)
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert compared == [(b"nope", TOKEN.encode())]


def test_the_token_is_never_logged(client, access, caplog):
    caplog.set_level(logging.DEBUG)
    access(token=TOKEN)
    client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}-almost")
    client.get(URL)
    assert "refused" in caplog.text  # the refusals were logged...
    assert TOKEN not in caplog.text  # ...without the token, right or wrong


@pytest.mark.parametrize(
    ("remote_addr", "status"),
    [
        ("10.1.2.3", 200),
        ("192.168.7.7", 200),
        ("::ffff:10.9.9.9", 200),
        ("fd00::1", 200),
        ("192.168.7.8", 403),
        ("8.8.8.8", 403),
        ("2001:db8::1", 403),
    ],
)
def test_the_allow_list_takes_addresses_and_networks(client, access, remote_addr, status):
    access(allowed=["10.0.0.0/8", "192.168.7.7", "fd00::/8"])
    assert client.get(URL, REMOTE_ADDR=remote_addr).status_code == status


def test_an_invalid_allow_list_refuses_everyone(client, access, caplog):
    access(allowed=["10.0.0.0/8", "not-an-address"])
    assert client.get(URL, REMOTE_ADDR="10.1.2.3").status_code == 403
    assert "METRICS_ALLOWED_IPS is invalid" in caplog.text


def test_with_both_configured_both_must_pass(client, access):
    access(token=TOKEN, allowed=["10.0.0.0/8"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    assert client.get(URL, REMOTE_ADDR="10.1.2.3", **auth).status_code == 200
    assert client.get(URL, REMOTE_ADDR="8.8.8.8", **auth).status_code == 403
    assert client.get(URL, REMOTE_ADDR="10.1.2.3").status_code == 401


def test_only_get_and_head_are_served(client, access):
    access()
    assert client.head(URL).status_code == 200
    assert client.post(URL).status_code == 405


def test_the_answer_is_not_cached(client, access):
    access()
    assert "no-cache" in client.get(URL)["Cache-Control"]


def test_the_dashboard_and_the_alerts_use_only_exported_metric_names():
    docs = Path(__file__).resolve().parents[1] / "docs"
    dashboard = docs / "grafana" / "vertex-email.json"
    json.loads(dashboard.read_text())
    for path in (dashboard, docs / "prometheus" / "alerts.yml"):
        used = set(re.findall(r"vertex_ar_email_\w+", path.read_text()))
        families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
        assert families <= set(EMAIL_FAMILIES), (path, used)


def test_a_pause_shows_as_a_gauge(client, broker):
    from notifications import throttle

    def paused() -> dict:
        text = client.get(URL).content.decode()
        return dict(
            re.findall(r'^vertex_ar_email_sending_paused\{reason="(\w+)"\} (\S+)$', text, re.M)
        )

    assert paused() == {"circuit_breaker": "0.0", "rate_limit": "0.0"}
    throttle.trip_circuit("connection to the SMTP server refused")
    assert paused()["circuit_breaker"] == "1.0"
    throttle.close_circuit()
    assert paused()["circuit_breaker"] == "0.0"

"""EMAIL_SMTP_CONNECTIONS: a batch sent over several connections at once, against the real SMTP
server, with every attempt recorded as it would be over one."""

import subprocess
import sys
from collections import Counter

import pytest

from notifications import delivery, services, throttle
from notifications.models import EmailJob
from notifications.smtp import close_client
from tests.factories import make_message
from tests.support.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("broker")]
Status = EmailJob.Status


@pytest.mark.integration
def test_celery_workers_send_over_several_connections_each(start_worker, smtp):
    smtp.accept_delay = 0.05
    start_worker(concurrency=2, EMAIL_SMTP_CONNECTIONS="4")
    jobs = enqueue(60)
    wait_until(
        lambda: EmailJob.objects.filter(status=Status.SENT).count() == 60, 60, 0.1, "60 sent"
    )
    assert smtp.by_message_id() == dict.fromkeys((job.message_id for job in jobs), 1)
    # Two processes with one connection each would never have more than two at once.
    assert smtp.most_at_once >= 4
    assert EmailJob.objects.filter(attempts=1).count() == 60


@pytest.fixture
def connections(settings):
    def use(count: int, **options) -> None:
        settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "SMTP_CONNECTIONS": count, **options}

    return use


def enqueue(count: int) -> list[EmailJob]:
    return services.enqueue_emails(messages=[make_message(i) for i in range(count)])


def test_a_slow_relay_is_sent_to_over_as_many_connections_as_set(smtp, connections):
    connections(4)
    smtp.accept_delay = 0.2
    jobs = enqueue(12)
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 12
    assert smtp.most_at_once == 4 and smtp.greetings == 4
    assert smtp.by_message_id() == dict.fromkeys((job.message_id for job in jobs), 1)
    assert EmailJob.objects.filter(status=Status.SENT, attempts=1).count() == 12
    for job in EmailJob.objects.all():
        assert [(a.number, a.outcome, a.smtp_code) for a in job.attempt_log.all()] == [
            (1, "sent", 250)
        ]
        assert job.sent_at >= job.attempt_log.get().started_at


def test_one_connection_sends_in_turn(smtp, connections):
    connections(1)
    smtp.accept_delay = 0.05
    jobs = enqueue(6)
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 6
    assert (smtp.most_at_once, smtp.greetings, smtp.count()) == (1, 1, 6)
    received = [received.message_id for received in smtp.messages]
    assert received == [job.message_id for job in jobs]  # in the order queued


def test_refusals_on_parallel_connections_fail_only_their_own_jobs(smtp, connections):
    connections(3)
    smtp.accept_delay = 0.05
    smtp.refused["user2@example.org"] = "550 5.1.1 no such user"
    smtp.refused["user5@example.org"] = "550 5.1.1 no such user"
    jobs = enqueue(8)
    delivery.deliver_due_jobs(job_id=jobs[0].pk)
    failed = EmailJob.objects.filter(status=Status.FAILED)
    assert sorted(job.to for job in failed) == [["user2@example.org"], ["user5@example.org"]]
    assert {job.last_error for job in failed} == {"550 all recipients refused: 5.1.1 no such user"}
    assert EmailJob.objects.filter(status=Status.SENT).count() == 6 == smtp.count()


def test_an_unreachable_server_pauses_once_whatever_was_on_the_wire(smtp, connections):
    close_client()
    connections(4, SMTP_PORT=free_port(), CIRCUIT_THRESHOLD=3, CIRCUIT_BASE_DELAY=30.0)
    jobs = enqueue(12)
    tried = delivery.deliver_due_jobs(job_id=jobs[0].pk)
    # The third refusal in a row pauses everyone; at most 3 others were on the wire by then.
    assert 3 <= tried <= 3 + 4 - 1
    pause = throttle.pauses()
    assert pause["circuit_open"] and pause["circuit_failures"] == 1  # one pause, not one a job
    assert 25 < pause["circuit_retry_in_seconds"] <= 30
    assert EmailJob.objects.filter(status=Status.PENDING).count() == 12  # nothing lost or failed
    assert EmailJob.objects.filter(attempts=1).count() == tried
    assert EmailJob.objects.filter(attempts=0).count() == 12 - tried
    errors = set(EmailJob.objects.filter(attempts=1).values_list("last_error", flat=True))
    assert errors == {"connection to the SMTP server refused"}
    assert smtp.count() == 0


@pytest.mark.parametrize("value", ["0", "101", "-1"])
def test_a_connection_count_out_of_range_is_refused_at_startup(value, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "vertex_email.settings",
            "DJANGO_ENV": "test",
            "EMAIL_SMTP_CONNECTIONS": value,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"EMAIL_SMTP_CONNECTIONS must be between 1 and 100, not {value}" in result.stderr


def test_a_batch_is_at_least_sixteen_jobs_a_connection(smtp, connections):
    connections(4, BATCH_SIZE=5)
    jobs = enqueue(80)
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 80
    claims = EmailJob.objects.values_list("claim_token", flat=True)
    assert sorted(Counter(claims).values()) == [16, 64]  # claimed 64 at a time, not 5
    assert smtp.count() == 80


def test_one_connection_keeps_the_batch_size_as_set(smtp, connections):
    connections(1, BATCH_SIZE=5)
    jobs = enqueue(12)
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 12
    claims = EmailJob.objects.values_list("claim_token", flat=True)
    assert sorted(Counter(claims).values()) == [2, 5, 5]


def test_the_next_batch_goes_out_while_the_last_replies_of_one_are_awaited(smtp, connections):
    connections(4, BATCH_SIZE=5)
    smtp.accept_delay = 0.05
    smtp.delays["user63@example.org"] = 1.5  # the last job of the first claim (64 jobs)
    jobs = enqueue(80)
    assert delivery.deliver_due_jobs(job_id=jobs[0].pk) == 80
    sent = dict(EmailJob.objects.values_list("pk", "sent_at"))
    first_claim, second_claim = jobs[:64], jobs[64:]
    claims = Counter(EmailJob.objects.values_list("claim_token", flat=True))
    slow_claim = EmailJob.objects.get(pk=first_claim[-1].pk).claim_token
    assert claims[slow_claim] == 64 and sorted(claims.values()) == [16, 64]
    # The second claim went out over the other connections while that one reply was awaited.
    slow = sent[first_claim[-1].pk]
    assert all(sent[job.pk] < slow for job in second_claim)
    assert EmailJob.objects.filter(status=Status.SENT).count() == 80 == smtp.count()

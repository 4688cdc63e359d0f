"""Scenario 10, property-based: the retry schedule, and the job state machine driven through the
real send task against the fault server with random sequences of SMTP outcomes.
"""

import itertools

import pytest
from django.core.mail import send_mail
from django.db import connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from notifications import services, throttle
from notifications.models import EmailAttempt, EmailJob
from notifications.retry import JITTER_FLOOR, retry_delay, should_retry
from notifications.tasks import send_email
from tests.faults.conftest import USERNAME

pytestmark = [pytest.mark.integration, pytest.mark.faults]
delays_lists = st.lists(st.floats(0, 86_400, allow_nan=False), min_size=1, max_size=12)


@given(delays=delays_lists, attempts=st.integers(1, 1000))
def test_the_delay_is_the_configured_one_and_the_last_repeats(delays, attempts):
    expected = delays[min(attempts, len(delays)) - 1]
    assert retry_delay(attempts, delays, jitter=False) == expected
    jittered = retry_delay(attempts, delays)
    assert JITTER_FLOOR * expected - 1e-9 <= jittered <= expected + 1e-9


@given(delays=delays_lists.map(sorted), attempts=st.integers(1, 100))
def test_a_growing_schedule_never_waits_less_for_a_later_attempt(delays, attempts):
    assert retry_delay(attempts + 1, delays, jitter=False) >= retry_delay(
        attempts, delays, jitter=False
    )


@given(max_attempts=st.integers(1, 50))
def test_a_job_is_tried_exactly_max_attempts_times_when_every_attempt_fails(max_attempts):
    tries = 1
    while should_retry(tries, max_attempts):
        tries += 1
    assert tries == max_attempts


@given(attempts=st.integers(-5, 0), delays=delays_lists)
def test_no_delay_before_the_first_attempt(attempts, delays):
    with pytest.raises(ValueError):
        retry_delay(attempts, delays)


# The job state machine --------------------------------------------------------------------------
Status = EmailJob.Status
UNCHANGED = {status: {status} for status in Status.values}
ALLOWED = {  # what a job may become between two steps, by the step that ran
    "deliver": UNCHANGED | {Status.PENDING: {Status.PENDING, Status.SENT, Status.FAILED}},
    "cancel": UNCHANGED | {Status.PENDING: {Status.CANCELLED}},  # for the job cancelled
    "other": UNCHANGED,  # for the other jobs
}
OUTCOMES = ["250", "250", "451", "421", "550", "554", "drop", "535", "down"]
MAX_ATTEMPTS = 3
COUNTED = (EmailAttempt.Outcome.SENT, EmailAttempt.Outcome.RETRY, EmailAttempt.Outcome.FAILED)
numbers = itertools.count()


class JobLifecycle(RuleBasedStateMachine):
    server = None  # the fault server, set by the test

    def __init__(self):
        super().__init__()
        self.status: dict[int, str] = {}
        self.on_the_wire: list[str] = []
        self.server.reset()
        self.server.configure(credentials=(USERNAME, self.password))
        throttle.close_circuit()  # each example starts unpaused, whatever the last one left
        self.server.on_accept = self.observe

    def observe(self, message_id: str) -> None:
        """Called by the server as it stores a message: the job must be `sending` right then."""
        try:
            status = EmailJob.objects.filter(message_id=message_id).values_list("status", flat=True)
            self.on_the_wire.append(status.first())
        finally:
            connections.close_all()

    jobs = Bundle("jobs")

    @rule(target=jobs)
    def enqueue(self):
        number = next(numbers)
        send_mail(f"State {number}", "Body\n", "from@example.org", [f"s{number}@example.org"])
        job = EmailJob.objects.get(recipient=f"s{number}@example.org")
        assert job.status == Status.PENDING and job.attempts == 0
        self.status[job.pk] = job.status
        return job.pk

    @rule(job=jobs, outcome=st.sampled_from(OUTCOMES))
    def deliver(self, job, outcome):
        recipient = EmailJob.objects.get(pk=job).recipient
        server = self.server
        if outcome in ("451", "421"):
            server.configure(transient_first=1, transient_codes=(int(outcome),))
        elif outcome == "550":
            server.configure(refuse_rcpt={recipient: "550 5.1.1 No such user"})
        elif outcome == "554":
            server.configure(refuse_data={recipient: "554 5.7.1 Refused"})
        elif outcome == "drop":
            server.configure(drop_first=1, drop_after_bytes=100)
        elif outcome == "535":
            server.configure(credentials=(USERNAME, "not-the-password"))
        elif outcome == "down":
            server.stop()
        try:
            send_email.run(job)
        finally:
            server.start()
            server.configure(
                transient_first=0,
                refuse_rcpt={},
                refuse_data={},
                drop_first=0,
                credentials=(USERNAME, self.password),
            )
        self.check("deliver")

    @rule(job=jobs)
    def cancel(self, job):
        services.cancel_jobs(job_ids=[job])
        self.check("cancel", only=job)

    def check(self, step: str, only: int | None = None) -> None:
        now = dict(EmailJob.objects.filter(pk__in=self.status).values_list("pk", "status"))
        for pk, before in self.status.items():
            allowed = ALLOWED[step if only in (None, pk) else "other"][before]
            assert now[pk] in allowed, f"job {pk}: {before} -> {now[pk]} by {step}"
        self.status = now

    @invariant()
    def only_sending_jobs_are_on_the_wire(self):
        assert set(self.on_the_wire) <= {Status.SENDING}, self.on_the_wire

    @invariant()
    def attempts_agree_with_the_log(self):
        copies = self.server.copies()
        for job in EmailJob.objects.filter(pk__in=self.status):
            log = list(job.attempt_log.order_by("number", "started_at"))
            counted = [a for a in log if a.outcome in COUNTED]
            assert job.attempts == len(counted) <= MAX_ATTEMPTS, (job.pk, job.attempts, log)
            assert [a.number for a in counted] == list(range(1, len(counted) + 1))
            assert job.status != Status.SENDING
            sent = [a for a in log if a.outcome == EmailAttempt.Outcome.SENT]
            if job.status == Status.SENT:
                assert len(sent) == 1 and log[-1].outcome == EmailAttempt.Outcome.SENT
                assert copies[job.message_id] == 1
            else:
                assert not sent and copies[job.message_id] == 0
            if job.status == Status.FAILED:
                assert counted[-1].outcome == EmailAttempt.Outcome.FAILED


@pytest.mark.django_db(transaction=True)
def test_job_state_machine_allows_only_the_documented_transitions(faulty, settings, reliability):
    from tests.faults.conftest import PASSWORD

    settings.NOTIFICATIONS = {
        **settings.NOTIFICATIONS,
        "RETRY_DELAYS": [0.0],
        "RETRY_MAX_ATTEMPTS": MAX_ATTEMPTS,
        "CONFIG_ERROR_DELAY": 0.0,
        "SMTP_TIMEOUT": 3.0,
        "CIRCUIT_BASE_DELAY": 0.0,  # no pause of the whole queue between two steps
        "CIRCUIT_MAX_DELAY": 0.0,
    }
    JobLifecycle.server, JobLifecycle.password = faulty, PASSWORD
    run_state_machine_as_test(
        JobLifecycle,
        settings=settings_for_machine(),
    )
    reliability.record(
        "10b. job state machine (hypothesis, real send task and SMTP server)",
        n=EmailJob.objects.count(),
        lost=0,
        duplicated=0,
        statuses=dict(
            sorted({s: EmailJob.objects.filter(status=s).count() for s in Status.values}.items())
        ),
        drain_seconds=None,
        note="pending->sending->sent|failed|pending, pending->cancelled; nothing else observed",
    )


def settings_for_machine():
    return settings(
        max_examples=25,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )

"""The Celery app: configuration comes from Django settings (CELERY_*), tasks from the apps."""

import os

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_shutdown, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")

app = Celery("vertex_email")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_recovery(sender: Celery, **kwargs) -> None:
    """Beat sweeps for lost and stranded jobs every EMAIL_SWEEP_INTERVAL seconds."""
    from django.conf import settings

    sender.add_periodic_task(
        settings.NOTIFICATIONS["SWEEP_INTERVAL"],
        sender.signature("notifications.tasks.recover_jobs"),
        name="recover email jobs",
    )
    sender.add_periodic_task(
        settings.NOTIFICATIONS["ALERT_INTERVAL"],
        sender.signature("notifications.tasks.evaluate_alerts"),
        name="evaluate e-mail failure-rate alerts",
    )


@worker_init.connect
@beat_init.connect
def _refuse_unsafe_configuration(sender=None, **kwargs) -> None:
    from notifications.startup import exit_if_unsafe

    exit_if_unsafe("celery")


@worker_init.connect
def _share_memory_with_the_pool(sender=None, **kwargs) -> None:
    """Load the apps and tasks in the parent, then move every object it has into the garbage
    collector's permanent generation (gc.freeze), before the prefork pool forks. A collection in
    a child then never writes to those objects' pages, so they stay shared instead of being
    copied into each child: 148 -> 127 MiB PSS for `-c 2` (3 processes), measured with
    benchmarks/compare.py's memory section."""
    import gc

    import django

    django.setup()
    import notifications.tasks  # noqa: F401 - the send path's modules, before the fork

    _parse_pdeathsig_declaration()
    gc.collect()
    gc.freeze()


def _parse_pdeathsig_declaration() -> None:
    """Each pool child asks the kernel to kill it when the parent dies (billiard's
    set_pdeathsig), through cffi when it is installed, as cryptography needs it: cffi parses a
    C declaration, importing pycparser and building its parser, 2.5-3 MiB in each child. Done
    once here, before the fork, the children share it."""
    import contextlib

    from billiard.util import get_pdeathsig

    with contextlib.suppress(OSError):  # not Linux
        get_pdeathsig()


@worker_ready.connect
def _recover_at_start(sender, **kwargs) -> None:
    """A starting worker looks for jobs that a dead one left behind or whose message was lost."""
    sender.app.send_task("notifications.tasks.recover_jobs")


@worker_process_shutdown.connect
def _close_smtp(**kwargs) -> None:
    from notifications.smtp import close_client

    close_client()

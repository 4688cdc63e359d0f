"""Our project set up in the calling process, for the scripts that time our code alone
(profile_ours.py, inprocess.py): a throwaway database, a redis-server and a catcher of its own."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import compare
import databases
import throughput as tp


class Stack(NamedTuple):
    redis: tp.Redis
    catcher: tp.Catcher
    summary: str  # the database, for the script's header


@contextlib.contextmanager
def project_in_this_process(
    project: Path,
    *,
    name: str,
    database_url: str | None = None,
    accept_delay: float = 0.0,
    environment: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """The project in `project` with Django set up in this process: a SQLite file (or, with
    `database_url`, a database created on that PostgreSQL server) migrated, a redis-server as
    broker, and a catcher (smtp-sink when found and no `accept_delay` in ms is asked for, else
    aiosmtpd). `environment` adds settings. Ends and removes all of it on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vertex-{name}-"))
    catcher = None
    server = databases.server(database_url)
    try:
        database = server.new(name, workdir / f"{name}.sqlite3")
        redis = tp.Redis(workdir)
        sink = None if accept_delay else compare.find_smtp_sink(None)
        catcher = compare.SinkCatcher(*sink, workdir) if sink else compare.AioCatcher(accept_delay)
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "vertex_email.settings",
                "DATABASE_URL": database.url,
                "CELERY_BROKER_URL": redis.url,
                "SMTP_HOST": tp.HOST,
                "SMTP_PORT": str(catcher.smtp_port),
                "DJANGO_ENV": "development",
                "DJANGO_DEBUG": "false",
                "LOG_LEVEL": "WARNING",
                **(environment or {}),
            }
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=project,
            check=True,
            timeout=180,
        )
        sys.path.insert(0, str(project))
        import django

        django.setup()
        import vertex_email  # noqa: F401 - the Celery app, so that publishing finds its broker

        yield Stack(redis, catcher, server.summary)
    finally:
        if catcher is not None:
            catcher.close()
        tp.end_all()
        from django.db import connections

        connections.close_all()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)

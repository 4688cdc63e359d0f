"""The systems compare.py measures: ours, and each peer in a throwaway virtualenv and project.

A peer gets a virtualenv of its own (`python -m venv` under the run's temporary directory, or
--venv-dir to keep it between runs), into which pip installs the pinned versions below: the same
Django, Celery and redis client as ours, and the peer. Nothing goes into this project's
requirements or its .venv. Its Django project is generated next to it: SQLite in WAL mode with
the options ours uses (or, with --database-url, a fresh PostgreSQL database and the psycopg pin
of ours in the venv; see databases.py), DEBUG off, the peer's EMAIL_BACKEND, SMTP pointed at the
catcher.
"""

import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from databases import PostgresServer, SqliteDatabase, SqliteFiles

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DRIVER = Path(__file__).resolve().parent / "bench_driver.py"

# The peers' releases measured (the newest on PyPI when this was written); change them here.
PEER_PACKAGES = {
    "post_office": "django-post-office==3.12.0",
    "celery_email": "django-celery-email==3.0.0",
    "mailer": "django-mailer==2.3.2",
}


def common_pins() -> list[str]:
    """The versions our .venv has, so that only the queue differs."""
    names = (
        "Django",
        "celery",
        "kombu",
        "redis",
        "packaging",
    )  # kombu's redis transport needs packaging
    return [f"{name}=={metadata.version(name)}" for name in names]


def database_pins(databases: SqliteFiles | PostgresServer) -> list[str]:
    """What a peer's Django needs for the database: on PostgreSQL, the psycopg of our .venv."""
    if databases.kind == "postgresql":
        return [f"psycopg[binary]=={metadata.version('psycopg')}"]
    return []


@dataclass
class System:
    """One system as compare.py drives it; the same fields for ours and the peers."""

    key: str
    label: str
    python: str
    cwd: Path
    env: dict[str, str]
    database: SqliteDatabase  # or databases.PostgresDatabase: the same query()
    clear_tables: list[str]
    celery_app: str | None = None  # worker: `celery -A APP worker`
    queue: str | None = None  # worker -Q
    drain: list[str] | None = None  # a command run back to back while it is measured
    bulk: str = "send_mass_mail"  # or "enqueue_emails"
    versions: list[str] = field(default_factory=list)

    def environment(self, smtp_port: int, broker_url: str) -> dict[str, str]:
        return {
            **self.env,
            "BENCH_SMTP_PORT": str(smtp_port),
            "SMTP_PORT": str(smtp_port),
            "SMTP_HOST": HOST,
            "CELERY_BROKER_URL": broker_url,
            "BENCH_CLEAR_TABLES": ",".join(self.clear_tables),
        }

    def query(self, sql: str) -> list[tuple]:
        return self.database.query(sql)

    def finished(self) -> int | None:
        """How many messages the system's own tables record as sent; None if it keeps none."""
        sql = DONE_SQL.get(self.key)
        return self.query(sql)[0][0] if sql else None

    def verify(
        self, ids: dict[str, int], subjects: dict[str, int], count: int, token: str
    ) -> list[str]:
        """Each of the run's `count` messages (numbered in its Subject by the driver) at the catcher
        exactly once, exactly `count` distinct Message-IDs, and the system's tables agree."""
        problems = []
        mine = {s: n for s, n in subjects.items() if f"#{token}-" in s}
        twice = sum(n - 1 for n in mine.values() if n > 1)
        foreign = sum(subjects.values()) - sum(mine.values())
        if len(mine) != count or twice or foreign:
            problems.append(
                f"catcher: {len(mine)} of {count} messages, {twice} delivered again, "
                f"{count - len(mine)} lost, {foreign} not of this run"
            )
        id_twice = sum(n - 1 for n in ids.values() if n > 1)
        if len(ids) != count or id_twice:
            problems.append(
                f"catcher: {len(ids)} distinct Message-IDs for {count} messages, "
                f"{id_twice} seen twice"
            )
        for sql, expected, what in CHECKS.get(self.key, []):
            got = self.query(sql)[0][0]
            if got != (count if expected == "N" else expected):
                problems.append(f"{what}: {got}")
        if self.key == "ours":
            jobs = {row[0] for row in self.query("SELECT message_id FROM notifications_emailjob")}
            if jobs != set(ids):
                problems.append("catcher's Message-IDs differ from the jobs'")
        return problems


DONE_SQL = {
    "ours": "SELECT count(*) FROM notifications_emailjob WHERE status = 'sent'",
    "post_office": "SELECT count(*) FROM post_office_email WHERE status = 0",
    "mailer": "SELECT count(*) FROM mailer_messagelog WHERE result = '1'",
}
CHECKS = {  # (SQL, expected: "N" or a number, what it means)
    "ours": [
        ("SELECT count(*) FROM notifications_emailjob", "N", "jobs"),
        ("SELECT count(*) FROM notifications_emailjob WHERE status != 'sent'", 0, "jobs not sent"),
        (
            "SELECT count(*) FROM notifications_emailattempt WHERE outcome = 'sent'",
            "N",
            "sent attempts",
        ),
        (
            "SELECT count(*) FROM (SELECT job_id FROM notifications_emailattempt "
            "GROUP BY job_id HAVING count(*) != 1) AS once",  # PostgreSQL < 16 needs the alias
            0,
            "jobs without exactly one attempt",
        ),
    ],
    "post_office": [
        ("SELECT count(*) FROM post_office_email", "N", "emails"),
        ("SELECT count(*) FROM post_office_email WHERE status != 0", 0, "emails not sent"),
    ],
    "mailer": [
        ("SELECT count(*) FROM mailer_message", 0, "messages left in the queue"),
        ("SELECT count(*) FROM mailer_messagelog WHERE result != '1'", 0, "log rows not success"),
    ],
}


def ours(workdir: Path, redis_url: str, databases: SqliteFiles | PostgresServer) -> System:
    database = databases.new("ours", workdir / "ours.sqlite3")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "vertex_email.settings",
        "DATABASE_URL": database.url,
        "CELERY_BROKER_URL": redis_url,
        "DJANGO_ENV": "development",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    }
    system = System(
        key="ours",
        label="vertex_email (ours)",
        python=sys.executable,
        cwd=ROOT,
        env=env,
        database=database,
        clear_tables=["notifications_emailattempt", "notifications_emailjob"],
        celery_app="vertex_email",
        queue="email",
        bulk="enqueue_emails",
        versions=["this checkout"],
    )
    _migrate(system, redis_url)
    return system


# --- Peers --------------------------------------------------------------------------------------
SETTINGS = '''\
"""Generated by vertex_email's benchmarks/peers.py for one benchmark run; throwaway."""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", {app!r}]
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}}]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
{databases}EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(os.environ.get("BENCH_SMTP_PORT", "25"))
DEFAULT_FROM_EMAIL = "bench@example.com"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
LOGGING = {{
    "version": 1,
    "handlers": {{"console": {{"class": "logging.StreamHandler"}}}},
    "root": {{"handlers": ["console"], "level": "WARNING"}},
}}
'''
CELERY_APP = """\
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")
app = Celery("benchproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
"""
MANAGE = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""
PEER_SETTINGS = {
    # Defaults otherwise: BATCH_SIZE 100, THREADS_PER_PROCESS 5, LOG_LEVEL 2 (a Log row a mail).
    "post_office": """
EMAIL_BACKEND = "post_office.EmailBackend"
POST_OFFICE = {{
    "BACKENDS": {{"default": "django.core.mail.backends.smtp.EmailBackend"}},
    "LOCK_FILE_NAME": {lock!r},
    "CELERY_ENABLED": os.environ.get("BENCH_CELERY") == "1",
}}
""",
    # Defaults otherwise: CHUNK_SIZE 10 messages a task, Celery's prefetch multiplier 4.
    "celery_email": """
EMAIL_BACKEND = "djcelery_email.backends.CeleryEmailBackend"
CELERY_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
""",
    "mailer": """
EMAIL_BACKEND = "mailer.backend.DbBackend"
MAILER_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
MAILER_LOCK_PATH = {lock!r}
""",
}
APPS = {"post_office": "post_office", "celery_email": "djcelery_email", "mailer": "mailer"}
USES_CELERY = {"post_office", "celery_email"}


def make_venv(name: str, venv_root: Path, log, extra: list[str]) -> tuple[str, list[str]]:
    """A virtualenv with the peer and the common pins, plus `extra` (a database driver) added to
    it when missing; returns its python and `pip freeze`."""
    venv = venv_root / name
    python = venv / "bin" / "python"
    pins = common_pins() if name in USES_CELERY else common_pins()[:1]  # Django alone
    wanted = [*pins, PEER_PACKAGES[name]]
    marker = venv / "bench-requirements.txt"
    added = venv / "bench-extra-requirements.txt"  # what was added since, one a line
    if not (python.exists() and marker.exists() and marker.read_text() == "\n".join(wanted)):
        log(f"  creating {venv} with {' '.join(wanted)}")
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300
        )
        _pip_install(python, wanted, venv / "pip-install.log")
        marker.write_text("\n".join(wanted))
    have = set(added.read_text().split()) if added.exists() else set()
    if missing := [pin for pin in extra if pin not in have]:
        log(f"  adding {' '.join(missing)} to {venv}")
        _pip_install(python, [*wanted, *missing], venv / "pip-install-extra.log")
        added.write_text("".join(f"{pin}\n" for pin in sorted(have | set(missing))))
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return str(python), frozen


def _pip_install(python: Path, packages: list[str], log_path: Path) -> None:
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", *packages],
        capture_output=True,
        text=True,
        timeout=600,
    )
    log_path.write_text(installed.stdout + installed.stderr)
    if installed.returncode:
        raise RuntimeError(f"pip install {' '.join(packages)} failed:\n{installed.stderr[-2000:]}")


def peer(
    name: str,
    workdir: Path,
    venv_root: Path,
    redis_url: str,
    databases: SqliteFiles | PostgresServer,
    *,
    celery: bool,
    log,
) -> System:
    """The peer's venv and a Django project for it in workdir/NAME[-celery], with a database of
    its own."""
    python, frozen = make_venv(name, venv_root, log, database_pins(databases))
    key = f"{name}-celery" if name == "post_office" and celery else name
    project = workdir / key
    package = project / "benchproj"
    package.mkdir(parents=True, exist_ok=True)
    (project / "manage.py").write_text(MANAGE)
    database = databases.new(key, project / "db.sqlite3")
    settings = SETTINGS.format(app=APPS[name], databases=database.settings)
    settings += PEER_SETTINGS[name].format(lock=str(project / f"{name}-lock"))
    (package / "settings.py").write_text(settings)
    if name in USES_CELERY:
        (package / "celery.py").write_text(CELERY_APP)
        (package / "__init__.py").write_text("from .celery import app as celery_app  # noqa\n")
    else:
        (package / "__init__.py").write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "benchproj.settings",
        **database.env,
        "BENCH_CELERY": "1" if celery else "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    tables = {
        "post_office": ["post_office_log", "post_office_email"],
        "mailer": ["mailer_messagelog", "mailer_message"],
        "celery_email": [],
    }[name]
    label, drain, app = {
        ("post_office", False): (
            "django-post_office send_queued_mail",
            [python, "manage.py", "send_queued_mail", "--processes", "1"],
            None,
        ),
        ("post_office", True): ("django-post_office Celery task", None, "benchproj"),
        ("celery_email", True): ("django-celery-email", None, "benchproj"),
        ("mailer", False): ("django-mailer send_mail", [python, "manage.py", "send_mail"], None),
    }[(name, celery)]
    wanted = {
        p.split("==")[0].split("[")[0].lower().replace("_", "-")
        for p in [PEER_PACKAGES[name], *database_pins(databases)]
    }
    versions = [line for line in frozen if line.split("==")[0].lower().replace("_", "-") in wanted]
    system = System(
        key=name,
        label=label,
        python=python,
        cwd=project,
        env=env,
        database=database,
        clear_tables=tables,
        celery_app=app,
        drain=drain,
        versions=versions,
    )
    _migrate(system, redis_url)
    return system


def _migrate(system: System, redis_url: str) -> None:
    subprocess.run(
        [system.python, "manage.py", "migrate", "--verbosity", "0"],
        cwd=system.cwd,
        env=system.environment(25, redis_url),
        check=True,
        timeout=300,
    )

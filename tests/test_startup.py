"""Production refuses to start with SMTP credentials in the environment or without a usable key."""

import os
import sqlite3
import subprocess
import sys

import pytest

from notifications import crypto
from tests.support.processes import ROOT

PASSWORD = "env-password-8d1f"


@pytest.fixture
def production_env(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMTP_", "EMAIL_", "DJANGO_", "DATABASE_"))
    }
    env.update(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY="a-production-secret-key-for-tests-0123456789-abcdefghijkl",
        DJANGO_ALLOWED_HOSTS="localhost",
        DATABASE_URL=f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        EMAIL_ENCRYPTION_KEY=crypto.generate_key(),
        CELERY_BROKER_URL="redis://127.0.0.1:1/0",
    )
    return env


def run(args, env, timeout=60):
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def manage(*args, env, stdin=None):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        check=False,
    )


ENTRY_POINTS = {
    "manage.py check": [sys.executable, "manage.py", "check"],
    "manage.py shell": [sys.executable, "manage.py", "shell", "-c", "print('started')"],
    "web (wsgi)": [sys.executable, "-c", "import vertex_email.wsgi"],
    "celery worker": [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "vertex_email",
        "worker",
        "-Q",
        "email",
    ],
    "celery beat": [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "vertex_email",
        "beat",
        "-s",
        "/tmp/vertex-email-test-beat-schedule",
    ],
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("variable", ["SMTP_USERNAME", "SMTP_PASSWORD"])
def test_production_entry_points_refuse_credentials_in_the_environment(
    production_env, entry_point, variable
):
    result = run(ENTRY_POINTS[entry_point], {**production_env, variable: PASSWORD})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "refuses to start" in output and f"{variable} set in the environment" in output
    assert "smtp_settings import-env" in output
    assert PASSWORD not in output
    assert "started" not in result.stdout


def test_development_only_warns(production_env):
    env = {**production_env, "DJANGO_ENV": "development", "SMTP_PASSWORD": PASSWORD}
    result = manage("check", env=env)
    assert result.returncode == 0, result.stderr
    assert "notifications.W001" in result.stderr + result.stdout


def test_production_refuses_a_missing_key_file(production_env, tmp_path):
    env = {
        **production_env,
        "EMAIL_ENCRYPTION_KEY": "",
        "EMAIL_ENCRYPTION_KEY_FILE": str(tmp_path / "absent.key"),
    }
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "cannot read the encryption key file" in result.stderr
    assert not (tmp_path / "absent.key").exists()


def test_production_refuses_a_malformed_key(production_env):
    result = manage("check", env={**production_env, "EMAIL_ENCRYPTION_KEY": "short"})
    assert result.returncode != 0
    assert "malformed: expected 32 bytes" in result.stderr


def test_import_env_moves_the_credentials_into_the_encrypted_row(production_env, tmp_path):
    with_credentials = {
        **production_env,
        "SMTP_USERNAME": "mailer",
        "SMTP_PASSWORD": PASSWORD,
        "SMTP_HOST": "smtp.example.org",
        "SMTP_PORT": "587",
        "EMAIL_FROM": "noreply@example.org",
    }
    assert manage("migrate", "-v0", env=with_credentials).returncode == 0
    imported = manage("smtp_settings", "import-env", env=with_credentials)
    assert imported.returncode == 0, imported.stderr
    assert "remove SMTP_USERNAME and SMTP_PASSWORD from the environment" in imported.stdout
    assert PASSWORD not in imported.stdout + imported.stderr
    again = manage("smtp_settings", "import-env", env=with_credentials)
    assert again.returncode != 0 and "already holds a password" in again.stderr

    shown = manage("smtp_settings", "show", env=production_env)
    assert shown.returncode == 0, shown.stderr
    assert "set (encrypted)" in shown.stdout and "smtp.example.org" in shown.stdout
    assert "mailer" in shown.stdout and PASSWORD not in shown.stdout

    database = sqlite3.connect(tmp_path / "prod.sqlite3")
    (stored,) = database.execute(
        "select smtp_password_encrypted from notifications_notificationsettings"
    ).fetchone()
    assert stored.startswith("v1:")
    assert PASSWORD.encode() not in (tmp_path / "prod.sqlite3").read_bytes()

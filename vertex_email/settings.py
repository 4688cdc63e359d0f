"""Project settings: the only module that reads the environment (django-environ)."""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "production", "test"}:
    raise environ.ImproperlyConfigured(
        f"DJANGO_ENV must be development, production or test, not {DJANGO_ENV!r}"
    )
IS_PRODUCTION = DJANGO_ENV == "production"

SECRET_KEY = env.str(
    "DJANGO_SECRET_KEY",
    default="" if IS_PRODUCTION else "insecure-development-key-change-me-0123456789abcdef",
)
if not SECRET_KEY:
    raise environ.ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_ENV=production")
DEBUG = env.bool("DJANGO_DEBUG", default=DJANGO_ENV == "development")
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=[] if IS_PRODUCTION else ["localhost", "127.0.0.1"]
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "notifications",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # first and last: request metrics
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's static files under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "vertex_email.urls"
WSGI_APPLICATION = "vertex_email.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
VAR_DIR.mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several worker processes write at once: WAL lets readers run beside the writer, IMMEDIATE
    # transactions take the write lock up front so the busy timeout applies instead of failing
    # at once with "database is locked", and the timeout is long enough to outwait any writer.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env.float("SQLITE_BUSY_TIMEOUT", default=30.0),
        "transaction_mode": "IMMEDIATE",
        # Workers checkpoint the WAL after a batch, at most every 0.2 s (delivery.py); a commit
        # checkpoints by itself only past 10,000 pages (40 MB), when no worker runs.
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=10000;"
        ),
    }
    # Integration tests run real worker processes, which need a file, not an in-memory database.
    # One file per test run, so that runs side by side don't share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test_db_{os.getpid()}.sqlite3")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The same backend wrapped by django-prometheus, which counts connections, queries and errors;
# SQLite's also queues writers on a file lock (vertex_email/sqlite_backend).
DATABASES["default"]["ENGINE"] = {
    "django.db.backends.sqlite3": "vertex_email.sqlite_backend",
}.get(
    DATABASES["default"]["ENGINE"],
    DATABASES["default"]["ENGINE"].replace("django.db.backends.", "django_prometheus.db.backends."),
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every start without it (development)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if IS_PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- E-mail ---------------------------------------------------------------------------------
# Django's mail API enqueues; the worker sends over SMTP with the settings below.
EMAIL_BACKEND = "notifications.backends.QueuedEmailBackend"
EMAIL_FROM = env.str("EMAIL_FROM", default="noreply@localhost")
DEFAULT_FROM_EMAIL = EMAIL_FROM
SERVER_EMAIL = EMAIL_FROM
ADMIN_EMAILS = env.list("ADMIN_EMAILS", default=[])
ADMINS = [(address, address) for address in ADMIN_EMAILS]

NOTIFICATIONS = {
    "SMTP_HOST": env.str("SMTP_HOST", default="127.0.0.1"),
    "SMTP_PORT": env.int("SMTP_PORT", default=1025),
    "SMTP_USE_TLS": env.bool("SMTP_USE_TLS", default=False),
    "SMTP_USE_SSL": env.bool("SMTP_USE_SSL", default=False),
    "SMTP_TIMEOUT": env.float("SMTP_TIMEOUT", default=10.0),
    "FROM_EMAIL": EMAIL_FROM,
    "MESSAGE_ID_DOMAIN": env.str("EMAIL_MESSAGE_ID_DOMAIN", default="vertex-email.local"),
    "MAX_MESSAGE_BYTES": env.int("EMAIL_MAX_MESSAGE_BYTES", default=10 * 1024 * 1024),
    "RETRY_MAX_ATTEMPTS": env.int("EMAIL_RETRY_MAX_ATTEMPTS", default=5),
    "RETRY_DELAYS": [
        float(d) for d in env.list("EMAIL_RETRY_DELAYS", default=["1", "2", "4", "8", "16"])
    ],
    "CONFIG_ERROR_DELAY": env.float("EMAIL_CONFIG_ERROR_DELAY", default=60.0),
    "LEASE_SECONDS": env.float("EMAIL_LEASE_SECONDS", default=40.0),
    "BATCH_SIZE": env.int("EMAIL_BATCH_SIZE", default=50),
    # SMTP connections each worker process (each thread, with -P threads) sends a batch over at
    # once: a relay that takes tens of ms a message is waited on in parallel, not in turn.
    "SMTP_CONNECTIONS": env.int("EMAIL_SMTP_CONNECTIONS", default=1),
    # No new wake-up message while this many already wait on the queue (each drains batches).
    "WAKE_QUEUE_DEPTH": env.int("EMAIL_WAKE_QUEUE_DEPTH", default=8),
    # Wake-ups are decided by a thread of the enqueuing process, so send_mail() does not wait on
    # Redis. False where an application may not run threads (uWSGI without --enable-threads).
    "WAKE_IN_BACKGROUND": env.bool("EMAIL_WAKE_IN_BACKGROUND", default=True),
    # Per SMTP account, across every worker: e.g. "14/s" (SES) or "20/s,2000/d" (Gmail).
    "RATE_LIMITS": env.str("EMAIL_RATE_LIMITS", default=""),
    "CIRCUIT_BREAKER": env.bool("EMAIL_CIRCUIT_BREAKER", default=True),
    # Connection failures in a row (refused, timed out, dropped) that pause everyone; a refused
    # login or TLS pauses at once.
    "CIRCUIT_THRESHOLD": env.int("EMAIL_CIRCUIT_THRESHOLD", default=3),
    "CIRCUIT_BASE_DELAY": env.float("EMAIL_CIRCUIT_BASE_DELAY", default=5.0),
    "CIRCUIT_MAX_DELAY": env.float("EMAIL_CIRCUIT_MAX_DELAY", default=300.0),
    "SWEEP_INTERVAL": env.float("EMAIL_SWEEP_INTERVAL", default=15.0),
    "REDISPATCH_AFTER": env.float("EMAIL_REDISPATCH_AFTER", default=60.0),
    "SWEEP_BATCH": env.int("EMAIL_SWEEP_BATCH", default=5000),
    "ALERT_INTERVAL": env.float("EMAIL_ALERT_INTERVAL", default=60.0),
    "ALERT_COOLDOWN": env.float("EMAIL_ALERT_COOLDOWN", default=3600.0),
    "TELEGRAM_API_BASE_URL": env.str("TELEGRAM_API_BASE_URL", default="https://api.telegram.org"),
}
if not 1 <= NOTIFICATIONS["SMTP_CONNECTIONS"] <= 100:
    raise environ.ImproperlyConfigured(
        f"EMAIL_SMTP_CONNECTIONS must be between 1 and 100, not {NOTIFICATIONS['SMTP_CONNECTIONS']}"
    )
# Secrets in the database are encrypted with this key (base64 of 32 bytes; several, comma-separated,
# while rotating: the first encrypts) or with the keys in this file, created in development.
EMAIL_ENCRYPTION_KEY = env.str("EMAIL_ENCRYPTION_KEY", default="")
EMAIL_ENCRYPTION_KEY_FILE = env.path(
    "EMAIL_ENCRYPTION_KEY_FILE", default=VAR_DIR / "encryption.key"
)
# SMTP credentials belong in the encrypted settings row. These are read only so that production
# can refuse to start while they are set, and `smtp_settings import-env` can move them into the
# row. (Django's error pages mask settings whose names contain PASS.)
SMTP_USERNAME_FROM_ENV = env.str("SMTP_USERNAME", default=None)
SMTP_PASSWORD_FROM_ENV = env.str("SMTP_PASSWORD", default=None)

# --- Celery ---------------------------------------------------------------------------------
EMAIL_QUEUE_WORKERS = env.int("EMAIL_QUEUE_WORKERS", default=3)
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# Rate-limit counters and the circuit breaker, shared by every worker.
EMAIL_REDIS_URL = env.str("EMAIL_REDIS_URL", default=CELERY_BROKER_URL)
CELERY_TASK_DEFAULT_QUEUE = "email"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# At-least-once: ack after the task ran, requeue the task of a worker that died, reserve one
# message per process so a crash strands as few as possible. The job row, not the broker, is the
# truth: the sweeper recovers what the broker loses, and the claim stops duplicates.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_WORKER_CONCURRENCY = EMAIL_QUEUE_WORKERS
# Cancelling a running send on a broker hiccup would only cut SMTP conversations in half; the
# claim already makes a redelivered message harmless.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than the longest retry countdown, so a waiting retry is never redelivered early.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
# A send is cut off before its lease ends, so two workers can never hold the same job at once.
CELERY_TASK_SOFT_TIME_LIMIT = NOTIFICATIONS["LEASE_SECONDS"] * 0.75
CELERY_TASK_TIME_LIMIT = NOTIFICATIONS["LEASE_SECONDS"] * 0.875
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection around every task unless told to reuse
# it: a new connection per task cost more than the send itself (41-60 ms each on PostgreSQL).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Flower shows each send task by name with its job id; it needs the workers' task events.
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_TASK_EVENTS", default=True)
# No "task-sent" event: it would double the publishes of every send_mail(); Flower shows tasks
# from the workers' received/started/succeeded events.
CELERY_TASK_SEND_SENT_EVENT = False

# --- Metrics (/metrics) --------------------------------------------------------------------
NOTIFICATIONS |= {
    # Who may scrape: each one that is set must pass. In production, with neither set, /metrics
    # answers 403. Addresses are REMOTE_ADDR (the peer), IPs or networks, comma-separated.
    "METRICS_BEARER_TOKEN": env.str("METRICS_BEARER_TOKEN", default=""),
    "METRICS_ALLOWED_IPS": env.list("METRICS_ALLOWED_IPS", default=[]),
    # Where workers tally their attempts for /metrics to read; empty: the Celery broker's Redis.
    "METRICS_REDIS_URL": env.str("METRICS_REDIS_URL", default=""),
}
# Set when several processes serve the web (gunicorn): django-prometheus' own metrics then live in
# files here, merged at each scrape. prometheus_client reads the variable itself, at import; the
# start-up command must empty the directory before the first process starts (docker-compose.yml).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")  # plain | json
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "notifications.redaction.RedactSecretsFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"celery": {"level": LOG_LEVEL}},
}

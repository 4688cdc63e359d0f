"""Where compare.py's systems keep their rows: a SQLite file each, or a fresh PostgreSQL database.

Each system (ours, each peer) gets a database of its own. On SQLite that is a file in its
directory, in WAL mode with our options. With --database-url postgres://USER[:PW]@HOST:PORT/DB
it is a database created (CREATE DATABASE, connected to DB) on that server when the system is set
up and dropped when compare.py ends. This process reads the rows through sqlite3 or through
psycopg from our .venv; the peers' venvs get the psycopg pin of ours (peers.py).
"""

import os
import re
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The peers' generated settings (peers.py SETTINGS): the database block, read from BENCH_DB*.
SQLITE_SETTINGS = """\
# As ours: WAL, IMMEDIATE transactions, a 30 s busy timeout.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["BENCH_DB"],
        "OPTIONS": {
            "timeout": 30.0,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
"""
POSTGRES_SETTINGS = """\
# As ours: connections kept for 60 s with health checks (Django's default, 0, would reconnect
# after each Celery task).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["BENCH_DB"],
        "HOST": os.environ["BENCH_DB_HOST"],
        "PORT": os.environ["BENCH_DB_PORT"],
        "USER": os.environ["BENCH_DB_USER"],
        "PASSWORD": os.environ.get("BENCH_DB_PASSWORD", ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}
"""


class SqliteDatabase:
    """A SQLite file of one system."""

    settings = SQLITE_SETTINGS

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"  # ours: DATABASE_URL
        self.env = {"BENCH_DB": str(path)}  # a peer's generated settings

    def query(self, sql: str) -> list[tuple]:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql).fetchall()

    def close(self) -> None:
        """The file goes with the run's temporary directory."""


class SqliteFiles:
    kind = "sqlite"

    def __init__(self) -> None:
        self.summary = f"SQLite {sqlite3.sqlite_version} (WAL), a file per system"
        self.label = "SQLite WAL"

    def new(self, key: str, path: Path) -> SqliteDatabase:
        return SqliteDatabase(path)

    def close(self, *, drop: bool = True) -> list[str]:
        """The files go with the run's temporary directory."""
        return []


class PostgresDatabase:
    """A database of one system on the server; this process reads it on one autocommit
    connection, opened at the first query."""

    settings = POSTGRES_SETTINGS

    def __init__(self, server: "PostgresServer", name: str) -> None:
        self.server, self.name = server, name
        self.url = server.url_of(name)
        parts = server.parts
        self.env = {
            "BENCH_DB": name,
            "BENCH_DB_HOST": parts.hostname or "",
            "BENCH_DB_PORT": str(parts.port or 5432),
            "BENCH_DB_USER": unquote(parts.username or ""),
            "BENCH_DB_PASSWORD": unquote(parts.password or ""),
        }
        self.connection = None

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        if self.connection is None or self.connection.closed:
            self.connection = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self.connection.execute(sql).fetchall()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class PostgresServer:
    """The server of --database-url: creates a fresh database per system, drops them all."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        import psycopg

        self.parts = urlsplit(url)
        if self.parts.scheme not in ("postgres", "postgresql", "pgsql"):
            raise ValueError(f"a postgres:// URL, not {self.parts.scheme}://")
        self.admin_url = url
        self.prefix = f"vertex_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.databases: list[PostgresDatabase] = []
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as admin:
            version = admin.execute("SHOW server_version").fetchone()[0]
            allowed = admin.execute(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()[0]
        if not allowed:
            raise ValueError(f"{self.parts.username} may not CREATE DATABASE")
        self.version = version.split()[0]
        where = f"{self.parts.hostname}:{self.parts.port or 5432}"
        self.summary = (
            f"PostgreSQL {self.version} at {where}, a fresh database per system "
            f"({self.prefix}_*, dropped at the end unless --keep)"
        )
        self.label = f"PostgreSQL {self.version}"

    def url_of(self, name: str) -> str:
        return self.parts._replace(path=f"/{name}").geturl()

    def new(self, key: str, path: Path) -> PostgresDatabase:
        """A fresh database named for the system `key` (`path`, the SQLite file, is unused)."""
        import psycopg
        from psycopg import sql

        name = f"{self.prefix}_{re.sub(r'[^a-z0-9]+', '_', key.lower())}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        database = PostgresDatabase(self, name)
        self.databases.append(database)
        return database

    def close(self, *, drop: bool = True) -> list[str]:
        """Drop every database this run created (unless not `drop`: returns their names); by
        then its workers and drivers have ended, but a connection left behind is ended first."""
        import psycopg
        from psycopg import sql

        for database in self.databases:
            database.close()
        if not drop:
            return [database.name for database in self.databases]
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            for database in self.databases:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (database.name,),
                )
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database.name))
                )
        self.databases.clear()
        return []


def server(url: str | None) -> SqliteFiles | PostgresServer:
    return PostgresServer(url) if url else SqliteFiles()

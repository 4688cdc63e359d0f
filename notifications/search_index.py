"""The admin's optional search index: trigram (pg_trgm) indexes on PostgreSQL over the recipient
and subject texts its search compares, made and dropped by `email_queue search-index`.

Optional because it is not free (decision 51): on a million jobs it turns a search for text that
is not a whole address from a 1.3-1.6 s scan into 22-155 ms, but every job written pays for
about sixty index entries: on that table a bulk enqueue took 40-65% longer, for a search
operators run now and then. A team that searches often turns it on; the queue's speed without
it is the default.

Each index is on the expression Django's case-insensitive `icontains` compares on PostgreSQL,
`UPPER(column::text)`, so the admin's own query is served as it is (a test reads the plan).
"""

from django.db import connection

from .exceptions import SearchIndexUnavailable
from .models import EmailJob

TABLE = EmailJob._meta.db_table
INDEXES = {
    "emailjob_recipient_trgm": "UPPER(recipient::text)",
    "emailjob_subject_trgm": "UPPER(subject::text)",
}


def _require_postgresql() -> None:
    if connection.vendor != "postgresql":
        raise SearchIndexUnavailable(
            f"The search index is PostgreSQL's (pg_trgm); this database is {connection.vendor}, "
            "where the admin's search for text other than a whole address reads every job."
        )


def search_index_state() -> dict[str, str]:
    """Each index by name: "ready", "invalid" (a build that was interrupted) or "absent"."""
    _require_postgresql()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND c.relname = ANY(%s)",
            [TABLE, list(INDEXES)],
        )
        found = dict(cursor.fetchall())
    return {
        name: "absent" if name not in found else "ready" if found[name] else "invalid"
        for name in INDEXES
    }


def create_search_index() -> None:
    """Make the indexes, CONCURRENTLY: senders go on writing jobs while they are built (minutes
    on millions of jobs). Must run outside a transaction. A build that was interrupted left an
    invalid index behind; it is dropped and built again. Then the table is analyzed."""
    _require_postgresql()
    state = search_index_state()
    with connection.cursor() as cursor:
        # A trusted extension since PostgreSQL 13: the database's owner may create it.
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, expression in INDEXES.items():
            if state[name] == "ready":
                continue
            if state[name] == "invalid":
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            cursor.execute(
                f"CREATE INDEX CONCURRENTLY {name} ON {TABLE} "
                f"USING gin (({expression}) gin_trgm_ops)"
            )
        # Statistics of the indexed expressions, which ANALYZE gathers only once the index
        # exists: without them the planner took text every job has for rare, and read the
        # whole table through the index (2.6 s on a million jobs, against 0.25 s without it).
        cursor.execute(f"ANALYZE {TABLE}")


def drop_search_index() -> None:
    """Drop the indexes (CONCURRENTLY, outside a transaction). pg_trgm stays installed."""
    _require_postgresql()
    with connection.cursor() as cursor:
        for name in INDEXES:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")

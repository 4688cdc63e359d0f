"""New jobs built and written without the ORM's per-row costs, their values exactly the ORM's.

bulk_create spent 0.1 ms a row preparing each of its 31 values through the field, compiled its
INSERT for every batch, and on SQLite assumed 999 variables (31 rows a statement): enqueue_emails()
wrote ~4,000 messages/s. Here the values still come from `field.get_db_prep_save`, a column at a
time: one object in every row (the call's time, the status, the sender) is prepared once, text,
which no backend adapts, is taken as it is; then one precompiled INSERT takes 500 rows.
tests/test_inserts.py compares the rows with those bulk_create writes.
"""

import functools
import itertools
import operator
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from django.db.models import CharField, Field, JSONField, TextField

from .models import EmailJob

ROWS_PER_STATEMENT = 500
_UNSET = object()


@functools.cache
def _fields() -> tuple[Field, ...]:
    return tuple(EmailJob._meta.concrete_fields)


@functools.cache
def _inserted_fields() -> tuple[Field, ...]:
    return tuple(field for field in _fields() if not field.primary_key)


def new_jobs(values: Iterable[dict], *, now: datetime) -> list[EmailJob]:
    """EmailJobs from the given field values and the defaults, created and updated `now`.

    Built from positional values as the ORM builds fetched rows, a third of the time keyword
    arguments take; a callable default (a fresh dict or list) is called for each job.
    """
    fixed, fresh = {}, []
    for field in _fields():
        if field.has_default() and callable(field.default):
            fresh.append(field)
        else:
            fixed[field.attname] = None if field.primary_key else field.get_default()
    fixed["created_at"] = fixed["updated_at"] = now
    in_order = operator.itemgetter(*(field.attname for field in _fields()))
    jobs = []
    for given in values:
        row = fixed | {f.attname: f.get_default() for f in fresh if f.attname not in given} | given
        jobs.append(EmailJob(*in_order(row)))
    return jobs


def prepared_rows(jobs: list[EmailJob], database) -> list[tuple]:
    """Each job's column values, prepared by its fields for `database`, as bulk_create would.

    Column by column: a column holding one object in every row (the call's time, the status, a
    cached sender address) is prepared once, and a column of text is taken as it is, since
    CharField.to_python gives a str back unchanged and no backend adapts text. auto_now fields
    are read, not stamped again: `new_jobs` set them to the call's time.
    """
    if not jobs:
        return []
    values = operator.itemgetter(*(field.attname for field in _inserted_fields()))
    columns = zip(*(values(job.__dict__) for job in jobs), strict=True)
    prepared = [
        _prepared_column(field, column, database)
        for field, column in zip(_inserted_fields(), columns, strict=True)
    ]
    return list(zip(*prepared, strict=True))


def _prepared_column(field: Field, column: tuple, database) -> Sequence:
    first = column[0]
    if all(map(operator.is_, column, itertools.repeat(first))):
        return [field.get_db_prep_save(first, database)] * len(column)
    if type(field) in (CharField, TextField) and set(map(type, column)) == {str}:
        return column
    return list(map(_preparer(field, database), column))


def _preparer(field: Field, database) -> Callable[[object], object]:
    """`field.get_db_prep_save`, with a memo of the last value."""
    if isinstance(field, JSONField):
        return _json_preparer(field, database)
    prepare_save = field.get_db_prep_save
    last, prepared = _UNSET, None

    def prepare(value):
        nonlocal last, prepared
        if value is not last:
            last, prepared = value, prepare_save(value, database)
        return prepared

    return prepare


def _json_preparer(field: JSONField, database) -> Callable[[object], object]:
    """What JSONField.get_db_prep_save gives a list or dict, the backend's JSON adapter, called
    directly, and once for all the empty ones (most of cc, bcc, headers...)."""
    adapt, encoder = database.ops.adapt_json_value, field.encoder
    empty = {list: adapt([], encoder), dict: adapt({}, encoder)}

    def prepare(value):
        if type(value) not in empty:
            return field.get_db_prep_save(value, database)
        return adapt(value, encoder) if value else empty[type(value)]

    return prepare


def insert(jobs: list[EmailJob], rows: list[tuple], database) -> None:
    """INSERT the rows, many a statement, and give each job the id its row got."""
    per_statement = _rows_per_statement(database)
    with database.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            batch = rows[start : start + per_statement]
            # Kept: one row (send_mail()) and full statements. A full one is ~60 KB of text; the
            # tails of bulk calls, of any length up to that, are built each time.
            keep = len(batch) in (1, per_statement)
            cursor.execute(
                _insert_sql(database, len(batch), keep=keep),
                list(itertools.chain.from_iterable(batch)),
            )
            # Matched by Message-ID (unique): SQLite does not promise RETURNING's row order.
            ids = dict((message_id, pk) for pk, message_id in cursor.fetchall())
            for job in jobs[start : start + per_statement]:
                job.pk = ids[job.message_id]
                job._state.adding, job._state.db = False, database.alias


def _rows_per_statement(database) -> int:
    """SQLite's own limit of variables a statement (32,766 since 3.32), not Django's 999."""
    if database.vendor != "sqlite":
        return ROWS_PER_STATEMENT
    database.ensure_connection()
    variables = database.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(ROWS_PER_STATEMENT, variables // len(_inserted_fields())))


_statements: dict[tuple[str, int], str] = {}  # by database vendor and rows


def _insert_sql(database, rows: int, *, keep: bool) -> str:
    key = (database.vendor, rows)
    statement = _statements.get(key)
    if statement is None:
        quote = database.ops.quote_name
        columns = ", ".join(quote(field.column) for field in _inserted_fields())
        row = "(" + ", ".join(["%s"] * len(_inserted_fields())) + ")"
        table = quote(EmailJob._meta.db_table)
        pk = quote(EmailJob._meta.pk.column)
        message_id = quote(EmailJob._meta.get_field("message_id").column)
        # Only our own quoted table and column names go into the text; values are parameters.
        statement = (
            f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * rows)} "  # noqa: S608
            f"RETURNING {pk}, {message_id}"
        )
        if keep:
            _statements[key] = statement
    return statement

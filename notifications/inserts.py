"""New jobs built and written without the ORM's per-row costs, their values exactly the ORM's.

bulk_create spent 0.1 ms a row preparing each of its 31 values through the field, compiled its
INSERT for every batch, and on SQLite assumed 999 variables (31 rows a statement): enqueue_emails()
wrote ~4,000 messages/s. Here the values still come from `field.get_db_prep_save`, a column at a
time: one object in every row (the call's time, the status, the sender) is prepared once, text,
which no backend adapts, is taken as it is; then one precompiled INSERT takes 500 rows.
tests/test_inserts.py compares the rows with those bulk_create writes.
"""

import contextlib
import functools
import itertools
import json
import operator
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime

from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import (
    CharField,
    DateTimeField,
    Field,
    IntegerField,
    JSONField,
    TextField,
)
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils import timezone

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
    """EmailJobs from the given field values (by attname) and the defaults, created and updated
    `now`; a callable default (a fresh dict or list) is called for each job.

    Unless something listens for the model's pre_init or post_init signal, a job is made as
    `Model.__init__` would make it from these values, without the call: `__init__` sets each of
    the 33 fields through setattr (6.4 us a job, 0.6 us this way), which stores the value in the
    instance's dict, since no field of ours has a descriptor that takes a set.
    """
    constant, fresh = _defaults()
    fixed = constant | {"created_at": now, "updated_at": now}
    rows = (
        fixed | {f.attname: f.get_default() for f in fresh if f.attname not in given} | given
        for given in values
    )
    if pre_init.has_listeners(EmailJob) or post_init.has_listeners(EmailJob):
        in_order = operator.itemgetter(*(field.attname for field in _fields()))
        return [EmailJob(*in_order(row)) for row in rows]
    jobs = []
    for row in rows:
        job = EmailJob.__new__(EmailJob)
        job.__dict__ = row
        job._state = ModelState()
        jobs.append(job)
    return jobs


@functools.cache
def _defaults() -> tuple[dict[str, object], tuple[Field, ...]]:
    """Each field's constant default by attname (the primary key's None), and the fields whose
    default is a callable, called for every job. Read once a process, not once a call (0.02 ms
    of a send_mail()): a model's defaults do not change while it runs."""
    constant, fresh = {}, []
    for field in _fields():
        if field.has_default() and callable(field.default):
            fresh.append(field)
        else:
            constant[field.attname] = None if field.primary_key else field.get_default()
    return constant, tuple(fresh)


def prepared_rows(jobs: list[EmailJob], database) -> list[tuple]:
    """Each job's column values, prepared by its fields for `database`, as bulk_create would.

    Column by column (send_mail()'s one row a value at a time): a column of text is taken as it
    is, since CharField.to_python gives a str back unchanged and no backend adapts text; a column
    holding one object in every row (the call's time, the status, a cached sender address) is
    prepared once. auto_now fields are read, not stamped again: `new_jobs` set them to the call's
    time.
    """
    if not jobs:
        return []
    values = operator.itemgetter(*(field.attname for field in _inserted_fields()))
    columns = zip(*(values(job.__dict__) for job in jobs), strict=True)
    preparing = _Preparing(database)
    if len(jobs) == 1:  # send_mail(): no columns to build, a value at a time
        row = values(jobs[0].__dict__)
        return [tuple(map(preparing.value, _inserted_fields(), _kinds(), row))]
    prepared = [
        preparing.column(field, kind, column)
        for field, kind, column in zip(_inserted_fields(), _kinds(), columns, strict=True)
    ]
    return list(zip(*prepared, strict=True))


@functools.cache
def _kinds() -> tuple[type | None, ...]:
    """How each inserted field is prepared, in `_inserted_fields()` order: text as it is, whole
    numbers by `_Preparing.value`, JSON and times by `_Preparing`, others by the field."""
    kinds = []
    for field in _inserted_fields():
        if type(field) in (CharField, TextField):
            kinds.append(str)
        elif isinstance(field, IntegerField):
            kinds.append(int)
        elif isinstance(field, JSONField):
            kinds.append(JSONField)
        elif type(field) is DateTimeField:
            kinds.append(DateTimeField)
        else:
            kinds.append(None)
    return tuple(kinds)


class _Preparing:
    """One call's preparation, remembering what several columns share.

    The same time fills four DateTimeFields of every row (created, updated, due, dispatched),
    and most JSON columns hold an empty list or dict: each is prepared once a call, not once a
    column. With the one-row path, send_mail()'s row takes 0.03 ms to prepare instead of 0.10.
    """

    def __init__(self, database):
        self.database = database
        # A backend that adapts whole numbers (PostgreSQL: psycopg's Int2/Int4 types) is asked.
        adapt_integer = type(database.ops).adapt_integerfield_value
        self._ints_as_they_are = adapt_integer is BaseDatabaseOperations.adapt_integerfield_value
        self._times: dict[int, object] = {}  # id of an aware datetime -> prepared
        self._empty_json: dict[tuple, object] = {}  # (encoder, list or dict) -> adapted

    def column(self, field: Field, kind: type | None, column: tuple) -> Sequence:
        if kind is str and set(map(type, column)) == {str}:
            return column
        prepare = self._preparer(field, kind)
        first = column[0]
        if all(map(operator.is_, column, itertools.repeat(first))):
            return [prepare(first)] * len(column)
        return list(map(prepare, column))

    def value(self, field: Field, kind: type | None, value):
        """One value, as `column` would prepare a column of it alone. None is None in every
        column but JSON's (which may mean JSON null), and an int is itself for IntegerField
        when the backend does not adapt it: the field's own preparation gives the same."""
        if kind is JSONField:
            return self._json(field, value)
        if value is None or (type(value) is kind and (kind is str or self._ints_as_they_are)):
            return value
        if kind is DateTimeField:
            return self._time(field, value)
        return field.get_db_prep_save(value, self.database)

    def _preparer(self, field: Field, kind: type | None) -> Callable[[object], object]:
        if kind is JSONField:
            return functools.partial(self._json, field)
        if kind is DateTimeField:
            return functools.partial(self._time, field)
        return _memo_of_last(field, self.database)

    def _time(self, field: DateTimeField, value):
        """Every DateTimeField prepares an aware datetime alike: the backend's adapter."""
        if not isinstance(value, datetime) or timezone.is_naive(value):  # the field's warning
            return field.get_db_prep_save(value, self.database)
        prepared = self._times.get(id(value), _UNSET)
        if prepared is _UNSET:
            prepared = self._times[id(value)] = field.get_db_prep_save(value, self.database)
        return prepared

    def _json(self, field: JSONField, value):
        """What JSONField.get_db_prep_save gives a list or dict: the backend's JSON adapter,
        called directly, and once for all the empty ones (most of cc, bcc, headers...)."""
        if type(value) not in (list, dict):
            return field.get_db_prep_save(value, self.database)
        adapt = self.database.ops.adapt_json_value
        if value:
            return adapt(value, field.encoder)
        key = (field.encoder, type(value))
        adapted = self._empty_json.get(key, _UNSET)
        if adapted is _UNSET:
            adapted = self._empty_json[key] = adapt(type(value)(), field.encoder)
        return adapted


def _memo_of_last(field: Field, database) -> Callable[[object], object]:
    """`field.get_db_prep_save`, with a memo of the last value."""
    prepare_save = field.get_db_prep_save
    last, prepared = _UNSET, None

    def prepare(value):
        nonlocal last, prepared
        if value is not last:
            last, prepared = value, prepare_save(value, database)
        return prepared

    return prepare


def insert(jobs: list[EmailJob], rows: list[tuple], database) -> None:
    """INSERT the rows, many a statement, and give each job the id its row got."""
    per_statement = _rows_per_statement(database)
    for start in range(0, len(rows), per_statement):
        batch = rows[start : start + per_statement]
        returned = _insert_batch(batch, database, full=len(batch) == per_statement)
        # Matched by Message-ID (unique): SQLite does not promise RETURNING's row order.
        ids = dict((message_id, pk) for pk, message_id in returned)
        for job in jobs[start : start + per_statement]:
            job.pk = ids[job.message_id]
            job._state.adding, job._state.db = False, database.alias


def _insert_batch(batch: list[tuple], database, *, full: bool) -> list[tuple]:
    """One statement's rows in; returns (id, Message-ID) for each.

    On SQLite, unless someone watches the queries, through the driver's own connection: Django's
    cursor path (the statement's %s turned into ? at every call, django-prometheus's counters,
    the execute wrappers' chain) cost 0.14 ms of a 0.63-0.72 ms send_mail() (decision 40). With
    DEBUG's query log or an execute_wrapper (tests, APM agents) it is Django's cursor, so they see
    the INSERT. Errors are Django's either way: a reused Message-ID is an IntegrityError.
    PostgreSQL's own paths, likewise when nobody watches: COPY for many rows (decision 49), an
    INSERT bound on the server for one (decision 50).
    """
    watched = database.queries_logged or database.execute_wrappers
    if len(batch) > 1 and database.vendor == "postgresql" and not watched:
        return _copy_batch(batch, database)
    params = list(itertools.chain.from_iterable(batch))
    if database.vendor == "postgresql" and not watched:
        return _insert_bound_on_server(_insert_sql(database, 1, keep=True), params, database)
    # Kept: one row (send_mail()) and full statements. A full one is ~60 KB of text; the tails
    # of bulk calls, of any length up to that, are built each time.
    keep = len(batch) == 1 or full
    if database.vendor == "sqlite" and not watched:
        statement = _insert_sql(database, len(batch), keep=keep, placeholder="?")
        with _drivers_connection(database) as driver:
            return driver.execute(statement, params).fetchall()
    with database.cursor() as cursor:
        if len(batch) > 1 and database.vendor == "postgresql":
            columns = [list(column) for column in zip(*batch, strict=True)]
            cursor.execute(_unnest_insert_sql(database), columns)
        else:
            cursor.execute(_insert_sql(database, len(batch), keep=keep), params)
        return cursor.fetchall()


@contextlib.contextmanager
def _drivers_connection(database) -> Iterator:
    """The driver's own connection (sqlite3's, psycopg's), with what Django's cursor would do
    around a statement: connect if needed, refuse to run in a transaction already broken, and
    turn the driver's errors into Django's (a reused Message-ID is an IntegrityError)."""
    database.ensure_connection()
    database.validate_no_broken_transaction()
    with database.wrap_database_errors:
        yield database.connection


def _insert_bound_on_server(statement: str, params: list, database) -> list[tuple]:
    """PostgreSQL, one row (send_mail()): the INSERT with its values sent apart from its text.

    Django binds parameters on the client: psycopg quotes each of the 31 values into the text in
    Python, 0.1 ms of CPU a call, more than the rest of send_mail()'s own work. A cursor that
    binds on the server sends them as they are, dumped in C (one INSERT in autocommit: 227 ->
    130 us of CPU, 645 -> 555 us of wall time, mostly the commit)."""
    import psycopg  # here: on SQLite it is never needed, and importing it costs 24 MiB of RSS

    with _drivers_connection(database) as driver, psycopg.Cursor(driver) as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


def _copy_batch(batch: list[tuple], database) -> list[tuple]:
    """PostgreSQL, many rows, unless someone watches the queries: ids from the table's sequence,
    then the rows by `COPY ... FROM STDIN`; returns (id, Message-ID) for each.

    The INSERT from arrays (`_unnest_insert_sql`, still used when queries are watched) had
    psycopg quote each array into the statement's text in Python, since Django binds parameters
    on the client: 47% of a bulk enqueue_emails()'s time. COPY formats the rows in psycopg's C
    code; JSON goes as its text, dumped once for the empty lists and dicts most rows share.
    Errors are Django's, as for the INSERT: a reused Message-ID is an IntegrityError."""
    message_id = _inserted_fields().index(EmailJob._meta.get_field("message_id"))
    with _drivers_connection(database) as driver, driver.cursor() as cursor:
        cursor.execute(NEXT_IDS, [EmailJob._meta.db_table, EmailJob._meta.pk.column, len(batch)])
        ids = [pk for (pk,) in cursor.fetchall()]
        with cursor.copy(_copy_sql(database)) as copy:
            for pk, row in zip(ids, _json_as_text(batch), strict=True):
                copy.write_row((pk, *row))
    return [(pk, row[message_id]) for pk, row in zip(ids, batch, strict=True)]


def _json_as_text(rows: list[tuple]) -> Iterable[list]:
    """The rows with each JSON value (psycopg's Jsonb, from adapt_json_value) as its JSON text;
    anything else (None: SQL NULL, which the columns refuse as the INSERT's would) as it is."""
    columns = [index for index, kind in enumerate(_kinds()) if kind is JSONField]
    texts: dict[int, str] = {}  # id of a shared adapted value -> its text
    for row in rows:
        row = list(row)
        for index in columns:
            value = row[index]
            if not hasattr(value, "obj"):
                continue
            text = texts.get(id(value))
            if text is None:
                text = value.dumps(value.obj) if value.dumps else json.dumps(value.obj)
                if not value.obj and type(value.obj) in (list, dict):  # one object in many rows
                    texts[id(value)] = text
            row[index] = text
        yield row


# `n` new ids from the sequence of the table's id column (identity or serial).
NEXT_IDS = "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)"


def _copy_sql(database) -> str:
    quote = database.ops.quote_name
    columns = ", ".join(quote(field.column) for field in (EmailJob._meta.pk, *_inserted_fields()))
    return f"COPY {quote(EmailJob._meta.db_table)} ({columns}) FROM STDIN"


def _rows_per_statement(database) -> int:
    """SQLite's own limit of variables a statement (32,766 since 3.32), not Django's 999."""
    if database.vendor != "sqlite":
        return ROWS_PER_STATEMENT
    database.ensure_connection()
    variables = database.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(ROWS_PER_STATEMENT, variables // len(_inserted_fields())))


_statements: dict[tuple[str, int, str], str] = {}  # by database vendor, rows and placeholder


def _insert_sql(database, rows: int, *, keep: bool, placeholder: str = "%s") -> str:
    """`rows` rows of VALUES; `placeholder` "?" for the sqlite3 driver's own connection."""
    key = (database.vendor, rows, placeholder)
    statement = _statements.get(key)
    if statement is None:
        row = "(" + ", ".join([placeholder] * len(_inserted_fields())) + ")"
        statement = _insert_into(database, f"VALUES {', '.join([row] * rows)}")
        if keep:
            _statements[key] = statement
    return statement


def _unnest_insert_sql(database) -> str:
    """PostgreSQL, many rows: one array a column, `INSERT ... SELECT * FROM unnest(...)`.

    A statement of 500 rows of parameters is 60 KB of text, which psycopg splits at its
    placeholders again at every call (it caches only statements under 4 KB and 50
    parameters): 60 ms of a 500-row statement. This one is short, its 31 parameters are
    arrays, and psycopg converts it once."""
    key = (database.vendor, 0, "%s")  # 0 rows: the statement of arrays
    if key not in _statements:
        arrays = ", ".join(f"%s::{field.db_type(database)}[]" for field in _inserted_fields())
        _statements[key] = _insert_into(database, f"SELECT * FROM unnest({arrays})")  # noqa: S608
    return _statements[key]


def _insert_into(database, rows: str) -> str:
    """INSERT of the job columns from `rows` (VALUES or a SELECT), returning id and Message-ID.
    Only our own quoted table and column names go into the text; values are parameters."""
    quote = database.ops.quote_name
    columns = ", ".join(quote(field.column) for field in _inserted_fields())
    table = quote(EmailJob._meta.db_table)
    pk = quote(EmailJob._meta.pk.column)
    message_id = quote(EmailJob._meta.get_field("message_id").column)
    return f"INSERT INTO {table} ({columns}) {rows} RETURNING {pk}, {message_id}"

"""Reading a source database: any SQLAlchemy dialect, with a COPY fast path for PostgreSQL.

Rows leave a source as lines of PostgreSQL's COPY text format: `id \\t created_at \\t v1 \\t ... \\t v1118`, NULL as
`\\N`, the PISA variables in codebook order whatever the source's column order or case. On PostgreSQL the server
writes those lines itself (`COPY (SELECT ...) TO STDOUT`): no per-value Python work, which is what lets a backfill run
near the speed of a bare COPY pipe. Other dialects go through SQLAlchemy and are rendered to the same lines in Python.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from codebook.catalogue import VariableSpec
from ingestion.models import Source
from ingestion.source_urls import SourceUrlError, source_url_parse, text_redacted, with_installed_driver

# Source connections are few and long-lived per worker process; pre-ping drops those a source restart killed.
ENGINE_POOL_SIZE = 2
CONNECT_TIMEOUT_SECONDS = 5
# Ids sent in one `id IN (...)` query.
IDS_PER_QUERY = 2000

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()
# Reflecting a 1,120-column table costs a few hundred milliseconds: keep it per process, and look again after a while
# in case the source's schema changed.
TABLE_REFLECTION_SECONDS = 300
_tables: dict[tuple[str, str], tuple[float, sa.Table, dict]] = {}


class SourceUnavailable(RuntimeError):
    """The source could not be read (down, unreachable, table missing); the message says why, without password."""


def source_engine(url: str) -> sa.Engine:
    """The pooled engine of a source URL; SourceUnavailable (never quoting the password) when it cannot be used."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            try:
                source_url_parse(url)
                driver_url = with_installed_driver(sa.make_url(url)).render_as_string(hide_password=False)
                options: dict = {"pool_pre_ping": True}
                if driver_url.startswith("postgresql"):
                    options.update(pool_size=ENGINE_POOL_SIZE, max_overflow=2,
                                   connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                                                 "application_name": "pisa-live-extract",
                                                 # COPY renders timestamps in UTC and floats at full precision,
                                                 # whatever the source server's settings; set once per connection,
                                                 # not per COPY.
                                                 "options": "-c TimeZone=UTC -c extra_float_digits=1"})
                engine = sa.create_engine(driver_url, **options)
            except SourceUrlError as exc:
                raise SourceUnavailable(f"bad source URL: {exc}") from None
            except (sa.exc.ArgumentError, ImportError, ValueError, TypeError) as exc:  # no such dialect or driver
                raise SourceUnavailable(f"cannot use the source URL: {source_error_text(exc, url)}") from None
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """After a fork (Celery prefork children) connections must not be shared with the parent."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()
        _tables.clear()


def _reflect(engine: sa.Engine, url: str, table_name: str) -> tuple[sa.TableClause, dict]:
    """The table's column names, and a dict for what is derived from them (compiled SQL), cached together.

    Only the names are needed (COPY renders the values): one `SELECT * ... WHERE 1 = 0` instead of SQLAlchemy's full
    reflection of types, keys and indexes, which takes about half a second for 1,120 columns."""
    key = (url, table_name)
    cached = _tables.get(key)
    if cached is not None and time.monotonic() - cached[0] < TABLE_REFLECTION_SECONDS:
        return cached[1], cached[2]
    schema, _, name = table_name.rpartition(".")
    shape = sa.table(name, schema=schema or None)
    with engine.connect() as connection:
        names = list(connection.execute(sa.select(sa.text("*")).select_from(shape).where(sa.false())).keys())
    table = sa.table(name, *(sa.column(column) for column in names), schema=schema or None)
    _tables[key] = (time.monotonic(), table, {})
    return table, _tables[key][2]


def forget_table(url: str, table_name: str) -> None:
    """Reflect again next time (after an error: the table may have been dropped or changed)."""
    _tables.pop((url, table_name), None)


def escape_copy_text(value) -> str:
    """One value in COPY text format, as PostgreSQL itself would write it."""
    if value is None:
        return "\\N"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


# A set of ids is fingerprinted by its size and three power sums: (count, sum of ids, sums of squares and cubes
# modulo a prime). Unlike a count, it cannot be fooled by inserts and deletes that cancel out: two sets of ids (below
# the prime) with equal power sums that differ by up to three swapped ids cannot exist (Newton's identities), and
# larger swaps that collide are a vanishing chance. Exact integer arithmetic in every SQL dialect: each term is below
# FINGERPRINT_PRIME ** 2 < 2 ** 63.
FINGERPRINT_PRIME = 1_000_000_007


@dataclass(frozen=True)
class IdsFingerprint:
    count: int
    id_sum: int
    square_sum: int
    cube_sum: int

    @classmethod
    def of(cls, ids) -> IdsFingerprint:
        ids = [int(i) for i in ids]
        reduced = [i % FINGERPRINT_PRIME for i in ids]
        squares = [r * r % FINGERPRINT_PRIME for r in reduced]
        return cls(len(ids), sum(ids), sum(squares),
                   sum(q * r % FINGERPRINT_PRIME for q, r in zip(squares, reduced)))

    def __add__(self, other: IdsFingerprint) -> IdsFingerprint:
        return IdsFingerprint(self.count + other.count, self.id_sum + other.id_sum,
                              self.square_sum + other.square_sum, self.cube_sum + other.cube_sum)


def fingerprint_columns(id_column) -> list:
    """count, sum of ids, sums of squared and cubed ids (mod FINGERPRINT_PRIME), as SQL aggregates of `id_column`."""
    reduced = id_column % FINGERPRINT_PRIME
    square = reduced * reduced % FINGERPRINT_PRIME
    return [sa.func.count(id_column), sa.func.coalesce(sa.func.sum(id_column), 0),
            sa.func.coalesce(sa.func.sum(square), 0),
            sa.func.coalesce(sa.func.sum(square * reduced % FINGERPRINT_PRIME), 0)]


@dataclass(frozen=True)
class SourceSnapshot:
    row_count: int
    max_id: int | None
    # PostgreSQL's cumulative count of rows updated or deleted in the table (pg_stat_user_tables: n_tup_upd +
    # n_tup_del), None elsewhere: when it moves, some row may have changed in place (an update, or a delete and a
    # re-insert under the same id) and the content must be compared (see pipeline.py, "Updates").
    updates: int | None = None
    ids: IdsFingerprint | None = None

    def same_rows_as(self, other: SourceSnapshot | None) -> bool:
        return other is not None and (self.row_count, self.max_id, self.ids) == (other.row_count, other.max_id,
                                                                                 other.ids)


class SourceReader:
    """Reads one source's responses table. Column names are matched case-insensitively to the codebook."""

    def __init__(self, source: Source, variables: Sequence[VariableSpec]) -> None:
        self.source = source
        self.variables = variables
        self.engine = source_engine(source.url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        cursor = source.cursor_column_list
        self.created_column_name, self.id_column_name = (cursor + ["id"])[:2] if len(cursor) >= 2 else ("created_at", "id")
        self._table: sa.TableClause | None = None
        self._derived: dict = {}
        self._columns_by_lower: dict[str, sa.Column] = {}
        self._select_columns: list[sa.ColumnElement] | None = None
        self._copy_select_sql: str | None = None
        self.missing_variables: list[str] = []

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def table(self) -> sa.TableClause:
        if self._table is None:
            try:
                self._table, self._derived = _reflect(self.engine, self.source.url, self.source.table_name)
                self._columns_by_lower = {column.name.lower(): column for column in self._table.columns}
            except sa.exc.SQLAlchemyError as exc:
                raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL
        return self._table

    def _column(self, name: str) -> sa.ColumnElement | None:
        self.table  # reflect once
        return self._columns_by_lower.get(name.lower())

    @property
    def id_column(self) -> sa.Column:
        column = self._column(self.id_column_name)
        if column is None:
            raise SourceUnavailable(f"cursor column {self.id_column_name!r} is missing")
        return column

    @property
    def created_column(self) -> sa.Column:
        column = self._column(self.created_column_name)
        if column is None:
            raise SourceUnavailable(f"cursor column {self.created_column_name!r} is missing")
        return column

    def _row_columns(self) -> list[sa.ColumnElement]:
        """id, created_at, then the 1,118 variables in codebook order (NULL for those the source lacks)."""
        if self._select_columns is None:
            self._select_columns = [self.id_column, self.created_column, *self._value_columns()]
        return self._select_columns

    def _value_columns(self) -> list[sa.ColumnElement]:
        columns, missing = [], []
        for variable in self.variables:
            column = self._column(variable.name)
            if column is None:
                missing.append(variable.name)
                columns.append(sa.null().label(variable.name.lower()))
            else:
                columns.append(column)
        self.missing_variables = missing
        return columns

    # --- reads -----------------------------------------------------------------------------------------------
    @property
    def _cursor_table(self) -> sa.TableClause:
        """The table with only its two cursor columns. Fast path: the polling queries never mention the other 1,118,
        so SQLAlchemy does not walk 1,120 columns to build each statement's cache key (~1.5 ms a query)."""
        id_column, created_column = self.id_column, self.created_column
        return sa.table(self.table.name, sa.column(id_column.name), sa.column(created_column.name),
                        schema=self.table.schema)

    def poll(self, since: dt.datetime | None, *, unless: SourceSnapshot | None = None
             ) -> tuple[SourceSnapshot, list[int] | None]:
        """One consistent read of the source: its snapshot (row count, max id, update counter) and the ids of the rows
        created at or after `since` (every id when None) up to that max id. When the row count and max id equal
        `unless`'s, nothing was added or deleted since then and the ids are not read (None): the idle poll is one
        cheap query.

        Both statements see the same snapshot (REPEATABLE READ on PostgreSQL), so the row count is exactly the number
        of ids up to the max id: any later difference from what the warehouse accounts for is a delete or a row that
        committed too late for the look-back window, never a race with new inserts."""
        table = self._cursor_table
        id_column, created_column = table.c[self.id_column.name], table.c[self.created_column.name]
        counts = [*fingerprint_columns(id_column), sa.func.max(id_column)]
        if self.is_postgres:
            counts.append(sa.select(sa.column("n_tup_upd") + sa.column("n_tup_del"))
                          .select_from(sa.table("pg_stat_user_tables"))
                          .where(sa.column("relid") == sa.func.to_regclass(self._qualified_name))
                          .scalar_subquery())
        try:
            with self.engine.connect() as conn:
                if self.is_postgres:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    row = conn.execute(sa.select(*counts).select_from(table)).one()
                    snapshot = SourceSnapshot(
                        row_count=row[0], max_id=row[4], updates=row[5] if self.is_postgres else None,
                        ids=IdsFingerprint(*(int(value) for value in row[:4])))
                    if snapshot.same_rows_as(unless):
                        return snapshot, None
                    if snapshot.max_id is None:
                        return snapshot, []
                    query = sa.select(id_column).where(id_column <= snapshot.max_id)
                    if since is not None:
                        query = query.where(created_column >= since)
                    return snapshot, list(conn.execute(query).scalars())
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL

    @property
    def _qualified_name(self) -> str:
        preparer = self.engine.dialect.identifier_preparer
        return preparer.format_table(self.table)

    def snapshot(self) -> SourceSnapshot:
        table = self._cursor_table
        query = sa.select(sa.func.count(), sa.func.max(table.c[self.id_column.name])).select_from(table)
        row = self._fetch_one(query)
        return SourceSnapshot(row_count=row[0], max_id=row[1])

    def ids_created_since(self, since: dt.datetime | None, up_to_id: int | None = None) -> list[int]:
        """Ids of rows whose created_at is at or after `since` (all ids when None): cheap, no row bodies."""
        table = self._cursor_table
        id_column, created_column = table.c[self.id_column.name], table.c[self.created_column.name]
        query = sa.select(id_column)
        if since is not None:
            query = query.where(created_column >= since)
        if up_to_id is not None:
            query = query.where(id_column <= up_to_id)
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).scalars())
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL

    def range_fingerprints(self, *, range_size: int, up_to_id: int) -> dict[int, IdsFingerprint]:
        """The fingerprint of the ids of each range [k * range_size, (k + 1) * range_size) up to `up_to_id`, by k."""
        table = self._cursor_table
        id_column = table.c[self.id_column.name]
        bucket = (id_column // range_size).label("bucket")
        query = (sa.select(bucket, *fingerprint_columns(id_column)).where(id_column <= up_to_id)
                 .group_by(bucket))
        try:
            with self.engine.connect() as conn:
                return {int(row[0]): IdsFingerprint(*(int(value) for value in row[1:]))
                        for row in conn.execute(query)}
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL

    def oldest_created_at(self, ids: Sequence[int]) -> dt.datetime | None:
        """The earliest created_at of the rows with these ids (None when none is left)."""
        table = self._cursor_table
        id_column, created_column = table.c[self.id_column.name], table.c[self.created_column.name]
        query = sa.select(sa.func.min(created_column)).where(id_column.in_(list(ids)))
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL

    def ids_between(self, low: int, high: int) -> list[int]:
        table = self._cursor_table
        id_column = table.c[self.id_column.name]
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sa.select(id_column).where(id_column.between(low, high))).scalars())
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL

    def lines_for_ids(self, ids: Sequence[int]) -> list[bytes]:
        """The rows with these ids as COPY text lines (id, created_at, then the variables in codebook order)."""
        lines: list[bytes] = []
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = list(ids[start:start + IDS_PER_QUERY])
            if self.is_postgres:
                low, high = int(min(chunk)), int(max(chunk))
                if high - low + 1 == len(chunk) and len(set(chunk)) == len(chunk):
                    # Fast path (backfills): every id of a range is wanted, so one index range scan replaces a
                    # thousand index probes, and the statement stays a few bytes long.
                    lines.extend(self._copy_lines(f"{self._id_sql} BETWEEN {low} AND {high}"))
                else:
                    ids_sql = ",".join(str(int(i)) for i in chunk)
                    lines.extend(self._copy_lines(f"{self._id_sql} = ANY('{{{ids_sql}}}')"))
            else:
                query = sa.select(*self._row_columns()).where(self.id_column.in_(chunk)).order_by(self.id_column)
                lines.extend(self._lines(query))
        return lines

    def lines_in_id_range(self, low: int, high: int) -> list[bytes]:
        if self.is_postgres:
            return self._copy_lines(f"{self._id_sql} BETWEEN {int(low)} AND {int(high)}")
        query = sa.select(*self._row_columns()).where(self.id_column.between(low, high)).order_by(self.id_column)
        return self._lines(query)

    def _lines(self, query: sa.Select) -> list[bytes]:
        try:
            with self.engine.connect() as conn:
                return [
                    "\t".join(escape_copy_text(value) for value in row).encode()
                    for row in conn.execute(query)
                ]
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL

    @property
    def _id_sql(self) -> str:
        return self.engine.dialect.identifier_preparer.quote(self.id_column.name)

    def _copy_lines(self, where_sql: str) -> list[bytes]:
        """Fast path: the source server renders the lines itself. The 1,120-column SELECT is written once per
        process and source (quoted names joined by hand: SQLAlchemy's compiler took ~120 ms over 1,120 columns, a cost
        every worker process paid again for every source); only the WHERE clause (integers we format) changes."""
        if self._copy_select_sql is None:
            self.table  # reflect (or reuse the cached reflection and the SQL derived from it)
            key = ("copy_select", tuple(v.name for v in self.variables))
            if key not in self._derived:
                self._derived[key] = self._write_copy_select()
            self._copy_select_sql, self.missing_variables = self._derived[key]
        sql = f"{self._copy_select_sql} WHERE {where_sql} ORDER BY {self._id_sql}"
        buffer = io.BytesIO()
        try:
            raw = self.engine.raw_connection()
        except sa.exc.SQLAlchemyError as exc:  # the source went down since the last query
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None
        try:
            with raw.cursor() as cursor:
                cursor.copy_expert(f"COPY ({sql}) TO STDOUT", buffer)
            raw.commit()
        except Exception as exc:
            raw.invalidate() if hasattr(raw, "invalidate") else None
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL
        finally:
            raw.close()
        data = buffer.getvalue()
        return data.split(b"\n")[:-1] if data else []

    def _write_copy_select(self) -> tuple[str, list[str]]:
        """`SELECT id, created_at, v1, ..., v1118 FROM table` with NULL for the variables the source lacks."""
        preparer = self.engine.dialect.identifier_preparer
        columns, missing = [preparer.quote(self.id_column.name), preparer.quote(self.created_column.name)], []
        for variable in self.variables:
            column = self._column(variable.name)
            if column is None:
                missing.append(variable.name)
                columns.append("NULL")
            else:
                columns.append(preparer.quote(column.name))
        return f"SELECT {', '.join(columns)} FROM {preparer.format_table(self.table)}", missing

    def _fetch_one(self, query: sa.Select):
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).one()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(source_error_text(exc, self.source.url)) from None  # the cause may quote the URL


def source_error_text(exc: Exception, url: str) -> str:
    """An error message fit for the status page and the logs: the driver's first line, with anything of the URL's
    password it may quote replaced by ***."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text_redacted(f"{type(original).__name__}: {text.splitlines()[0] if text else ''}", url)

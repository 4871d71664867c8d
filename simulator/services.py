"""Writes of the simulator: source databases, rows into them, the control row, and faults done on purpose."""

from __future__ import annotations

import datetime as dt
import io
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F
from sqlalchemy import Engine, MetaData, String, Table, Text, create_engine, func, select
from sqlalchemy.engine import make_url

from codebook.catalogue import VariableSpec
from ingestion.models import Source
from ingestion.services import source_register
from simulator.models import Injection, SimulatorControl, StudentSerial
from simulator.schema import (
    CODE_PLACEHOLDER, server_url_of, source_database_create, source_table, table_style, url_template_on,
)
from simulator.students import StudentFactory, TextStyle

DEFAULT_DATABASE_PREFIX = "pisa_src_"
INJECTION_ROW_LIMIT = 10_000
LATE_HOLD_SECONDS = 5.0
# How far each updated PV moves: clearly visible in a country mean of a few rows, still a plausible score.
UPDATE_PV_DELTA = 25.0
# Neither an answer (1 Female, 2 Male) nor a missing code (5-9) of ST004D01T.
OUT_OF_RANGE_GENDER = 3
KEY_COLUMNS = ("cnt", "cntryid", "cntstuid")


@dataclass
class SourceHandle:
    """An open source: its code, SQLAlchemy engine, `responses` table and style (typed or text)."""

    code: str
    engine: Engine
    table: Table
    style: str

    def dispose(self) -> None:
        self.engine.dispose()


def default_url_template() -> str:
    """`pisa_src_{code}` databases on the warehouse's PostgreSQL server."""
    return url_template_on(server_url_of(settings.DATABASE_URL), database=DEFAULT_DATABASE_PREFIX + CODE_PLACEHOLDER)


def source_url_for(*, code: str, url_template: str) -> str:
    if CODE_PLACEHOLDER not in url_template:
        raise ValueError(f"the URL template must contain {{code}}, got {url_template!r}")
    return url_template.replace(CODE_PLACEHOLDER, code.lower())


def source_provision(
    *, code: str, name: str, url_template: str, specs: list[VariableSpec], style: str,
    poll_interval_seconds: float = 1.0,
) -> SourceHandle:
    """Create the source database and its `responses` table if needed, and register it in the source registry."""
    url = source_url_for(code=code, url_template=url_template)
    parsed = make_url(url)
    if parsed.drivername.startswith("postgresql"):
        url = source_database_create(server_url=url, database=parsed.database)
    engine = create_engine(url, pool_size=2, pool_pre_ping=True) if parsed.drivername.startswith("postgresql") \
        else create_engine(url)
    wanted = source_table(specs, style=style, metadata=MetaData())
    wanted.metadata.create_all(engine)
    # An existing table stays as it is (its style included): write to what is there.
    table = Table(wanted.name, MetaData(), autoload_with=engine)
    source_register(code=code, name=name, url=url, table_name=table.name, poll_interval_seconds=poll_interval_seconds)
    return SourceHandle(code=code, engine=engine, table=table, style=table_style(table))


def source_open(source: Source) -> SourceHandle:
    """A registered source's database and table, as they are (reflected)."""
    engine = create_engine(source.url)
    table = Table(source.table_name, MetaData(), autoload_with=engine)
    return SourceHandle(code=source.code, engine=engine, table=table, style=table_style(table))


# --- inserting rows --------------------------------------------------------------------------------------------

COPY_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _pisa_columns(table: Table) -> list[str]:
    return [column.name for column in table.columns if column.name not in {"id", "created_at"}]


class CopyRenderer:
    """Rows -> COPY text lines. The hot loop of every insert: numbers go through str() (exact for floats), and only
    text columns pay for escaping."""

    def __init__(self, table: Table) -> None:
        self.columns = _pisa_columns(table)
        self.text_positions = [
            position for position, name in enumerate(self.columns)
            if isinstance(table.c[name].type, (String, Text))
        ]

    def line(self, row_id: int, row: dict, suffix: str = "") -> str:
        values = [row.get(column) for column in self.columns]
        fields = [COPY_NULL if value is None else str(value) for value in values]
        for position in self.text_positions:
            if values[position] is not None:
                fields[position] = fields[position].translate(_COPY_ESCAPES)
        return f"{row_id}\t" + "\t".join(fields) + suffix + "\n"


def _copy_rows(cursor, table: Table, rows: list[dict], created_at, dialect) -> list[int]:
    """COPY rows in through psycopg2 with ids taken from the table's identity sequence first (so they are known)."""
    quoted_table = dialect.identifier_preparer.format_table(table)
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", (quoted_table, len(rows))
    )
    ids = [row[0] for row in cursor.fetchall()]
    renderer = CopyRenderer(table)
    suffix = f"\t{created_at.isoformat()}" if created_at is not None else ""
    buffer = io.StringIO("".join([renderer.line(row_id, row, suffix) for row_id, row in zip(ids, rows)]))
    columns = renderer.columns + (["created_at"] if created_at is not None else [])
    column_list = ", ".join(['"id"'] + [f'"{column}"' for column in columns])
    cursor.copy_expert(f"COPY {quoted_table} ({column_list}) FROM STDIN", buffer)
    return ids


def responses_insert(*, engine: Engine, table: Table, rows: list[dict], created_at=None) -> list[int]:
    """Insert rows (dicts keyed by column name) in one transaction; their ids, in order.

    PostgreSQL: COPY through the raw psycopg2 connection (by far the fastest way in for 1,120 columns); any other
    dialect: an executemany INSERT. `created_at` overrides the database's now() for every row.
    """
    if not rows:
        return []
    if engine.dialect.name == "postgresql":
        connection = engine.raw_connection()
        try:
            with connection.cursor() as cursor:
                ids = _copy_rows(cursor, table, rows, created_at, engine.dialect)
            connection.commit()
        except BaseException:
            try:
                connection.rollback()
            except engine.dialect.loaded_dbapi.Error:
                # The server ended the session (an outage began mid-COPY): drop the connection rather than hand it
                # back to the pool, whose reset would fail on it too (and log that as an error with a traceback).
                connection.invalidate()
            raise
        finally:
            connection.close()
        return ids
    if created_at is not None:
        rows = [{**row, "created_at": created_at} for row in rows]
    with engine.begin() as connection:
        result = connection.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
        return [row_id for (row_id,) in result]


def students_insert(*, handle: SourceHandle, factory: StudentFactory, specs: list[VariableSpec], count: int
                    ) -> list[int]:
    """`count` new students of the source's country, written in its style (typed or text), in one transaction."""
    rows = _styled(factory.students(handle.code, count), handle, TextStyle(specs))
    return responses_insert(engine=handle.engine, table=handle.table, rows=rows)


def responses_count(*, engine: Engine, table: Table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


# --- serials and control ---------------------------------------------------------------------------------------

@transaction.atomic
def student_serials_allocate(country: str, kind: str, n: int) -> int:
    """Reserve n consecutive serials for a country's students or schools; the first one. Shared by processes."""
    serial, _ = StudentSerial.objects.select_for_update().get_or_create(country=country, kind=kind)
    first = serial.last_serial + 1
    StudentSerial.objects.filter(pk=serial.pk).update(last_serial=F("last_serial") + n)
    return first


@transaction.atomic
def student_serials_reserve_at_least(*, country: str, kind: str, last_serial: int) -> None:
    """Never hand out a serial already in a source (a source kept while the warehouse was reset)."""
    serial, _ = StudentSerial.objects.select_for_update().get_or_create(country=country, kind=kind)
    if serial.last_serial < last_serial:
        serial.last_serial = last_serial
        serial.save(update_fields=["last_serial"])


def student_factory_for_sources(*, seed: int, specs: list[VariableSpec]) -> StudentFactory:
    """The factory that every simulator process uses: shared data, serials from the warehouse."""
    shared = settings.PISA_SHARED_DIR / "pisa2018"
    return StudentFactory(
        seed=seed, specs=specs, sample_path=shared / "students_sample.csv",
        country_means_path=settings.PISA_COUNTRY_MEANS_PATH, serial_allocator=student_serials_allocate,
    )


def simulator_control_set(*, rows_per_second: float | None = None, paused: bool | None = None) -> SimulatorControl:
    if rows_per_second is not None and rows_per_second < 0:
        raise ValueError("the rate must be zero or more rows per second")
    control, _ = SimulatorControl.objects.get_or_create(pk=SimulatorControl.SINGLETON_ID)
    if rows_per_second is not None:
        control.rows_per_second = rows_per_second
    if paused is not None:
        control.paused = paused
    control.save()
    return control


# --- faults ----------------------------------------------------------------------------------------------------

def _styled(rows: list[dict], handle: SourceHandle, text_style: TextStyle) -> list[dict]:
    return [text_style.row(row) for row in rows] if handle.style == "text" else rows


def source_empty(*, handle: SourceHandle) -> Injection:
    """Remove every row (TRUNCATE on PostgreSQL, as the course's tool did; the id sequence goes on)."""
    removed = responses_count(engine=handle.engine, table=handle.table)
    with handle.engine.begin() as connection:
        if handle.engine.dialect.name == "postgresql":
            quoted = handle.engine.dialect.identifier_preparer.format_table(handle.table)
            connection.exec_driver_sql(f"TRUNCATE {quoted}")
        else:
            connection.execute(handle.table.delete())
    return Injection.objects.create(source_code=handle.code, kind=Injection.Kind.EMPTY,
                                    details={"rows_removed": removed})


OFFLINE_TABLE_SUFFIX = "_offline"


def _quoted_table(engine: Engine, table_name: str) -> str:
    return engine.dialect.identifier_preparer.quote(table_name)


def source_outage_begin(*, source: Source) -> str:
    """Make a source unavailable to everyone, the pipeline and the simulator alike: on PostgreSQL its database refuses
    new connections and its open sessions are ended; elsewhere its table is renamed away. Returns the statement that
    undoes it by hand, should the caller die before `source_outage_end`."""
    url = make_url(source.url)
    if url.drivername.startswith("postgresql"):
        database = url.database
        engine = create_engine(server_url_of(source.url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()", (database,))
        finally:
            engine.dispose()
        return f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'
    engine = create_engine(source.url)
    offline = source.table_name + OFFLINE_TABLE_SUFFIX
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE {_quoted_table(engine, source.table_name)} "
                                       f"RENAME TO {_quoted_table(engine, offline)}")
    finally:
        engine.dispose()
    return f"ALTER TABLE {offline} RENAME TO {source.table_name}"


def source_outage_end(*, source: Source) -> None:
    """Undo `source_outage_begin`."""
    url = make_url(source.url)
    if url.drivername.startswith("postgresql"):
        engine = create_engine(server_url_of(source.url), isolation_level="AUTOCOMMIT")
        statement = f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true'
    else:
        engine = create_engine(source.url)
        statement = (f"ALTER TABLE {_quoted_table(engine, source.table_name + OFFLINE_TABLE_SUFFIX)} "
                     f"RENAME TO {_quoted_table(engine, source.table_name)}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def injection_late(
    *, handle: SourceHandle, factory: StudentFactory, specs: list[VariableSpec], count: int,
    hold_seconds: float = LATE_HOLD_SECONDS, on_held: Callable[[], None] | None = None,
    created_at: dt.datetime | None = None, delete_count: int = 0,
) -> Injection:
    """Late arrival: rows inserted at the start of a long transaction (ids from the sequence then, created_at = its
    start, or `created_at`) and committed `hold_seconds` later, after newer rows with higher ids committed meanwhile.
    With `delete_count`, the same transaction also deletes that many existing rows: inserts and deletes that cancel
    out in a row count.

    PostgreSQL only: elsewhere a writer holding a transaction blocks the others, so nothing could overtake it.
    """
    if handle.engine.dialect.name != "postgresql":
        raise ValueError("a late arrival needs concurrent writers: PostgreSQL sources only")
    rows = _styled(factory.students(handle.code, count), handle, TextStyle(specs))
    deleted = [row["id"] for row in _random_rows(handle, delete_count, [])] if delete_count else []
    connection = handle.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            started_at = cursor.fetchone()[0]
            ids = _copy_rows(cursor, handle.table, rows, created_at, handle.engine.dialect)
            if deleted:
                quoted = handle.engine.dialect.identifier_preparer.format_table(handle.table)
                cursor.execute(f"DELETE FROM {quoted} WHERE id = ANY(%s)", (deleted,))
            if on_held is not None:
                on_held()
            time.sleep(hold_seconds)
            # READ COMMITTED: this statement sees what other sessions committed while the rows were held.
            quoted = handle.engine.dialect.identifier_preparer.format_table(handle.table)
            cursor.execute(f"SELECT id FROM {quoted} WHERE id > %s ORDER BY id LIMIT %s",
                           (max(ids), INJECTION_ROW_LIMIT))
            overtaken_by = [row[0] for row in cursor.fetchall()]
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()
    return Injection.objects.create(source_code=handle.code, kind=Injection.Kind.LATE, details={
        "ids": ids, "cntstuids": [int(row["cntstuid"]) for row in rows],
        "created_at": (created_at or started_at).isoformat(), "hold_seconds": hold_seconds,
        "committed_after_ids": overtaken_by, "deleted_ids": deleted,
    })


def _random_rows(handle: SourceHandle, count: int, columns: list[str], exclude: Sequence[int] = ()) -> list[dict]:
    table = handle.table
    with handle.engine.connect() as connection:
        query = select(table.c.id, *(table.c[column] for column in columns)).order_by(func.random()).limit(count)
        if exclude:
            query = query.where(table.c.id.not_in(list(exclude)))
        return [dict(row._mapping) for row in connection.execute(query)]


def _moved_score(value, delta: float):
    if isinstance(value, str):
        try:
            return f"{float(value) + delta:.3f}".rstrip("0").rstrip(".")
        except ValueError:
            return value
    return None if value is None else round(float(value) + delta, 3)


def _other_gender(value):
    swap = {1: 2, 2: 1, "1": "2", "2": "1"}
    return swap.get(value, value)


def injection_update(*, handle: SourceHandle, count: int, spare: Sequence[int] = ()) -> Injection:
    """Change existing rows in place (created_at and id untouched, so a cursor alone never sees it): the student's
    gender is swapped and the ten mathematics PVs move up by 25 points. Rows with ids in `spare` are left alone."""
    pv_columns = [f"pv{m}math" for m in range(1, 11)]
    picked = _random_rows(handle, count, ["cntstuid", "st004d01t", *pv_columns], exclude=spare)
    table = handle.table
    changes = []
    with handle.engine.begin() as connection:
        for row in picked:
            new_values = {"st004d01t": _other_gender(row["st004d01t"])}
            new_values |= {column: _moved_score(row[column], UPDATE_PV_DELTA) for column in pv_columns}
            connection.execute(table.update().where(table.c.id == row["id"]).values(**new_values))
            changes.append({
                "id": row["id"], "cntstuid": _as_json(row["cntstuid"]),
                "changes": {column: [_as_json(row[column]), _as_json(value)] for column, value in new_values.items()},
            })
    return Injection.objects.create(source_code=handle.code, kind=Injection.Kind.UPDATE, details={
        "ids": [change["id"] for change in changes], "cntstuids": [change["cntstuid"] for change in changes],
        "rows": changes,
    })


def _rows_with_ids(handle: SourceHandle, ids: Sequence[int], columns: list[str]) -> list[dict]:
    table = handle.table
    with handle.engine.connect() as connection:
        query = select(table.c.id, *(table.c[column] for column in columns)).where(table.c.id.in_(list(ids)))
        return [dict(row._mapping) for row in connection.execute(query.order_by(table.c.id))]


def injection_delete(*, handle: SourceHandle, count: int, ids: Sequence[int] = (),
                     spare: Sequence[int] = ()) -> Injection:
    """Delete `count` random rows (never one with an id in `spare`), plus the rows with these ids (a chosen victim,
    such as the row that superseded a duplicate CNTSTUID)."""
    picked = _random_rows(handle, count, ["cntstuid"], exclude=[*ids, *spare]) if count else []
    if ids:
        picked += _rows_with_ids(handle, ids, ["cntstuid"])
    ids = [row["id"] for row in picked]
    with handle.engine.begin() as connection:
        connection.execute(handle.table.delete().where(handle.table.c.id.in_(ids)))
    return Injection.objects.create(source_code=handle.code, kind=Injection.Kind.DELETE, details={
        "ids": ids, "cntstuids": [_as_json(row["cntstuid"]) for row in picked],
    })


BAD_ROW_PROBLEMS = ("text_in_numeric", "out_of_range_code", "duplicate_cntstuid", "null_keys", "negative_weight",
                    "huge_weight", "absurd_scores")
# Hostile values that are well-formed numbers: only the plausibility rules (ingestion/plausibility.py) refuse them.
HOSTILE_VALUES = {"negative_weight": {"w_fstuwt": -5},
                  "huge_weight": {"w_fstuwt": 1e12},
                  "absurd_scores": {f"pv{m}math": 1e9 for m in range(1, 11)}}


def _spoiled(row: dict, problem: str, existing_cntstuid) -> tuple[dict, dict]:
    """A row with one problem, and what was done to it."""
    row = dict(row)
    if problem == "text_in_numeric":
        row["escs"] = "not a number"
        return row, {"column": "escs", "value": row["escs"]}
    if problem == "out_of_range_code":
        row["st004d01t"] = str(OUT_OF_RANGE_GENDER) if isinstance(row["st004d01t"], str) else OUT_OF_RANGE_GENDER
        return row, {"column": "st004d01t", "value": OUT_OF_RANGE_GENDER}
    if problem == "duplicate_cntstuid":
        row["cntstuid"] = existing_cntstuid
        return row, {"column": "cntstuid", "value": _as_json(existing_cntstuid)}
    if problem in HOSTILE_VALUES:
        values = HOSTILE_VALUES[problem]
        row.update({column: (repr(value) if isinstance(row[column], str) else value) for column, value in values.items()})
        return row, {"columns": sorted(values), "value": next(iter(values.values()))}
    for column in KEY_COLUMNS:
        row[column] = None
    return row, {"columns": list(KEY_COLUMNS), "value": None}


def injection_bad_rows(
    *, handle: SourceHandle, factory: StudentFactory, specs: list[VariableSpec], count: int,
) -> Injection:
    """Insert rows with one problem each, cycling through the problems the table can hold (text in a numeric column
    only fits a text-style table). A duplicate CNTSTUID repeats the most recent student's."""
    problems = [p for p in BAD_ROW_PROBLEMS if p != "text_in_numeric" or handle.style == "text"]
    fresh = _styled(factory.students(handle.code, count), handle, TextStyle(specs))
    with handle.engine.connect() as connection:
        latest = connection.execute(
            select(handle.table.c.cntstuid).where(handle.table.c.cntstuid.is_not(None))
            .order_by(handle.table.c.id.desc()).limit(1)
        ).scalar()
    existing_cntstuid = latest if latest is not None else fresh[0]["cntstuid"]
    rows, described = [], []
    for index, row in enumerate(fresh):
        problem = problems[index % len(problems)]
        spoiled, what = _spoiled(row, problem, existing_cntstuid)
        rows.append(spoiled)
        described.append({"problem": problem, **what})
    ids = responses_insert(engine=handle.engine, table=handle.table, rows=rows)
    for row_id, description, row in zip(ids, described, fresh):
        description["id"] = row_id
        description["generated_cntstuid"] = _as_json(row["cntstuid"])
    return Injection.objects.create(source_code=handle.code, kind=Injection.Kind.BAD, details={
        "ids": ids, "rows": described,
    })


def _as_json(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def shares_for(countries: list[str], *, seed: int) -> dict[str, float]:
    """Uneven, seeded shares of the traffic per country (a few big sources, many small ones), summing to 1."""
    rng = random.Random(seed)
    weights = {code: rng.paretovariate(1.2) for code in countries}
    total = sum(weights.values())
    return {code: weight / total for code, weight in weights.items()}

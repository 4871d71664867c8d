"""Real source databases for ingestion tests: a PostgreSQL database per source on the test server (or SQLite),
with a 1,120-column `responses` table filled from the shared real-shaped student sample."""

from __future__ import annotations

import csv
import io
import datetime as dt
import itertools
import uuid
from functools import lru_cache

import psycopg2
import sqlalchemy as sa

from codebook.catalogue import VariableSpec
from ingestion.extract import escape_copy_text
from ingestion.layout import pisa_variables
from ingestion.models import Source
from tests.conftest import students_sample_path, warehouse_server


def column_type(spec: VariableSpec, style: str):
    if style == "text" or spec.is_text:
        return sa.Text()
    if spec.decimals == 0:
        return sa.SmallInteger() if spec.width <= 4 else sa.Integer() if spec.width <= 9 else sa.BigInteger()
    return sa.Float(precision=53)


def responses_table(style: str, *, upper_case: bool = False) -> sa.Table:
    columns = [sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
               sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())]
    for spec in pisa_variables():
        columns.append(sa.Column(spec.name if upper_case else spec.name.lower(), column_type(spec, style)))
    return sa.Table("responses", sa.MetaData(), *columns)


@lru_cache(maxsize=1)
def sample_records() -> tuple[dict[str, str], ...]:
    with open(students_sample_path(), newline="") as handle:
        return tuple(csv.DictReader(handle))


_student_ids = itertools.count(10_000_000)


def typed_value(spec: VariableSpec, text: str):
    if text == "":
        return None
    if spec.is_text:
        return text
    number = float(text)
    return int(number) if spec.decimals == 0 else number


class SourceDatabase:
    """One source: a real database with a `responses` table, registered as a `Source`."""

    def __init__(self, code: str, *, style: str = "typed", dialect: str = "postgresql", tmp_path=None,
                 upper_case: bool = False) -> None:
        self.code = code
        self.style = style
        self.variables = pisa_variables()
        if dialect == "postgresql":
            server = warehouse_server()
            self.database = f"pisa_test_src_{code.lower()}_{uuid.uuid4().hex[:8]}"
            self.admin_dsn = {**server, "dbname": "postgres"}
            admin = psycopg2.connect(**self.admin_dsn)
            admin.autocommit = True
            admin.cursor().execute(f'CREATE DATABASE "{self.database}"')
            admin.close()
            password = f":{server['password']}" if server["password"] else ""
            self.url = (f"postgresql+psycopg2://{server['user']}{password}@{server['host']}:{server['port']}/"
                        f"{self.database}")
        else:
            self.database = None
            self.url = f"sqlite:///{tmp_path / f'{code.lower()}.sqlite3'}"
        self.engine = sa.create_engine(self.url)
        self.table = responses_table(style, upper_case=upper_case)
        self.table.metadata.create_all(self.engine)
        self.source = Source.objects.create(code=code, name=f"Test {code}", url=self.url)

    def student(self, **overrides) -> dict:
        """A real-shaped student from the shared sample, re-keyed to this source's country."""
        record = sample_records()[next(_student_ids) % len(sample_records())]
        row = {}
        for spec in self.variables:
            value = typed_value(spec, record.get(spec.name, ""))
            row[spec.name] = value
        row["CNT"] = self.code
        row["CNTSTUID"] = next(_student_ids)
        row.update(overrides)
        return row

    def _column_values(self, row: dict) -> dict:
        values = {}
        by_lower = {name.lower(): value for name, value in row.items()}
        for column in self.table.columns:
            if column.name in ("id", "created_at"):
                continue
            value = by_lower.get(column.name.lower())
            if self.style == "text":
                value = "NA" if value is None else (str(value) if not isinstance(value, float) or value != int(value)
                                                    else str(int(value)))
            values[column.name] = value
        if "created_at" in row:
            values["created_at"] = row["created_at"]
        return values

    def insert(self, rows: list[dict], *, connection=None) -> list[int]:
        statement = self.table.insert().returning(self.table.c.id)
        if connection is not None:
            return [r[0] for r in connection.execute(statement, [self._column_values(r) for r in rows])]
        with self.engine.begin() as conn:
            return [r[0] for r in conn.execute(statement, [self._column_values(r) for r in rows])]

    def insert_students(self, n: int, **overrides) -> list[int]:
        rows = [self.student(**overrides) for _ in range(n)]
        if self.database is None or n < 100:
            return self.insert(rows)
        return self._copy(rows)

    def _copy(self, rows: list[dict]) -> list[int]:
        """Bulk path for big fixtures: COPY, then read back the ids it assigned."""
        columns = [c.name for c in self.table.columns if c.name not in ("id", "created_at")]
        buffer = io.StringIO()
        for row in rows:
            values = self._column_values(row)
            buffer.write("\t".join(escape_copy_text(values[c]) for c in columns) + "\n")
        buffer.seek(0)
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cursor:
                cursor.execute("SELECT coalesce(max(id), 0) FROM responses")
                before = cursor.fetchone()[0]
                cursor.copy_expert(f"COPY responses ({', '.join(columns)}) FROM STDIN", buffer)
                cursor.execute("SELECT id FROM responses WHERE id > %s ORDER BY id", [before])
                ids = [r[0] for r in cursor.fetchall()]
            raw.commit()
        finally:
            raw.close()
        return ids

    def execute(self, sql: str, **params):
        with self.engine.begin() as conn:
            return conn.execute(sa.text(sql), params)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()

    def ids(self) -> set[int]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(self.table.c.id))}

    def drop(self) -> None:
        self.engine.dispose()
        from ingestion.extract import dispose_engines

        dispose_engines()
        if self.database:
            admin = psycopg2.connect(**self.admin_dsn)
            admin.autocommit = True
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.close()


def minutes_ago(minutes: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)

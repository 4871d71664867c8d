"""The source table: 1,120 lower-case columns, types that fit a PostgreSQL row, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData, Table, create_engine, inspect, select
from sqlalchemy.engine import make_url

from simulator.schema import source_database_create, source_table
from simulator.services import responses_insert
from simulator.students import TextStyle


def test_the_table_has_id_created_at_and_every_variable_in_lower_case(specs):
    table = source_table(specs, style="typed")
    names = [column.name for column in table.columns]
    assert len(names) == 1120
    assert names[:2] == ["id", "created_at"]
    assert names[2:] == [spec.name.lower() for spec in specs]
    assert table.c.id.primary_key and not table.c.created_at.nullable


def test_typed_columns_follow_the_spss_formats_and_text_style_is_all_text(specs):
    typed = source_table(specs, style="typed")
    text = source_table(specs, style="text")
    assert str(typed.c.st004d01t.type) == "SMALLINT"  # F1.0
    assert str(typed.c.cntstuid.type) == "INTEGER"  # F8.0
    assert str(typed.c.pv1math.type) == "DOUBLE"  # F8.3
    assert str(typed.c.cnt.type) == "VARCHAR(3)"  # A3
    assert {str(column.type) for column in list(text.columns)[2:]} == {"TEXT"}


def test_an_unknown_style_is_refused(specs):
    with pytest.raises(ValueError, match="style"):
        source_table(specs, style="json")


@pytest.mark.parametrize("style", ["typed", "text"])
def test_a_full_row_of_every_style_fits_in_postgresql_and_reads_back(specs, make_factory, pg_url_template, style):
    """A student with no gap at all is the widest row there is: it must fit PostgreSQL's 8 KB page."""
    url = pg_url_template.replace("{code}", style)
    url = source_database_create(server_url=url, database=make_url(url).database)
    assert source_database_create(server_url=url, database=make_url(url).database) == url  # idempotent
    engine = create_engine(url)
    table = source_table(specs, style=style)
    table.metadata.create_all(engine)
    row = {column.name: 1 for column in list(table.columns)[2:]}
    for spec in specs:
        if spec.is_text:
            row[spec.name.lower()] = "X" * spec.width
        elif spec.decimals:
            row[spec.name.lower()] = -123.456789
    student = make_factory().students("AUS", 1)[0]
    rows = [row, student] if style == "typed" else [TextStyle(specs).row(row), TextStyle(specs).row(student)]

    ids = responses_insert(engine=engine, table=table, rows=rows)

    reflected = Table("responses", MetaData(), autoload_with=engine)
    assert len(reflected.columns) == 1120
    with engine.connect() as connection:
        stored = connection.execute(select(table).where(table.c.id == ids[1])).mappings().one()
    expected = rows[1]
    assert all(stored[column] == expected[column] for column in expected), "values come back as they went in"
    engine.dispose()


def test_sqlite_is_a_second_dialect(specs, make_factory, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/source.db")
    table = source_table(specs, style="typed")
    table.metadata.create_all(engine)
    rows = make_factory().students("CHE", 3)

    ids = responses_insert(engine=engine, table=table, rows=rows)

    assert ids == [1, 2, 3]
    assert len(inspect(engine).get_columns("responses")) == 1120
    with engine.connect() as connection:
        stored = connection.execute(select(table).order_by(table.c.id)).mappings().all()
    assert [row["cntstuid"] for row in stored] == [row["cntstuid"] for row in rows]
    assert all(row["created_at"] is not None for row in stored)

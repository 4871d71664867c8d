"""The shape of a source database: one `responses` table of 1,120 columns (`id`, `created_at`, 1,118 PISA variables).

Two styles, as found in the wild: *typed* (numbers stay numbers, PISA's missing codes in place) and *text* (every PISA
column is text and a missing value is the string 'NA', like the course's sources).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    BigInteger, Column, DateTime, Double, Identity, Integer, MetaData, SmallInteger, String, Table, Text, create_engine,
    func, text,
)
from sqlalchemy.engine import URL, make_url

from codebook.catalogue import VariableSpec

from ingestion.source_urls import with_installed_driver

STYLES = ("typed", "text")
# Widths that still fit the integer types, so that a 1,120-column row stays far below PostgreSQL's 8 KB page:
# 839 of the 1,118 variables are one- or two-digit codes (2 bytes each as smallint, 8 as float8).
SMALLINT_MAX_DIGITS = 4
INTEGER_MAX_DIGITS = 9


def column_type_for(spec: VariableSpec, *, style: str):
    """The SQL type of one PISA variable: from its SPSS format (typed style) or always text (text style)."""
    if style == "text":
        return Text()
    if spec.is_text:
        return String(spec.width)
    if spec.decimals > 0:
        return Double()
    if spec.width <= SMALLINT_MAX_DIGITS:
        return SmallInteger()
    if spec.width <= INTEGER_MAX_DIGITS:
        return Integer()
    return BigInteger()


def source_table(
    specs: Iterable[VariableSpec], *, style: str, table_name: str = "responses", metadata: MetaData | None = None,
) -> Table:
    """The source table: `id` (identity primary key), `created_at` (now() at insert) and one column per variable."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    columns = [
        # BIGINT identity on PostgreSQL; SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now(), index=True),
    ]
    columns += [Column(spec.name.lower(), column_type_for(spec, style=style)) for spec in specs]
    return Table(table_name, metadata if metadata is not None else MetaData(), *columns)


def table_style(table: Table) -> str:
    """Which style an existing (reflected) source table has: text if its country column is not a short varchar."""
    return "text" if isinstance(table.c.cntryid.type, (String, Text)) else "typed"


def server_url_of(database_url: str) -> URL:
    """The maintenance URL of the server holding `database_url` (its `postgres` database)."""
    url = with_installed_driver(make_url(database_url))
    return url.set(database="postgres") if url.drivername.startswith("postgresql") else url


def source_database_url(*, server_url: str | URL, database: str) -> str:
    url = make_url(server_url) if isinstance(server_url, str) else server_url
    return with_installed_driver(url).set(database=database).render_as_string(hide_password=False)


CODE_PLACEHOLDER = "{code}"
_SAFE_PLACEHOLDER = "__country_code__"


def url_template_on(server: URL, *, database: str) -> str:
    """A `{code}` URL template for databases on a server (rendering a URL would escape the braces)."""
    rendered = server.set(database=database.replace(CODE_PLACEHOLDER, _SAFE_PLACEHOLDER))
    return rendered.render_as_string(hide_password=False).replace(_SAFE_PLACEHOLDER, CODE_PLACEHOLDER)


def _database_exists(connection, database: str) -> bool:
    query = text("SELECT 1 FROM pg_database WHERE datname = :name")
    return connection.execute(query, {"name": database}).first() is not None


def source_database_create(*, server_url: str, database: str) -> str:
    """Create one source database on a PostgreSQL server (nothing to do when it exists); its SQLAlchemy URL.

    For a file-based dialect (SQLite) the database comes into being with its first table, so only the URL is made.
    """
    url = make_url(server_url)
    if not url.drivername.startswith("postgresql"):
        return source_database_url(server_url=url, database=database)
    engine = create_engine(server_url_of(server_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if not _database_exists(connection, database):
                connection.execute(text(f'CREATE DATABASE "{database}"'))
    finally:
        engine.dispose()
    return source_database_url(server_url=url, database=database)


def source_database_drop(*, server_url: str, database: str) -> None:
    """Drop a source database, closing the sessions still attached to it (tests clean up with it)."""
    url = make_url(server_url)
    if not url.drivername.startswith("postgresql"):
        return
    engine = create_engine(server_url_of(server_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        engine.dispose()

"""Fixtures for the simulator: the codebook, a student factory, and source databases that are dropped afterwards."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from codebook.catalogue import read_codebook_csv
from simulator.schema import source_database_drop, url_template_on
from simulator.students import StudentFactory
from tests.conftest import codebook_csv_path, country_means_path, students_sample_path, warehouse_server


@pytest.fixture(scope="session")
def specs():
    return read_codebook_csv(codebook_csv_path())


@pytest.fixture
def sample_path():
    return students_sample_path()


@pytest.fixture
def means_path():
    return country_means_path()


@pytest.fixture
def make_factory(specs, sample_path, means_path):
    def make(seed: int = 7, **overrides) -> StudentFactory:
        options = {"sample_path": sample_path, "country_means_path": means_path} | overrides
        return StudentFactory(seed=seed, specs=specs, **options)

    return make


@pytest.fixture
def shared_settings(settings, specs):
    """The product's settings pointing at the shared reference data, as `make run` would find it next to the repo."""
    settings.PISA_CODEBOOK_PATH = codebook_csv_path()
    settings.PISA_SHARED_DIR = students_sample_path().parent.parent
    return settings


def _test_server_url() -> URL:
    server = warehouse_server()
    return URL.create("postgresql+psycopg2", username=server["user"], password=server["password"],
                      host=server["host"], port=int(server["port"]), database="postgres")


@pytest.fixture
def pg_url_template():
    """A `{code}` URL template for source databases on the test server, unique to this test, dropped afterwards
    (the server may be shared with a running stack or another CI run)."""
    prefix = f"pisa_t{uuid.uuid4().hex[:10]}_"
    server = _test_server_url()
    yield url_template_on(server, database=prefix + "{code}")
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        names = connection.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"), {"prefix": prefix + "%"}
        ).scalars().all()
    engine.dispose()
    for name in names:
        source_database_drop(server_url=server.render_as_string(hide_password=False), database=name)


@pytest.fixture
def sqlite_url_template(tmp_path):
    return f"sqlite:///{tmp_path}/src_{{code}}.db"

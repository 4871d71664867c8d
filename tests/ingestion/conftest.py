import pytest

from tests.ingestion.factories import SourceDatabase


@pytest.fixture
def source_db(transactional_db, tmp_path):
    """Create real source databases: `alb = source_db("ALB")`, `source_db("ARG", style="text")`."""
    created: list[SourceDatabase] = []

    def make(code: str, **kwargs) -> SourceDatabase:
        source = SourceDatabase(code, tmp_path=tmp_path, **kwargs)
        created.append(source)
        return source

    yield make
    for source in created:
        source.drop()

import pytest

from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh


@pytest.fixture
def two_countries(source_db):
    """ALB (40 students) and ARG (30) in real sources, synced and refreshed: their sources by code."""
    sources = {}
    for code, n in (("ALB", 40), ("ARG", 30)):
        sources[code] = source = source_db(code)
        source.insert_students(n)
        source_sync(source_id=source.source.pk)
        country_metrics_refresh(country=code)
    return sources

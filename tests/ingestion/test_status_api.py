"""GET /api/v1/sources/: what every dashboard polls each second, rendered at most once per
INGEST_STATUS_CACHE_SECONDS by each web process and answered with an ETag."""

from __future__ import annotations

import time

from ingestion.models import SourceState
from ingestion.services import source_register

URL = "/api/v1/sources/"
SOURCE_URL = "postgresql://reader:s3cret-pw@db.example:5432/pisa_alb"


def _rows_loaded(response) -> dict[str, int]:
    return {status["code"]: status["rows_loaded"] for status in response.json()}


def test_within_the_period_every_poll_gets_the_same_bytes_and_a_304_for_its_etag(client, db, settings):
    settings.INGEST_STATUS_CACHE_SECONDS = 60
    source = source_register(code="ALB", name="Albania", url=SOURCE_URL)
    first = client.get(URL)
    SourceState.objects.update_or_create(source=source, defaults={"rows_loaded": 7})

    again = client.get(URL)
    revalidated = client.get(URL, HTTP_IF_NONE_MATCH=first["ETag"])

    assert first.status_code == again.status_code == 200 and again.content == first.content
    assert again["ETag"] == first["ETag"] and first["Cache-Control"] == "no-cache"
    assert revalidated.status_code == 304 and revalidated.content == b""


def test_a_change_shows_once_the_period_is_over_with_a_new_etag(client, db, settings):
    settings.INGEST_STATUS_CACHE_SECONDS = 0.05
    source = source_register(code="ALB", name="Albania", url=SOURCE_URL)
    first = client.get(URL)
    SourceState.objects.update_or_create(source=source, defaults={"rows_loaded": 7})
    time.sleep(0.1)

    later = client.get(URL, HTTP_IF_NONE_MATCH=first["ETag"])

    assert _rows_loaded(first) == {"ALB": 0}
    assert later.status_code == 200 and _rows_loaded(later) == {"ALB": 7}
    assert later["ETag"] != first["ETag"]


def test_it_takes_no_parameters_and_only_get(client, db):
    unknown = client.get(URL, {"format": "api"})
    posted = client.post(URL)

    assert unknown.status_code == 400 and "unknown query parameter(s): 'format'" in unknown.json()["error"]
    assert posted.status_code == 405

"""Answers gzipped once per ETag for the clients that accept it, identical once decoded, with their 304s."""

from __future__ import annotations

import gzip

import pytest

from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh
from pisa_site import compression
from pisa_site.cache import redis_client

GZIP = {"HTTP_ACCEPT_ENCODING": "gzip, deflate, br"}
POLLED = ["/api/v1/metrics/?countries=ALB,ARG", "/api/v1/metrics/", "/api/v1/sources/",
          "/api/v1/analyses/?statistic=mean&target=READ&by=ST004D01T&countries=ALB,ARG",
          "/api/v1/metrics/?countries=ALB,ARG&format=csv"]


@pytest.mark.parametrize("url", POLLED)
def test_a_gzipped_answer_decodes_to_the_same_bytes_as_the_plain_one(client, two_countries, url):
    plain = client.get(url)
    zipped = client.get(url, **GZIP)
    assert plain.status_code == zipped.status_code == 200
    assert len(plain.content) >= compression.GZIP_MIN_BYTES
    assert "Content-Encoding" not in plain and zipped["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.content) == plain.content
    assert len(zipped.content) < len(plain.content) / 2
    assert plain["Vary"].startswith("Accept-Encoding") and zipped["Vary"].startswith("Accept-Encoding")
    assert zipped["Content-Type"] == plain["Content-Type"]
    # The same answer, encoded: the weak form of its ETag (a strong ETag names one encoding's bytes).
    assert zipped["ETag"] == f"W/{plain['ETag']}"


@pytest.mark.parametrize("url", POLLED[:3])
def test_either_form_of_the_etag_earns_a_304_from_either_kind_of_client(client, two_countries, url):
    plain = client.get(url)
    zipped = client.get(url, **GZIP)
    for held in (plain["ETag"], zipped["ETag"]):
        assert client.get(url, HTTP_IF_NONE_MATCH=held).status_code == 304
        again = client.get(url, HTTP_IF_NONE_MATCH=held, **GZIP)
        assert again.status_code == 304 and again.content == b"" and again["Vary"].startswith("Accept-Encoding")


def test_a_body_is_compressed_once_then_read_back_by_any_process(client, two_countries, monkeypatch):
    url = POLLED[0]
    first = client.get(url, **GZIP)
    stored = redis_client().get(compression.GZIP_KEY.format(first["ETag"].removeprefix("W/").strip('"')))
    assert stored == first.content

    compressions = []
    monkeypatch.setattr(compression.gzip, "compress", lambda *a, **k: compressions.append(a) or b"")
    assert client.get(url, **GZIP).content == first.content  # this process's table
    compression.gzipped_forget()  # as another web process: Redis has it
    assert client.get(url, **GZIP).content == first.content
    assert compressions == []


def test_new_rows_give_a_new_etag_and_its_own_gzip(client, two_countries):
    url = POLLED[0]
    before = client.get(url, **GZIP)
    alb = two_countries["ALB"]
    alb.insert_students(5)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    after, plain = client.get(url, **GZIP), client.get(url)
    assert after["ETag"] != before["ETag"] and after["ETag"] == f"W/{plain['ETag']}"
    assert gzip.decompress(after.content) == plain.content
    assert plain.json()["by_country"]["ALB"]["statistics"]["n_students"] == 45


@pytest.mark.parametrize("header, accepted", [
    ("gzip", True), ("deflate, gzip;q=0.5", True), ("*", True), ("GZIP", True), ("br;q=1.0, gzip; q=0.8", True),
    ("", False), ("identity", False), ("gzip;q=0", False), ("gzip;q=0.0", False), ("br", False),
    ("gzip;q=x", False), ("*, gzip;q=0", False), ("gzip;q=0, *", False), ("identity, *;q=0.1", True),
])
def test_accept_encoding_is_read_with_its_qualities(header, accepted):
    assert compression.accepts_gzip(header) is accepted


def test_a_small_answer_goes_as_it_is(client, two_countries):
    small = client.get("/api/forage/learning-hours", **GZIP)  # two countries' hours: about 80 bytes
    assert small.status_code == 200 and 0 < len(small.content) < compression.GZIP_MIN_BYTES
    assert "Content-Encoding" not in small and not small["ETag"].startswith("W/")

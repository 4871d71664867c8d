"""GET /api/v1/variables/{name}/distribution/: any codebook variable, weighted, decoded, missing codes apart.

Computed by the analysis worker, never in a request: a request reads what it computed, or answers 202 while it does."""

import io

import pandas as pd
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ingestion.pipeline import source_sync
from metrics.services import country_distribution_refresh, country_metrics_refresh
from tests.conftest import wait_until


def computed(client, url: str) -> dict:
    """The 200 answer of `url`, after running what the analysis worker runs for each country it said was computing."""
    first = client.get(url)
    assert first.status_code == 202, first.content[:200]
    body = first.json()
    assert first["Retry-After"] == str(body["retry_after_seconds"])
    for country in body["computing"]:
        country_distribution_refresh(variable=body["variable"], country=country)
    answer = client.get(url)
    assert answer.status_code == 200
    return answer.json()


@pytest.fixture
def albania(source_db):
    alb = source_db("ALB")
    alb.insert_students(40)
    alb.insert([alb.student(ST004D01T=9, ESCS=99.0), alb.student(ST004D01T=None, ESCS=None)])
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    return alb


def test_a_categorical_variable_agrees_with_the_share_of_girls_computed_from_the_running_sums(client, albania):
    body = computed(client, "/api/v1/variables/ST004D01T/distribution/?countries=ALB")
    [alb] = body["countries"]
    categories = {c["label"]: c for c in alb["categories"]}
    assert set(categories) == {"Female", "Male"}
    girls = client.get("/api/v1/metrics/?countries=ALB").json()["by_country"]["ALB"]["statistics"]["background"][
        "girls_share"]
    assert categories["Female"]["weighted_percent"]["value"] == pytest.approx(girls["value"], rel=1e-9)
    assert categories["Female"]["weighted_percent"]["se"] == pytest.approx(girls["se"], rel=1e-6)
    assert sum(c["weighted_percent"]["value"] for c in alb["categories"]) == pytest.approx(100)
    reasons = {m["reason"]: m["students"] for m in alb["missing"]}
    assert reasons["no_response"] >= 1 and reasons["system_missing"] >= 1


def test_a_continuous_variable_agrees_with_the_mean_from_the_running_sums(client, albania):
    body = computed(client, "/api/v1/variables/escs/distribution/?countries=ALB")
    [alb] = body["countries"]
    assert body["variable"]["name"] == "ESCS"
    escs = client.get("/api/v1/metrics/?countries=ALB").json()["by_country"]["ALB"]["statistics"]["background"][
        "escs_mean"]
    assert alb["continuous"]["mean"]["value"] == pytest.approx(escs["value"], rel=1e-9)
    assert alb["continuous"]["mean"]["se"] == pytest.approx(escs["se"], rel=1e-6)
    assert alb["continuous"]["p10"]["value"] <= alb["continuous"]["p50"]["value"] <= alb["continuous"]["p90"]["value"]
    assert any(m["reason"] in ("no_response", "system_missing") for m in alb["missing"])


def test_a_distribution_downloads_as_the_same_tidy_table(client, albania):
    url = "/api/v1/variables/ST004D01T/distribution/?countries=ALB"
    [alb] = computed(client, url)["countries"]
    answer = client.get(url + "&format=csv")
    assert answer["Content-Type"] == "text/csv; charset=utf-8" and "ST004D01T" in answer["Content-Disposition"]
    table = pd.read_csv(io.BytesIO(answer.content), encoding="utf-8-sig", dtype={"group": str})
    estimates = table[table["kind"] == "estimate"].set_index("group")
    for category in alb["categories"]:
        row = estimates.loc[str(category["value"])]
        assert row["group_label"] == f"ST004D01T={category['label']}"
        assert row["estimate"] == pytest.approx(category["weighted_percent"]["value"], rel=1e-15)
        assert row["se"] == pytest.approx(category["weighted_percent"]["se"], rel=1e-15)
    missing = table[table["kind"] == "missing"].set_index("group")["students"].to_dict()
    assert missing == {m["reason"]: m["students"] for m in alb["missing"]}
    assert answer["ETag"] != client.get(url)["ETag"]
    assert client.get(url + "&format=csv", HTTP_IF_NONE_MATCH=answer["ETag"]).status_code == 304


def test_an_unknown_variable_is_a_404_and_a_bad_country_list_a_400(client, albania):
    assert client.get("/api/v1/variables/NOPE123/distribution/?countries=ALB").status_code == 404
    assert client.get("/api/v1/variables/ESCS/distribution/?countries=alb").status_code == 400


def test_a_request_reads_no_student_whatever_it_asks_for(client, source_db):
    # Bounded work per request: every country, computed or not, and the request runs no SQL at all (Redis only).
    for code in ("ALB", "ARG", "AUS"):
        country = source_db(code)
        country.insert_students(5)
        source_sync(source_id=country.source.pk)
        country_metrics_refresh(country=code)
    url = "/api/v1/variables/ST004D01T/distribution/"
    client.get("/api/v1/metrics/")  # the versions and labels, as any request finds them
    with CaptureQueriesContext(connection) as uncomputed:
        assert client.get(url).status_code == 202
    for code in ("ALB", "ARG", "AUS"):
        country_distribution_refresh(variable="ST004D01T", country=code)
    with CaptureQueriesContext(connection) as computed_answer:
        answer = client.get(url)
    assert answer.status_code == 200 and [c["country"] for c in answer.json()["countries"]] == ["ALB", "ARG", "AUS"]
    assert [q["sql"] for q in uncomputed.captured_queries] == []
    assert [q["sql"] for q in computed_answer.captured_queries] == []


def test_a_computation_is_asked_for_once_while_it_runs(client, albania):
    from metrics import cache

    url = "/api/v1/variables/ESCS/distribution/?countries=ALB"
    assert client.get(url).json()["computing"] == ["ALB"]
    assert not cache.distribution_claim(variable="ESCS", country="ALB", seconds=60)  # claimed by the first request
    assert client.get(url).status_code == 202


def test_the_analysis_worker_computes_what_a_request_asked_for(client, source_db, celery_worker_process):
    alb = source_db("ALB")
    alb.insert_students(12)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    url = "/api/v1/variables/ST004D01T/distribution/?countries=ALB"
    assert client.get(url).status_code == 202
    celery_worker_process("analysis", name="analysis")
    assert wait_until(lambda: client.get(url).status_code == 200, timeout=60)
    [alb_answer] = client.get(url).json()["countries"]
    assert alb_answer["students"] == 12


def test_the_sources_api_reports_each_source_without_its_password(client, source_db):
    alb = source_db("ALB")
    alb.source.url = alb.url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it; it must not show
    alb.source.save()
    alb.insert_students(3)
    source_sync(source_id=alb.source.pk)
    response = client.get("/api/v1/sources/")
    [status] = response.json()
    assert status["code"] == "ALB" and status["rows_loaded"] == 3 and status["last_error"] == ""
    assert status["lag_seconds"] == 0 and status["rows_behind"] == 0  # caught up
    assert status["idle_seconds"] is not None and status["idle_seconds"] >= 0
    assert "s3cret-pw" not in response.content.decode() and "***" in status["url"]

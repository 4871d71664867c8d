"""GET /api/v1/variables/{name}/distribution/: any codebook variable, weighted, decoded, missing codes apart."""

import pytest

from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh


@pytest.fixture
def albania(source_db):
    alb = source_db("ALB")
    alb.insert_students(40)
    alb.insert([alb.student(ST004D01T=9, ESCS=99.0), alb.student(ST004D01T=None, ESCS=None)])
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    return alb


def test_a_categorical_variable_agrees_with_the_share_of_girls_computed_from_the_running_sums(client, albania):
    body = client.get("/api/v1/variables/ST004D01T/distribution/?countries=ALB").json()
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
    body = client.get("/api/v1/variables/escs/distribution/?countries=ALB").json()
    [alb] = body["countries"]
    assert body["variable"]["name"] == "ESCS"
    escs = client.get("/api/v1/metrics/?countries=ALB").json()["by_country"]["ALB"]["statistics"]["background"][
        "escs_mean"]
    assert alb["continuous"]["mean"]["value"] == pytest.approx(escs["value"], rel=1e-9)
    assert alb["continuous"]["mean"]["se"] == pytest.approx(escs["se"], rel=1e-6)
    assert alb["continuous"]["p10"]["value"] <= alb["continuous"]["p50"]["value"] <= alb["continuous"]["p90"]["value"]
    assert any(m["reason"] in ("no_response", "system_missing") for m in alb["missing"])


def test_an_unknown_variable_is_a_404_and_a_bad_country_list_a_400(client, albania):
    assert client.get("/api/v1/variables/NOPE123/distribution/?countries=ALB").status_code == 404
    assert client.get("/api/v1/variables/ESCS/distribution/?countries=alb").status_code == 400


def test_the_sources_api_reports_each_source_without_its_password(client, source_db):
    alb = source_db("ALB")
    alb.source.url = alb.url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it; it must not show
    alb.source.save()
    alb.insert_students(3)
    source_sync(source_id=alb.source.pk)
    response = client.get("/api/v1/sources/")
    [status] = response.json()
    assert status["code"] == "ALB" and status["rows_loaded"] == 3 and status["last_error"] == ""
    assert status["seconds_behind"] is not None and status["seconds_behind"] >= 0
    assert "s3cret-pw" not in response.content.decode() and "***" in status["url"]

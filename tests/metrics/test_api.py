"""/api/v1/metrics/, /api/v1/countries/ and the Forage contract, served from Redis with ETags."""

import pytest

from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh


@pytest.fixture
def two_countries(source_db):
    alb, arg = source_db("ALB"), source_db("ARG")
    alb.insert_students(35)
    arg.insert_students(20)
    for source in (alb, arg):
        source_sync(source_id=source.source.pk)
        country_metrics_refresh(country=source.code)
    return alb, arg


def test_metrics_answer_with_an_etag_then_304_until_the_data_changes(client, two_countries):
    alb, _ = two_countries
    first = client.get("/api/v1/metrics/?countries=ALB,ARG")
    assert first.status_code == 200 and first["Cache-Control"] == "no-cache"
    body = first.json()
    assert body["countries"] == ["ALB", "ARG"]
    assert body["by_country"]["ALB"]["statistics"]["n_students"] == 35
    assert body["average_of"] == ["ALB", "ARG"]
    assert body["average"]["n_students"] == 55
    assert body["labels"]["gender_gap"] == "girls minus boys"

    again = client.get("/api/v1/metrics/?countries=ALB,ARG", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b""

    alb.insert_students(3)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    changed = client.get("/api/v1/metrics/?countries=ALB,ARG", HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200 and changed["ETag"] != first["ETag"]
    assert changed.json()["by_country"]["ALB"]["statistics"]["n_students"] == 38


def test_the_average_is_the_unweighted_mean_of_the_countries_shown(client, two_countries):
    body = client.get("/api/v1/metrics/?countries=ALB,ARG").json()
    alb = body["by_country"]["ALB"]["statistics"]["background"]["escs_mean"]
    arg = body["by_country"]["ARG"]["statistics"]["background"]["escs_mean"]
    average = body["average"]["background"]["escs_mean"]
    assert average["value"] == pytest.approx((alb["value"] + arg["value"]) / 2)
    assert average["se"] == pytest.approx((alb["se"] ** 2 + arg["se"] ** 2) ** 0.5 / 2)


@pytest.mark.parametrize("query, message", [
    ("countries=alb", "comma-separated upper-case"),
    ("countries=ALB,,ARG", "comma-separated upper-case"),
    ("countries=ZZZ", "unknown country code(s): ZZZ"),
])
def test_bad_parameters_get_a_400_with_a_message(client, two_countries, query, message):
    response = client.get(f"/api/v1/metrics/?{query}")
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_countries_list_and_detail(client, two_countries):
    listing = client.get("/api/v1/countries/").json()["results"]
    assert [(c["code"], c["n_students"]) for c in listing] == [("ALB", 35), ("ARG", 20)]
    assert client.get("/api/v1/countries/ARG/").json()["statistics"]["n_students"] == 20
    assert client.get("/api/v1/countries/ZZZ/").status_code == 404


class TestForageContract:
    """Field for field what shared/forage/API.md specifies."""

    def test_submissions_is_a_count_over_all_countries(self, client, two_countries):
        assert client.get("/api/forage/submissions").json() == {"count": 55}

    def test_submissions_over_time_are_per_hour_of_the_day(self, client, two_countries):
        body = client.get("/api/forage/submissions-over-time").json()
        [dataset] = body["datasets"]
        assert dataset["id"] == "Submissions"
        assert [point["x"] for point in dataset["data"]] == [f"{h:02d}:00" for h in range(24)]
        assert sum(point["y"] for point in dataset["data"]) == 55

    def test_learning_hours_honour_the_country_selector(self, client, two_countries):
        body = client.get("/api/forage/learning-hours?countries=ARG").json()
        [row] = body["datasets"]
        assert set(row) == {"country", "hours"} and row["country"] == "ARG"
        assert isinstance(row["hours"], float) and 0 < row["hours"] < 100

    def test_escs_is_a_value_per_country(self, client, two_countries):
        body = client.get("/api/forage/escs?countries=ALB,ARG").json()
        assert [set(row) for row in body["datasets"]] == [{"id", "value"}] * 2
        assert [row["id"] for row in body["datasets"]] == ["ALB", "ARG"]
        assert all(-5 <= row["value"] <= 5 for row in body["datasets"])

    def test_early_education_and_belonging_bubbles(self, client, two_countries):
        body = client.get("/api/forage/early-education-belonging?countries=ALB").json()
        [row] = body["datasets"]
        assert row["id"] == "ALB"
        [point] = row["data"]
        assert set(point) == {"x", "y", "submissions"} and point["submissions"] == 35

    def test_a_malformed_selector_is_a_400(self, client, two_countries):
        assert client.get("/api/forage/escs?countries=ALB;DROP").status_code == 400

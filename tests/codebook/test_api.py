"""The read-only codebook API, and a label edited in the admin showing in it at once."""

from __future__ import annotations

from django.urls import reverse

from codebook.models import Variable
from tests.codebook.test_admin import change_form, change_url

LIST_URL = "/api/v1/codebook/variables/"


def detail_url(name: str) -> str:
    return f"/api/v1/codebook/variables/{name}/"


def test_anyone_may_list_variables_in_codebook_order(small_codebook, client):
    body = client.get(LIST_URL).json()
    assert body["count"] == 4
    assert [variable["name"] for variable in body["results"]] == ["CNT", "ST004D01T", "ESCS", "TMINS"]
    assert body["results"][2] == {
        "name": "ESCS", "label": "Index of economic, social and cultural status", "section": "derived",
        "kind": "continuous", "format_spss": "F7.4", "na_values": [], "na_range": [95.0, 99.0]}


def test_the_list_is_paginated_by_50(shared_codebook, client):
    first = client.get(LIST_URL).json()
    assert first["count"] == 1118 and len(first["results"]) == 50 and first["next"].endswith("?page=2")
    last = client.get(LIST_URL, {"page": 23}).json()
    assert len(last["results"]) == 1118 - 22 * 50 and last["next"] is None


def test_search_matches_names_and_labels_and_filters_narrow_it(shared_codebook, client):
    by_label = client.get(LIST_URL, {"search": "sense of belonging"}).json()["results"]
    assert "BELONG" in [variable["name"] for variable in by_label]
    weights = client.get(LIST_URL, {"section": "weights", "search": "W_FSTURWT8"}).json()
    assert [variable["name"] for variable in weights["results"]] == ["W_FSTURWT8", "W_FSTURWT80"]
    pvs = client.get(LIST_URL, {"kind": "plausible_value", "search": "math"}).json()
    assert pvs["count"] == 10


def test_an_unknown_filter_value_is_a_400_that_says_why(small_codebook, client):
    response = client.get(LIST_URL, {"kind": "colour"})
    assert response.status_code == 400
    assert response.json()["error"] == 'kind: "colour" is not a valid choice.'


def test_a_variable_comes_with_its_value_labels_and_missing_reasons(small_codebook, client):
    body = client.get(detail_url("ST004D01T")).json()
    assert body["label"] == "Student (Standardized) Gender" and body["na_range"] == [5.0, 9.0]
    assert body["value_labels"] == [
        {"value": 1, "label": "Female", "is_missing": False, "missing_reason": None},
        {"value": 2, "label": "Male", "is_missing": False, "missing_reason": None},
        {"value": 5, "label": "Valid Skip", "is_missing": True, "missing_reason": "valid_skip"},
        {"value": 7, "label": "Not Applicable", "is_missing": True, "missing_reason": "not_applicable"},
        {"value": 8, "label": "Invalid", "is_missing": True, "missing_reason": "invalid"},
        {"value": 9, "label": "No Response", "is_missing": True, "missing_reason": "no_response"},
    ]
    assert client.get(detail_url("CNT")).json()["value_labels"][0] == {
        "value": "FRA", "label": "France", "is_missing": False, "missing_reason": None}


def test_a_variable_is_found_by_its_warehouse_column_name_too(small_codebook, client):
    assert client.get(detail_url("st004d01t")).json()["name"] == "ST004D01T"


def test_an_unknown_variable_is_a_404(small_codebook, client):
    assert client.get(detail_url("NOPE")).status_code == 404


def test_the_api_is_read_only(small_codebook, admin_client):
    assert admin_client.post(LIST_URL, {"name": "NEW"}).status_code == 405
    assert admin_client.put(detail_url("ESCS"), {"label": "x"}, content_type="application/json").status_code == 405


def test_an_unchanged_codebook_answers_304_to_a_known_etag(small_codebook, client):
    first = client.get(detail_url("ESCS"))
    assert first["Cache-Control"] == "no-cache"
    again = client.get(detail_url("ESCS"), HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304
    other_page = client.get(LIST_URL, HTTP_IF_NONE_MATCH=first["ETag"])
    assert other_page.status_code == 200


def test_a_label_edited_in_the_admin_shows_in_the_api_at_once(small_codebook, editor_client, client,
                                                              django_capture_on_commit_callbacks):
    before = client.get(detail_url("ST004D01T"))
    listed_before = client.get(LIST_URL, {"search": "gender"})
    gender = Variable.objects.get(name="ST004D01T")

    with django_capture_on_commit_callbacks(execute=True):
        response = editor_client.post(change_url(gender), change_form(
            gender, label="Sexe", value_labels={"1": "Fille", "9": "Sans réponse"}))
    assert response.status_code == 302

    after = client.get(detail_url("ST004D01T"), HTTP_IF_NONE_MATCH=before["ETag"])
    assert after.status_code == 200 and after["ETag"] != before["ETag"]
    assert after.json()["label"] == "Sexe"
    assert after.json()["value_labels"][0]["label"] == "Fille"
    assert after.json()["value_labels"][-1] == {
        "value": 9, "label": "Sans réponse", "is_missing": True, "missing_reason": "no_response"}
    listed_after = client.get(LIST_URL, {"search": "sexe"}, HTTP_IF_NONE_MATCH=listed_before["ETag"])
    assert [variable["label"] for variable in listed_after.json()["results"]] == ["Sexe"]


def test_the_api_appears_in_the_openapi_schema(db, client):
    schema = client.get(reverse("api-schema"), {"format": "json"}).json()
    assert {"/api/v1/codebook/variables/", "/api/v1/codebook/variables/{name}/"} <= set(schema["paths"])

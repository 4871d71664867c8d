"""Every query parameter of every endpoint is validated: a bad one is a 400 (or, for a path naming nothing, a 404)
with a message saying what is wrong, as JSON; never a 500, never silently ignored."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.codebook.conftest import small_codebook, write_codebook_csv  # noqa: F401  (fixtures)

# The small codebook knows FRA, ITA and MEX (CNT's labels) and the variables CNT, ST004D01T, ESCS and TMINS.
FILLED = {"{name}": "ESCS", "{code}": "FRA", "{source_row_id}": "1"}


def operations() -> tuple[dict[str, set[str]], set[str]]:
    """Every path of the OpenAPI schema (parameters filled) -> the names of the query parameters it declares; and
    the paths that ask for credentials (staff only: the quarantine)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    found, restricted = {}, set()
    for path, methods in schema["paths"].items():
        for template, value in FILLED.items():
            path = path.replace(template, value)
        found[path] = {p["name"] for p in methods["get"].get("parameters", []) if p["in"] == "query"}
        if methods["get"].get("security", [{}]) != [{}]:
            restricted.add(path)
    return found, restricted


OPERATIONS, RESTRICTED = operations()
WITH_COUNTRIES = sorted(path for path, names in OPERATIONS.items() if "countries" in names)
# What a URL needs besides the parameter under test to be a valid request (an analysis needs its target).
REQUIRED = {"/api/v1/analyses/": {"target": "READ"}}


@pytest.fixture
def caller(client, admin_user):
    """Anonymous for the public paths; a superuser for the staff-only ones (anonymous callers get a 401 there,
    before any parameter is looked at: tests/ingestion/test_quarantine_api.py)."""

    def for_path(path: str):
        if path in RESTRICTED:
            client.force_login(admin_user)
        return client

    return for_path


def refused(client, path: str, query: dict | str, status: int = 400) -> str:
    required = REQUIRED.get(path, {})
    if isinstance(query, dict):
        response = client.get(path, required | query)
    else:
        response = client.get(f"{path}?{query}" + "".join(f"&{name}={value}" for name, value in required.items()))
    assert response.status_code == status, (path, query, response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


def test_the_schema_lists_every_endpoint():
    assert len(OPERATIONS) == 17 and len(WITH_COUNTRIES) == 9
    assert RESTRICTED == {"/api/v1/sources/FRA/quarantine/", "/api/v1/sources/FRA/quarantine/1/"}


@pytest.mark.parametrize("path", sorted(OPERATIONS))
def test_an_unknown_parameter_is_a_400_that_names_it(small_codebook, caller, path):
    message = refused(caller(path), path, {"contries": "FRA"})
    assert message.startswith("unknown query parameter(s): 'contries' (this URL takes ")
    takes = OPERATIONS[path] or {"no query parameters"}
    assert all(name in message for name in takes)


@pytest.mark.parametrize("path", sorted(path for path, names in OPERATIONS.items() if names))
def test_a_parameter_given_twice_is_a_400(small_codebook, caller, path):
    name = sorted(OPERATIONS[path])[0]
    value = {"countries": "FRA", "page": "1", "kind": "weight", "section": "weights", "search": "x", "by": "ST004D01T",
             "compare": "average", "format": "json", "figures": "scores", "predictor": "ESCS", "statistic": "mean",
             "target": "READ"}[name]
    assert refused(caller(path), path, f"{name}={value}&{name}={value}") == f"'{name}' is given 2 times: give it once"


@pytest.mark.parametrize("path", WITH_COUNTRIES)
@pytest.mark.parametrize("value, message", [
    ("fra", "must be comma-separated upper-case country codes"),
    ("FRA,,ITA", "must be comma-separated upper-case country codes"),
    ("FRA,", "must be comma-separated upper-case country codes"),
    (" FRA", "must be comma-separated upper-case country codes"),
    ("FRA\n", "must be comma-separated upper-case country codes"),
    ("FRA;DROP TABLE", "must be comma-separated upper-case country codes"),
    ("FR\x00A", "must be comma-separated upper-case country codes"),
    ("Ü" * 4, "must be comma-separated upper-case country codes"),
    ("A" * 100_000, "must be comma-separated upper-case country codes"),
    (",".join(f"A{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(101)), "at most 100 at once"),
    ("ZZZ", "unknown country code(s): ZZZ"),
    ("FRA,QQQ,ZZZ", "unknown country code(s): QQQ, ZZZ"),
], ids=lambda value: repr(value)[:30])
def test_a_bad_country_list_is_a_400_that_says_why(small_codebook, client, path, value, message):
    assert message in refused(client, path, {"countries": value})


@pytest.mark.parametrize("path", WITH_COUNTRIES)
def test_a_good_country_list_is_answered(small_codebook, client, path):
    """The control of the refusals above: known codes, even without data yet, are answered (a distribution says 202
    while the analysis worker computes it)."""
    answered = {202} if "/distribution/" in path else {200}
    if path == "/api/v1/stream/":
        # Past every check of its parameters, the WSGI test client hears that the stream has its own server
        # (tests/pisa_site/test_stream.py opens it there).
        answered = {404}
    required = REQUIRED.get(path, {})
    assert client.get(path, required | {"countries": "FRA,ITA"}).status_code in answered
    # Empty: every country with data (none: nothing to compute).
    every_country = answered if path == "/api/v1/stream/" else {200}
    assert client.get(path, required | {"countries": ""}).status_code in every_country


LIST = "/api/v1/codebook/variables/"


@pytest.mark.parametrize("query, status, message", [
    ({"page": "0"}, 400, "page: Ensure this value is greater than or equal to 1."),
    ({"page": "-1"}, 400, "page: Ensure this value is greater than or equal to 1."),
    ({"page": "abc"}, 400, "page: A valid integer is required."),
    ({"page": "last"}, 400, "page: A valid integer is required."),
    ({"page": "1" + "0" * 30}, 400, "page: Ensure this value is less than or equal to 1000000."),
    ({"page": "2"}, 404, "page 2 is past the last page"),
    ({"kind": "colour"}, 400, 'kind: "colour" is not a valid choice.'),
    ({"section": "nope"}, 400, 'section: "nope" is not a valid choice.'),
    ({"search": "x" * 101}, 400, "search: Ensure this field has no more than 100 characters."),
    ({"search": "a\x00b"}, 400, "search: Null characters are not allowed."),
], ids=lambda value: repr(value)[:30])
def test_the_codebook_list_refuses_bad_filters_and_pages(small_codebook, client, query, status, message):
    assert refused(client, LIST, query, status) == message


def test_the_codebook_list_answers_good_filters(small_codebook, client):
    body = client.get(LIST, {"page": "1", "kind": "continuous", "section": "", "search": "economic"}).json()
    assert [variable["name"] for variable in body["results"]] == ["ESCS"]


@pytest.mark.parametrize("path, status", [
    ("/api/v1/codebook/variables/NOPE/", 404),
    ("/api/v1/codebook/variables/ES%00CS/", 404),  # PostgreSQL text cannot hold NUL: no such variable, not a 500
    (f"/api/v1/codebook/variables/{'X' * 5000}/", 404),
    ("/api/v1/variables/NOPE/distribution/", 404),
    ("/api/v1/variables/ES%00CS/distribution/", 404),
    (f"/api/v1/variables/{'X' * 5000}/distribution/", 404),
    ("/api/v1/countries/ZZZ/", 404),
    ("/api/v1/countries/F%00R/", 404),
    (f"/api/v1/countries/{'X' * 5000}/", 404),
    ("/api/v1/sources/ZZZ/quarantine/", 404),
    ("/api/v1/sources/F%00R/quarantine/", 404),
    (f"/api/v1/sources/{'X' * 5000}/quarantine/", 404),
    ("/api/v1/sources/ZZZ/quarantine/1/", 404),
], ids=lambda value: str(value)[:45])
def test_a_path_naming_nothing_is_a_404_with_a_message(small_codebook, client, admin_user, path, status):
    if "/quarantine/" in path:
        client.force_login(admin_user)
    message = refused(client, path, {}, status)
    assert len(message) < 200  # the name is quoted, cut short

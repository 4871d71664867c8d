"""GET /api/v1/sources/{code}/quarantine/: staff see each row a source could not load, with every reason, and one
row's 1,118 values exactly as the source holds them. Nobody else sees them (they are whole student responses)."""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from ingestion.extract import escape_copy_text
from ingestion.layout import raw_field_value
from ingestion.models import QuarantinedRow
from ingestion.pipeline import source_sync
from tests.conftest import codebook_editors_group

PASSWORD = "quarantine-reader-5521"


def list_url(code: str) -> str:
    return f"/api/v1/sources/{code}/quarantine/"


def detail_url(code: str, row_id: int) -> str:
    return f"/api/v1/sources/{code}/quarantine/{row_id}/"


def basic_auth(username: str, password: str = PASSWORD) -> dict:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


@pytest.fixture
def arg_with_bad_rows(source_db):
    """A text-style source (it can hold anything anywhere): three good rows, and two bad ones between them."""
    arg = source_db("ARG", style="text")
    arg.insert_students(2)
    [text_in_number] = arg.insert([arg.student(ESCS="abc")])
    arg.insert_students(1)
    [two_problems] = arg.insert([arg.student(ST004D01T=4, BELONG="high")])
    source_sync(source_id=arg.source.pk)
    return arg, text_in_number, two_problems


@pytest.fixture
def reader(django_user_model):
    """Staff allowed to view quarantined rows, and nothing else."""
    user = django_user_model.objects.create_user(username="reader", password=PASSWORD, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_quarantinedrow"))
    return user


def test_staff_list_a_sources_quarantined_rows_in_source_order_with_every_reason(arg_with_bad_rows, admin_client):
    arg, text_in_number, two_problems = arg_with_bad_rows

    response = admin_client.get(list_url("ARG"))

    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 2 and page["next"] is None and page["previous"] is None
    assert [row["source_row_id"] for row in page["results"]] == [text_in_number, two_problems]
    first, second = page["results"]
    assert first["reasons"] == ["ESCS: 'abc' is not a number"]
    assert sorted(second["reasons"]) == ["BELONG: 'high' is not a number", "ST004D01T: 4 is not a code of this variable"]
    stored = QuarantinedRow.objects.get(source=arg.source, source_row_id=text_in_number)
    assert first["cntstuid"] == stored.cntstuid and stored.cntstuid
    assert "values" not in first  # the list stays small: one row's values are at its own URL


def test_one_row_shows_all_its_values_as_the_source_holds_them(arg_with_bad_rows, admin_client):
    arg, text_in_number, _ = arg_with_bad_rows
    in_source = arg.execute("SELECT * FROM responses WHERE id = :id", id=text_in_number).mappings().one()

    row = admin_client.get(detail_url("ARG", text_in_number)).json()

    assert row["source_row_id"] == text_in_number and row["reasons"] == ["ESCS: 'abc' is not a number"]
    assert list(row["values"]) == [spec.name for spec in arg.variables]  # codebook order, all 1,118
    assert row["values"] == {spec.name: in_source[spec.name.lower()] for spec in arg.variables}
    assert row["values"]["ESCS"] == "abc" and "NA" in row["values"].values()  # the source's own spelling


def test_a_typed_sources_null_is_null_and_its_bad_code_is_shown(source_db, admin_client):
    alb = source_db("ALB")
    [row_id] = alb.insert([alb.student(ST004D01T=3, ESCS=None)])
    source_sync(source_id=alb.source.pk)

    values = admin_client.get(detail_url("ALB", row_id)).json()["values"]

    assert values["ST004D01T"] == "3" and values["ESCS"] is None and values["CNT"] == "ALB"


@pytest.mark.parametrize("text", ["plain", "tab\there", "new\nline", "back\\slash", "\\N", "cr\r", "mixed\\t\t\\"])
def test_a_raw_field_reads_back_as_the_text_the_source_had(text):
    assert raw_field_value(escape_copy_text(text)) == text


def test_null_reads_back_as_none():
    assert raw_field_value(escape_copy_text(None)) is None


def test_a_script_reads_the_quarantine_with_http_basic_credentials(arg_with_bad_rows, reader):
    response = Client().get(list_url("ARG"), **basic_auth("reader"))
    assert response.status_code == 200 and response.json()["count"] == 2


def test_anonymous_callers_get_a_401_that_says_how_to_log_in(arg_with_bad_rows, client):
    _, text_in_number, _ = arg_with_bad_rows
    for path in (list_url("ARG"), detail_url("ARG", text_in_number)):
        response = client.get(path)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Basic")
        assert response.json() == {"error": "Authentication credentials were not provided."}


@pytest.mark.parametrize("who", ["staff without the permission", "codebook editor", "not staff, with the permission",
                                 "wrong password", "inactive, with the permission"])
def test_everyone_else_is_refused(arg_with_bad_rows, django_user_model, who):
    user = django_user_model.objects.create_user(username="someone", password=PASSWORD,
                                                 is_staff=who != "not staff, with the permission",
                                                 is_active=not who.startswith("inactive"))
    if who == "codebook editor":
        user.groups.add(codebook_editors_group())
    if who.endswith("with the permission"):
        user.user_permissions.add(Permission.objects.get(codename="view_quarantinedrow"))

    response = Client().get(list_url("ARG"), **basic_auth("someone", "not-it" if who == "wrong password" else PASSWORD))

    assert response.status_code == (401 if who in ("wrong password", "inactive, with the permission") else 403)
    assert "error" in response.json() and "results" not in response.json()


def test_what_does_not_exist_is_a_404_that_says_so(arg_with_bad_rows, admin_client):
    arg, _, _ = arg_with_bad_rows
    loaded = min(arg.ids())  # a good row: it loaded, so it is not in quarantine

    assert admin_client.get(list_url("ZZZ")).json() == {"error": "no source with code 'ZZZ'"}
    missing_row = admin_client.get(detail_url("ARG", loaded))
    assert missing_row.status_code == 404 and f"row {loaded} of ARG is not in quarantine" in missing_row.json()["error"]
    assert admin_client.get(detail_url("ARG", 2**70)).status_code == 404  # beyond bigint: not a 500
    not_a_number = admin_client.get("/api/v1/sources/ARG/quarantine/abc/")
    assert not_a_number.status_code == 404 and "ids are whole numbers" in not_a_number.json()["error"]
    past = admin_client.get(list_url("ARG"), {"page": 2})
    assert past.status_code == 404 and past.json() == {"error": "page 2 is past the last page"}


def test_bad_parameters_are_a_400(arg_with_bad_rows, admin_client):
    assert admin_client.get(list_url("ARG"), {"page": 0}).status_code == 400
    assert "unknown query parameter(s): 'source'" in admin_client.get(list_url("ARG"), {"source": "ALB"}).json()["error"]


def test_a_page_holds_at_most_50_rows(source_db, admin_client):
    arg = source_db("ARG", style="text")
    arg.insert([arg.student(ESCS="bad") for _ in range(51)])
    source_sync(source_id=arg.source.pk)

    first = admin_client.get(list_url("ARG")).json()
    second = admin_client.get(first["next"]).json()

    assert first["count"] == 51 and len(first["results"]) == 50 and len(second["results"]) == 1

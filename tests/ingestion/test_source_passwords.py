"""A source URL's password never shows: not in the logs of a failing sync, the sources API, the admin's list or
change page (whose form keeps it without displaying it), nor in an error message quoting the URL.

The sources here are real PostgreSQL URLs to a port nothing listens on, so every sync really fails to connect."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from ingestion.models import Source, SourceState
from ingestion.pipeline import source_sync
from ingestion.services import source_register
from ingestion.tasks import sync_source
from pisa_site.embedded import free_port
from tests.conftest import codebook_csv_path

PASSWORD = "Tr0ub4dor-s3cret"


def unreachable_url(password: str = PASSWORD, **parts: str) -> str:
    host, port = parts.get("host", "127.0.0.1"), parts.get("port", str(free_port()))
    return f"postgresql+psycopg2://{parts.get('user', 'reader')}:{password}@{host}:{port}/{parts.get('db', 'pisa_aut')}"


@pytest.fixture
def codebook():
    """A sync reads the codebook's variables even when its source is down: skipped, saying why, without it."""
    return codebook_csv_path()


@pytest.fixture
def failing_source(db, codebook):
    """A registered source whose server is down: one sync has failed and recorded why."""
    source = source_register(code="AUT", name="Austria", url=unreachable_url())
    result = source_sync(source_id=source.pk)
    assert result.error.startswith("OperationalError: connection to server at")
    return source


def test_a_failing_sync_never_logs_the_password(db, codebook, caplog):
    source = source_register(code="AUT", name="Austria", url=unreachable_url())
    with caplog.at_level(logging.DEBUG):
        source_sync(source_id=source.pk)
        SourceState.objects.filter(source=source).update(retry_at=None)
        sync_source.apply(args=[source.pk], kwargs={"code": "AUT"})  # the Celery task's own log line, run eagerly
    failures = [record.getMessage() for record in caplog.records if "unavailable" in record.getMessage()
                or "failed" in record.getMessage()]
    assert len(failures) >= 3, [record.getMessage() for record in caplog.records]  # pipeline twice, the task once
    assert all("Connection refused" in message for message in failures)
    assert PASSWORD not in caplog.text
    state = SourceState.objects.get(source=source)
    assert state.consecutive_failures == 2 and "Connection refused" in state.last_error
    assert PASSWORD not in state.last_error


def test_the_sources_api_shows_the_url_and_the_error_without_the_password(failing_source, client):
    source_register(code="BEL", name="Belgium", url=unreachable_url("", user="reader") + f"?password={PASSWORD}")
    response = client.get("/api/v1/sources/")
    assert response.status_code == 200
    statuses = {status["code"]: status for status in response.json()}
    assert statuses["AUT"]["url"].startswith("postgresql+psycopg2://reader:***@127.0.0.1:")
    assert statuses["BEL"]["url"].endswith("/pisa_aut?password=***")  # psycopg2 takes a password there too
    assert "Connection refused" in statuses["AUT"]["last_error"]
    assert PASSWORD not in response.content.decode()


def test_the_admin_list_and_change_page_never_show_the_password(failing_source, admin_client):
    changelist = admin_client.get(reverse("admin:ingestion_source_changelist"))
    assert changelist.status_code == 200
    assert "reader:***@127.0.0.1" in changelist.content.decode() and PASSWORD not in changelist.content.decode()

    page = admin_client.get(reverse("admin:ingestion_source_change", args=[failing_source.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and "Connection refused" in html  # the state inline, with its last error
    assert f'value="{failing_source.safe_url}"' in html
    assert PASSWORD not in html


def change_form_data(response) -> dict:
    """The POST an unchanged submit of this admin change page sends: the form's and its inlines' current values."""
    data = {}
    for form in [response.context["adminform"].form,
                 *(inline.formset.management_form for inline in response.context["inline_admin_formsets"]),
                 *(form for inline in response.context["inline_admin_formsets"] for form in inline.formset.forms)]:
        for field in form:
            value = field.value()
            if value is None:
                continue
            if isinstance(value, bool):
                if value:
                    data[field.html_name] = "on"
            else:
                data[field.html_name] = value
    return {**data, "_save": "Save"}


def admin_save(admin_client, source: Source, **changes: str):
    url = reverse("admin:ingestion_source_change", args=[source.pk])
    return admin_client.post(url, {**change_form_data(admin_client.get(url)), **changes})


def test_saving_the_page_as_shown_keeps_the_stored_password(failing_source, admin_client):
    stored = failing_source.url
    response = admin_save(admin_client, failing_source, name="Österreich")
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    failing_source.refresh_from_db()
    assert (failing_source.name, failing_source.url) == ("Österreich", stored)


def test_the_kept_password_follows_a_new_database_but_never_another_server(failing_source, admin_client):
    shown = failing_source.safe_url
    assert admin_save(admin_client, failing_source, url=shown.replace("/pisa_aut", "/pisa_aut2")).status_code == 302
    failing_source.refresh_from_db()
    assert failing_source.url == unreachable_url(port=str(failing_source.url.split(":")[-1].split("/")[0]),
                                                 db="pisa_aut2")

    elsewhere = admin_save(admin_client, failing_source, url=shown.replace("127.0.0.1", "collector.example"))
    assert elsewhere.status_code == 200  # the form again, with the reason
    assert "type the password" in str(elsewhere.context["adminform"].form.errors["url"])
    failing_source.refresh_from_db()
    assert "collector.example" not in failing_source.url

    typed = unreachable_url("n3w-passw0rd", host="collector.example", port="5432")
    assert admin_save(admin_client, failing_source, url=typed).status_code == 302
    failing_source.refresh_from_db()
    assert failing_source.url == typed


def test_a_password_with_a_bare_at_sign_is_refused_and_never_half_shown(db, codebook, client, caplog):
    """`reader:pass@word-9f2@host` reads as password `pass` at host `word-9f2@host`: the driver would quote
    `word-9f2` back in its error. Registering it is refused; one already stored is not even tried."""
    url = unreachable_url("pass@word-9f2")
    with pytest.raises(ValidationError, match="percent-encoded, as %40"):
        source_register(code="AUT", name="Austria", url=url)
    legacy = Source.objects.create(code="AUT", name="Austria", url=url)  # from before the check

    with caplog.at_level(logging.DEBUG):
        result = source_sync(source_id=legacy.pk)
    assert result.error.startswith("bad source URL: the password (or user name) holds an '@'")
    assert "bad source URL" in caplog.text and "word-9f2" not in caplog.text
    body = client.get("/api/v1/sources/").content.decode()
    assert "reader:***@127.0.0.1" in body
    assert "word-9f2" not in body and "word-9f2" not in legacy.safe_url


def test_a_registration_error_never_quotes_the_url(db):
    with pytest.raises(ValidationError) as error:
        source_register(code="AUT", name="Austria", url=f"postgresql://reader:{PASSWORD}@db.example:notaport/x")
    assert PASSWORD not in str(error.value)

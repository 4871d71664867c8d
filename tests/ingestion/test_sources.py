"""The source registry: services, the `sources` command and the admin list, which never shows a password."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from ingestion.models import Source
from ingestion.selectors import source_get, source_list
from ingestion.services import SourceNotFoundError, source_register, source_set_enabled

SECRET_URL = "postgresql://reader:s3cret-pw@db.example:5432/pisa_alb"


def test_registering_twice_updates_the_source_and_keeps_an_operators_switch(db):
    source_register(code="ALB", name="Albania", url=SECRET_URL)
    source_set_enabled(code="ALB", enabled=False)

    source = source_register(code="ALB", name="Albania", url="sqlite:////tmp/alb.db", poll_interval_seconds=5)

    assert Source.objects.count() == 1
    assert source.url == "sqlite:////tmp/alb.db" and source.poll_interval_seconds == 5
    assert not source.enabled, "re-registering must not switch a disabled source back on"
    assert source_register(code="ARG", name="Argentina", url=SECRET_URL).enabled


def test_bad_registrations_are_refused_with_the_reason(db):
    with pytest.raises(ValidationError) as error:
        source_register(code="alb", name="Albania", url="not a url")
    assert set(error.value.message_dict) == {"code", "url"}
    assert not Source.objects.exists()


def test_selectors_filter_by_switch_and_name_a_missing_code(db):
    source_register(code="ALB", name="Albania", url=SECRET_URL)
    source_register(code="ARG", name="Argentina", url=SECRET_URL, enabled=False)
    assert [source.code for source in source_list(enabled=True)] == ["ALB"]
    assert [source.code for source in source_list()] == ["ALB", "ARG"]
    with pytest.raises(SourceNotFoundError, match="XYZ"):
        source_get(code="XYZ")


def test_the_sources_command_adds_lists_disables_and_enables(db, capsys):
    call_command("sources", "add", "aut", SECRET_URL, "--name", "Austria", "--poll-interval", "2")
    call_command("sources", "disable", "AUT")
    call_command("sources", "list")
    listing = capsys.readouterr().out
    assert "AUT" in listing and "disabled" in listing and "Austria" in listing
    assert "s3cret-pw" not in listing and "***" in listing

    call_command("sources", "enable", "AUT")
    assert Source.objects.get(code="AUT").enabled
    with pytest.raises(CommandError, match="url"):
        call_command("sources", "add", "BEL", "::nonsense::")
    with pytest.raises(CommandError, match="no source"):
        call_command("sources", "enable", "XYZ")


def test_the_admin_list_shows_the_url_without_its_password(admin_client, db):
    source_register(code="ALB", name="Albania", url=SECRET_URL)

    page = admin_client.get("/admin/ingestion/source/").content.decode()

    assert "db.example" in page and "s3cret-pw" not in page

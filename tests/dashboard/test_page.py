"""The page and its static files, without a browser: what Django serves and what collectstatic collects."""

from __future__ import annotations

import json

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import override_settings

from codebook.selectors import country_names
from codebook.services import codebook_load_file
from dashboard.finders import PACKAGE_ASSETS
from dashboard.selectors import MAP_POINTS, country_map_codes
from tests.conftest import codebook_csv_path


@pytest.fixture
def shared_codebook(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        codebook_load_file(path=codebook_csv_path())


def page_config(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="dashboard-config" type="application/json">') + len(
        '<script id="dashboard-config" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_the_dashboard_is_served_at_the_root_with_local_scripts_only(client, shared_codebook):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<script src="/static/dashboard/lib/plotly.min.js"' in html
    assert '<script type="module" src="/static/dashboard/js/main.js"' in html
    assert "http://" not in html.replace("http://127.0.0.1", "") and "https://" not in html
    config = page_config(response)
    assert config["urls"]["metrics"] == "/api/v1/metrics/"
    assert config["urls"]["sources"] == "/api/v1/sources/"
    assert config["urls"]["distribution"] == "/api/v1/variables/__name__/distribution/"
    assert config["pollSeconds"] == 1


def test_packaged_assets_are_found_and_served(client, db):
    for static_path in PACKAGE_ASSETS:
        assert finders.find(static_path), static_path
    response = client.get("/static/dashboard/lib/WorldMap.json")
    assert response.status_code == 200
    topology = json.loads(b"".join(response.streaming_content))
    assert topology["type"] == "Topology"
    head = b"".join(client.get("/static/dashboard/lib/plotly.min.js").streaming_content)[:200]
    assert b"plotly.js v" in head


def test_collectstatic_copies_the_packaged_assets(tmp_path):
    storages = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    with override_settings(STATIC_ROOT=tmp_path, STORAGES=storages):
        call_command("collectstatic", interactive=False, verbosity=0)
    for static_path in PACKAGE_ASSETS:
        assert (tmp_path / static_path).stat().st_size > 0, static_path
    assert (tmp_path / "dashboard" / "js" / "main.js").is_file()


def test_every_pisa_participant_is_on_the_world_map(shared_codebook):
    """Each CNT is either a polygon of the packaged map (by its ISO numeric code, CNTRYID) or one of MAP_POINTS."""
    topology = json.loads(open(finders.find("dashboard/lib/WorldMap.json")).read())
    polygons = {geometry["id"] for geometry in topology["objects"]["subunits"]["geometries"]}
    codes = country_map_codes()
    assert (codes["FRA"], codes["TAP"], codes["HUN"]) == (250, 158, 348)  # ISO 3166 numeric; TAP is Taiwan's
    participants = set(country_names())
    assert len(participants) == 82
    assert {code for code in participants if codes.get(code) in polygons} | set(MAP_POINTS) == participants
    assert set(MAP_POINTS) <= participants


def test_a_label_edit_does_not_move_a_country_on_the_map(shared_codebook):
    from codebook.models import ValueLabel
    from codebook.services import value_label_edit

    france = ValueLabel.objects.get(variable__name="CNT", value="FRA")
    value_label_edit(value_label=france, label="La France", user=None)
    assert country_map_codes()["FRA"] == 250


def test_bootstrap_prints_the_dashboard_url(db, capsys, monkeypatch):
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "bootstrap-test-password")
    call_command("bootstrap")
    assert "Dashboard   http://127.0.0.1:8123/" in capsys.readouterr().out

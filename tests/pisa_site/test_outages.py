"""Every API failure caused by a service being down is a JSON 503 with the reason, never Django's HTML page,
with DEBUG on or off."""

import pytest
from django.db import connections
from django.test import override_settings

from metrics import cache as metrics_cache
from pisa_site.embedded import free_port

POLLED = ["/api/v1/metrics/", "/api/forage/escs", "/api/forage/submissions", "/api/v1/countries/",
          "/api/v1/countries/ALB/", "/api/v1/variables/ESCS/distribution/?countries=ALB"]


@pytest.fixture(params=[True, False], ids=["DEBUG on", "DEBUG off"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


@pytest.fixture
def redis_down(settings):
    caches = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}
    with override_settings(CACHES=caches):
        metrics_cache.versions_forget()
        yield
    metrics_cache.versions_forget()


@pytest.mark.parametrize("url", POLLED)
def test_redis_down_is_a_json_503_with_the_reason(db, client, debug, redis_down, url):
    response = client.get(url)
    assert response.status_code == 503, response.content[:200]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["service"] == "redis" and "unavailable" in body["error"]
    assert "Connection" in body["reason"]
    assert response["Retry-After"]


def test_the_database_down_is_a_json_503_too(db, client, debug, monkeypatch):
    # A real failed connection: a database wrapper pointed at a port nothing listens on.
    dead = connections.create_connection("default")
    dead.settings_dict = {**dead.settings_dict, "PORT": str(free_port()), "HOST": "127.0.0.1"}

    def statuses():
        dead.ensure_connection()

    monkeypatch.setattr("ingestion.apis.source_statuses", statuses)
    from ingestion.apis import rendered_statuses_forget

    rendered_statuses_forget()
    response = client.get("/api/v1/sources/")
    assert response.status_code == 503
    assert response.json()["service"] == "database"


def test_a_bug_is_still_a_500_not_dressed_as_an_outage(db, client, settings, monkeypatch):
    settings.DEBUG = False

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("metrics.selectors.view_lookup", broken)
    client.raise_request_exception = False
    assert client.get("/api/v1/metrics/").status_code == 500

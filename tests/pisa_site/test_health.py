"""GET /api/v1/health/ reports each service the product depends on."""

import pytest
from django.test import override_settings

from pisa_site.embedded import free_port

pytestmark = pytest.mark.django_db

HEALTH_URL = "/api/v1/health/"


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_all_services_up_answers_200(client):
    response = client.get(HEALTH_URL)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["services"]) == {"database", "redis", "broker"}
    assert all(state["ok"] for state in body["services"].values())
    assert response["Cache-Control"] == "no-store"


def test_redis_down_answers_503_and_names_it(client, settings):
    caches = {"default": {**settings.CACHES["default"], "LOCATION": dead_redis_url()}}
    with override_settings(CACHES=caches):
        response = client.get(HEALTH_URL)
    assert response.status_code == 503
    services = response.json()["services"]
    assert services["redis"]["ok"] is False
    assert "Connection" in services["redis"]["error"]
    assert services["database"]["ok"] and services["broker"]["ok"]


def test_broker_down_answers_503(client, settings):
    settings.CELERY_BROKER_URL = dead_redis_url()
    response = client.get(HEALTH_URL)
    assert response.status_code == 503
    assert response.json()["services"]["broker"]["ok"] is False

"""GET /api/v1/health/: is each service the product depends on answering? 200 if all are, 503 if one is not."""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from pisa_site.api import DRF_QUERY_PARAMETERS, ErrorSerializer, query_problem
from pisa_site.logs import text_passwords_hidden

PROBE_TIMEOUT_SECONDS = 2
SERVICES = ("database", "redis", "broker")
_PROBE = {"type": "object", "required": ["ok"], "properties": {
    "ok": {"type": "boolean"},
    "latency_ms": {"type": "number", "description": "when ok"},
    "error": {"type": "string", "description": "when not ok: the exception, as the client library put it"},
}}
HEALTH_SCHEMA = {"type": "object", "required": ["status", "services", "figures"], "properties": {
    "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"],
               "description": "degraded: every service answers, but some country's figures are served stale"},
    "services": {"type": "object", "required": list(SERVICES), "properties": dict.fromkeys(SERVICES, _PROBE)},
    "figures": {"type": "object", "required": ["stale"], "properties": {"stale": {
        "type": "object", "additionalProperties": {"type": "string"},
        "description": "country -> why its last refresh failed (its last good figures are served meanwhile)"}}},
}}

# What an app reports as degraded without being down: callables returning {name: reason}, registered by the apps
# (their AppConfig.ready), so that this module imports none of them.
_stale_figures_sources: list = []


def stale_figures_source_register(source) -> None:
    if source not in _stale_figures_sources:
        _stale_figures_sources.append(source)


def _stale_figures() -> dict[str, str]:
    stale: dict[str, str] = {}
    for source in _stale_figures_sources:
        stale.update(source())
    return stale


def _probe(check) -> dict:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure means "down"; the message tells the operator why
        return {"ok": False, "error": text_passwords_hidden(f"{type(exc).__name__}: {exc}")}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _ping_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=PROBE_TIMEOUT_SECONDS)
    try:
        client.ping()
    finally:
        client.close()


def services_health() -> dict[str, dict]:
    return {
        "database": _probe(_check_database),
        "redis": _probe(lambda: _ping_redis(settings.CACHES["default"]["LOCATION"])),
        "broker": _probe(lambda: _ping_redis(settings.CELERY_BROKER_URL)),
    }


class HealthView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses={
            200: OpenApiResponse(HEALTH_SCHEMA, description="Every service answers"),
            503: OpenApiResponse(HEALTH_SCHEMA, description="A service does not answer (its error says why)"),
            400: OpenApiResponse(ErrorSerializer, description="A query parameter (it takes none)"),
        }
    )
    def get(self, request):
        if problem := query_problem(request.query_params, DRF_QUERY_PARAMETERS):
            return Response({"error": problem}, status=400, headers={"Cache-Control": "no-store"})
        services = services_health()
        healthy = all(state["ok"] for state in services.values())
        stale = _stale_figures() if services["database"]["ok"] else {}
        return Response(
            {"status": "unavailable" if not healthy else "degraded" if stale else "ok", "services": services,
             "figures": {"stale": stale}},
            status=200 if healthy else 503,
            headers={"Cache-Control": "no-store"},
        )

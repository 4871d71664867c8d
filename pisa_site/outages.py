"""The API's one answer when a service it depends on is down: a JSON 503 with the reason, never an HTML page.

Views and selectors let connection errors rise; this middleware turns those of Redis and of the database into
`503 {"error": ..., "service": ...}` with `Retry-After`, with DEBUG on or off (Django's debug page, or its plain 500,
would otherwise answer a dashboard that expects JSON). Other exceptions are bugs and keep Django's handling.
"""

from __future__ import annotations

import logging

import redis
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse

from pisa_site.logs import text_passwords_hidden

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
RETRY_AFTER_SECONDS = 5
# Which service an exception means is down. A DatabaseError that is not about the connection (a bad query) is a bug.
OUTAGES: tuple[tuple[type[BaseException], str], ...] = (
    (redis.exceptions.ConnectionError, "redis"),
    (redis.exceptions.TimeoutError, "redis"),
    (redis.exceptions.BusyLoadingError, "redis"),
    (OperationalError, "database"),
    (InterfaceError, "database"),
)


def service_down(exc: BaseException) -> str | None:
    """The service whose outage `exc` is, or None when it is not an outage."""
    for kind, service in OUTAGES:
        if isinstance(exc, kind):
            return service
    return None


def outage_response(service: str, exc: BaseException) -> JsonResponse:
    reason = text_passwords_hidden(f"{type(exc).__name__}: {exc}")[:300]
    response = JsonResponse({"error": f"the {service} is unavailable; try again shortly", "service": service,
                             "reason": reason}, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    return response


class ServiceOutageMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exc):
        if not request.path.startswith(API_PREFIX):
            return None
        service = service_down(exc)
        if service is None:
            return None
        logger.warning("%s %s: %s unavailable (%s)", request.method, request.path, service, type(exc).__name__)
        return outage_response(service, exc)


__all__ = ["ServiceOutageMiddleware", "outage_response", "service_down"]

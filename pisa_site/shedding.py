"""Graceful overload for the threaded web tier: a request that waited too long for a thread is answered 503 at once.

Beyond capacity, gunicorn's gthread worker queues every readable connection for its threads without bound; each
request then waits longer than the one before, until every viewer times out (measured before this: 55 % of requests
timing out with 500 dashboards). `SheddingThreadWorker` notes when each connection was queued for a thread, and
`shed_when_queued_too_long` (around the WSGI application, before Django) answers a request whose wait passed
WEB_SHED_QUEUE_MS with `503` and a jittered `Retry-After` in a few microseconds. The queue drains at that speed, the
requests that did not wait long are served as usual, and the dashboard waits as told before it asks again.

Never shed: the health check (operators and load balancers must see the process answering, which is what it is
doing) and the admin (a few staff, whose edits matter most on such a day). Gunicorn is told to use the worker by the
Procfile: `--worker-class pisa_site.shedding.SheddingThreadWorker`. Under another server (runserver, a test
client), nothing is ever shed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

from django.conf import settings
from gunicorn.workers.gthread import ThreadWorker

logger = logging.getLogger(__name__)

NEVER_SHED_PREFIXES = ("/api/v1/health/", "/admin/")
LOG_EVERY_SECONDS = 10.0
BODY = json.dumps({"error": "the server is too busy to answer now: ask again after Retry-After seconds"}).encode()

_waits = threading.local()  # the wait of the request this thread is serving


class SheddingThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, noting how long each request waited in its queue for a thread."""

    def enqueue_req(self, conn):
        conn.queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn):
        _waits.seconds = time.monotonic() - getattr(conn, "queued_at", time.monotonic())
        return super().handle(conn)


def queue_wait_seconds() -> float:
    """How long the request this thread serves waited for it (0 outside SheddingThreadWorker)."""
    return getattr(_waits, "seconds", 0.0)


class _ShedCount:
    """Requests shed by this process since the last log line: the first at once, then at most every
    LOG_EVERY_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count, self.since = 0, time.monotonic() - LOG_EVERY_SECONDS

    def add(self, waited: float) -> None:
        with self.lock:
            self.count += 1
            now = time.monotonic()
            if now - self.since < LOG_EVERY_SECONDS:
                return
            count, seconds, self.count, self.since = self.count, now - self.since, 0, now
        logger.warning("overloaded: %d request(s) answered 503 in the last %.0f s (the last had waited %.0f ms for a "
                       "thread; WEB_SHED_QUEUE_MS=%d)", count, seconds, waited * 1000, settings.WEB_SHED_QUEUE_MS)


def shed_when_queued_too_long(application):
    """The WSGI application, answering 503 + Retry-After instead when its request waited over WEB_SHED_QUEUE_MS."""
    limit = settings.WEB_SHED_QUEUE_MS / 1000
    retry_after = settings.WEB_RETRY_AFTER_SECONDS
    allowed_origins = frozenset(settings.CORS_ALLOWED_ORIGINS)
    shed = _ShedCount()

    def shedding_application(environ, start_response):
        waited = queue_wait_seconds()
        if limit <= 0 or waited <= limit or environ.get("PATH_INFO", "").startswith(NEVER_SHED_PREFIXES):
            return application(environ, start_response)
        shed.add(waited)
        # Jittered between one and two periods: viewers shed together do not all come back in the same second.
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY))),
                   ("Retry-After", str(random.randint(retry_after, 2 * retry_after))), ("Cache-Control", "no-store")]
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin in allowed_origins:  # as django-cors-headers would: a cross-origin page reads the 503
            headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        start_response("503 Service Unavailable", headers)
        return [BODY]

    return shedding_application

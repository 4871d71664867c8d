"""Graceful overload for the web tier: a request that would wait too long for Django is answered 503 at once.

The web server is granian (Rust HTTP, the Procfile's `web`): its WSGI worker hands each request to one of
WEB_THREADS Python threads. Past that, requests wait inside granian, where nothing in Python can see how long, and
beyond capacity every one of them times out. So the threads are many (64) and cheap, and `AdmissionGate` lets only
WEB_ACTIVE_REQUESTS (8) of them into Django at once, where more would only share the GIL. The rest wait at the gate,
in sight: one that waited past WEB_SHED_QUEUE_MS, or that finds the gate's queue full (every thread but a spare few
waiting), is answered `503` with a jittered `Retry-After` in microseconds, before Django runs. The spare threads
stay free to shed, so granian's own queue stays short and the requests that did not wait long are served as usual;
the dashboard waits as told before it asks again.

Never shed, and not gated: the health check (operators and load balancers must see the process answering, which is
what it is doing) and the admin (a few staff, whose edits matter most on such a day). Under another WSGI server
(runserver) the gate applies the same way; Django's test client does not go through pisa_site/wsgi.py.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

from django.conf import settings

logger = logging.getLogger(__name__)

NEVER_SHED_PREFIXES = ("/api/v1/health/", "/admin/")
LOG_EVERY_SECONDS = 10.0
# Threads kept out of the gate's queue, so that a request arriving when the queue is full finds a thread to be
# shed on instead of waiting unseen inside the server.
SPARE_THREADS = 8
BODY = json.dumps({"error": "the server is too busy to answer now: ask again after Retry-After seconds"}).encode()


class AdmissionGate:
    """At most `active` requests inside at once; up to `max_waiting` more wait, each at most `limit` seconds."""

    def __init__(self, *, active: int, max_waiting: int, limit: float) -> None:
        self.slots = threading.BoundedSemaphore(active)
        self.max_waiting, self.limit = max(max_waiting, 0), limit
        self.lock = threading.Lock()
        self.waiting = 0

    def enter(self) -> float | None:
        """Seconds waited to get in, or None when refused (the queue is full, or the wait passed the limit)."""
        if self.slots.acquire(blocking=False):
            return 0.0
        with self.lock:
            if self.waiting >= self.max_waiting:
                return None
            self.waiting += 1
        started = time.monotonic()
        try:
            admitted = self.slots.acquire(timeout=self.limit)
        finally:
            with self.lock:
                self.waiting -= 1
        return time.monotonic() - started if admitted else None

    def leave(self) -> None:
        self.slots.release()


class _ShedCount:
    """Requests shed by this process since the last log line: the first at once, then at most every
    LOG_EVERY_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count, self.since = 0, time.monotonic() - LOG_EVERY_SECONDS

    def add(self) -> None:
        with self.lock:
            self.count += 1
            now = time.monotonic()
            if now - self.since < LOG_EVERY_SECONDS:
                return
            count, seconds, self.count, self.since = self.count, now - self.since, 0, now
        logger.warning("overloaded: %d request(s) answered 503 in the last %.0f s (waited over WEB_SHED_QUEUE_MS=%d, "
                       "or found every web thread waiting; WEB_ACTIVE_REQUESTS=%d, WEB_THREADS=%d)", count, seconds,
                       settings.WEB_SHED_QUEUE_MS, settings.WEB_ACTIVE_REQUESTS, settings.WEB_THREADS)


def shed_when_queued_too_long(application):
    """The WSGI application behind an `AdmissionGate` sized by the settings, answering 503 + Retry-After to a request
    the gate refuses. WEB_SHED_QUEUE_MS=0: no gate, nothing shed."""
    limit = settings.WEB_SHED_QUEUE_MS / 1000
    if limit <= 0:
        return application
    gate = AdmissionGate(active=settings.WEB_ACTIVE_REQUESTS, limit=limit,
                         max_waiting=settings.WEB_THREADS - settings.WEB_ACTIVE_REQUESTS - SPARE_THREADS)
    retry_after = settings.WEB_RETRY_AFTER_SECONDS
    allowed_origins = frozenset(settings.CORS_ALLOWED_ORIGINS)
    shed = _ShedCount()

    def shedding_application(environ, start_response):
        if environ.get("PATH_INFO", "").startswith(NEVER_SHED_PREFIXES):
            return application(environ, start_response)
        if gate.enter() is not None:
            try:  # Django's work is done when it returns; the server then only writes out the body
                return application(environ, start_response)
            finally:
                gate.leave()
        shed.add()
        # Jittered between one and two periods: viewers shed together do not all come back in the same second.
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY))),
                   ("Retry-After", str(random.randint(retry_after, 2 * retry_after))), ("Cache-Control", "no-store")]
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin in allowed_origins:  # as django-cors-headers would: a cross-origin page reads the 503
            headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        start_response("503 Service Unavailable", headers)
        return [BODY]

    return shedding_application

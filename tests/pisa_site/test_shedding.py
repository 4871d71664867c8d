"""Overload: a request that would wait too long for its turn in Django is answered 503 with Retry-After at once,
instead of making every viewer time out; the health check and the admin never are (pisa_site/shedding.py)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest
from django.test import override_settings

from pisa_site import shedding
from pisa_site.embedded import free_port
from tests.conftest import ROOT, subprocess_env, wait_until

STARTUP_SECONDS = 30


HELD = "/api/v1/metrics/held/"


class Answers:
    """A WSGI application standing in for Django, recording what reached it; a request for HELD stays inside until
    `hold` is set."""

    def __init__(self):
        self.paths = []
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Event()

    def __call__(self, environ, start_response):
        self.paths.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == HELD:
            self.inside.set()
            self.hold.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"served"]


def call(application, path: str, *, origin: str | None = None):
    captured = {}

    def start_response(status, headers):
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(application({"PATH_INFO": path, **({"HTTP_ORIGIN": origin} if origin else {})},
                                start_response))
    return captured["status"], captured["headers"], body


class Occupied:
    """A request held inside `django` on a thread of its own, so that the gate's one slot is taken."""

    def __init__(self, application, django: Answers):
        self.django = django
        django.hold.clear()
        self.thread = threading.Thread(target=call, args=(application, HELD))

    def __enter__(self):
        self.thread.start()
        assert self.django.inside.wait(5)
        return self

    def __exit__(self, *exc):
        self.django.hold.set()
        self.thread.join(5)


def test_the_gate_admits_its_slots_then_queues_then_refuses():
    gate = shedding.AdmissionGate(active=2, max_waiting=1, limit=0.05)
    assert gate.enter() == 0.0 and gate.enter() == 0.0
    waits = []
    waiter = threading.Thread(target=lambda: waits.append(gate.enter()))
    waiter.start()
    assert wait_until(lambda: gate.waiting == 1, timeout=5)
    assert gate.enter() is None  # the queue is full: refused at once
    waiter.join(5)
    assert waits == [None]  # nobody left within the limit: refused after it
    gate.leave()
    assert gate.enter() == 0.0


def test_a_full_queue_refuses_at_once_not_after_the_limit():
    gate = shedding.AdmissionGate(active=1, max_waiting=0, limit=5.0)
    assert gate.enter() == 0.0
    started = time.monotonic()
    assert gate.enter() is None
    assert time.monotonic() - started < 1.0


def test_a_waiting_request_gets_in_when_a_slot_frees_within_the_limit():
    gate = shedding.AdmissionGate(active=1, max_waiting=1, limit=5.0)
    assert gate.enter() == 0.0
    waits = []
    waiter = threading.Thread(target=lambda: waits.append(gate.enter()))
    waiter.start()
    assert wait_until(lambda: gate.waiting == 1, timeout=5)
    gate.leave()
    waiter.join(5)
    assert len(waits) == 1 and 0 < waits[0] < 5 and gate.waiting == 0


# One request at a time in Django and no thread to spare for waiting: a second request is shed at once.
ONE_SLOT_NO_QUEUE = dict(WEB_SHED_QUEUE_MS=500, WEB_ACTIVE_REQUESTS=1, WEB_THREADS=1 + shedding.SPARE_THREADS)


@override_settings(**ONE_SLOT_NO_QUEUE, WEB_RETRY_AFTER_SECONDS=5, CORS_ALLOWED_ORIGINS=["https://forage.example"])
def test_a_request_the_gate_refuses_gets_a_503_with_a_jittered_retry_after_and_never_reaches_django():
    django = Answers()
    application = shedding.shed_when_queued_too_long(django)
    assert call(application, "/api/v1/metrics/")[0] == "200 OK"
    retry_afters = set()
    with Occupied(application, django):
        for _ in range(50):
            status, headers, body = call(application, "/api/v1/metrics/")
            assert status.startswith("503")
            assert headers["Cache-Control"] == "no-store" and "Access-Control-Allow-Origin" not in headers
            assert "busy" in json.loads(body)["error"]
            retry_afters.add(int(headers["Retry-After"]))
        _, headers, _ = call(application, "/api/v1/metrics/", origin="https://forage.example")
        assert headers["Access-Control-Allow-Origin"] == "https://forage.example"  # the cross-origin page reads it
        _, headers, _ = call(application, "/api/v1/metrics/", origin="https://elsewhere.example")
        assert "Access-Control-Allow-Origin" not in headers
    assert retry_afters <= set(range(5, 11)) and len(retry_afters) > 1  # spread: viewers do not return together
    assert django.paths == ["/api/v1/metrics/", HELD]
    assert call(application, "/api/v1/metrics/")[0] == "200 OK"  # the slot is free again


@override_settings(**ONE_SLOT_NO_QUEUE)
def test_health_and_admin_are_never_shed():
    django = Answers()
    application = shedding.shed_when_queued_too_long(django)
    with Occupied(application, django):
        for path in ("/api/v1/health/", "/admin/codebook/variable/"):
            assert call(application, path)[0] == "200 OK"
    assert django.paths[-2:] == ["/api/v1/health/", "/admin/codebook/variable/"]


@override_settings(WEB_SHED_QUEUE_MS=0)
def test_a_limit_of_zero_never_sheds():
    django = Answers()
    assert shedding.shed_when_queued_too_long(django) is django


# One request in Django at a time, on a few threads: three may wait, the others are shed.
FEW_THREADS = {"WEB_THREADS": "12", "WEB_ACTIVE_REQUESTS": "1"}


def procfile_web_command(port: int) -> list[str]:
    """The Procfile's web line with one process of FEW_THREADS on `port`, other variables at their defaults."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    line = line.partition(":")[2].replace("$PORT", str(port)).replace("${WEB_WORKERS:-2}", "1")
    line = line.replace("${WEB_THREADS:-64}", FEW_THREADS["WEB_THREADS"])
    return shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line))


def get(port: int, path: str) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_the_procfiles_web_server_sheds_a_flood_quickly_and_keeps_answering_health(tmp_path):
    port = free_port()
    command = procfile_web_command(port)
    assert command[0] == "granian" and "pisa_site.wsgi:application" in command
    bin_dir = os.path.dirname(os.sys.executable)
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([f"{bin_dir}/{command[0]}", *command[1:]], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env=subprocess_env(DEBUG="1", WEB_SHED_QUEUE_MS="20", WEB_RETRY_AFTER_SECONDS="3", **FEW_THREADS,
                                                     PATH=f"{bin_dir}:{os.environ['PATH']}"))
    try:
        assert wait_until(lambda: _answers(port), timeout=STARTUP_SECONDS), log_path.read_text()[-2000:]
        # One request at a time in Django, and 300 at once (each a Django 404: no database involved) plus 20 health checks.
        outcomes, retry_afters, health_bodies = Counter(), set(), []

        def flood():
            status, retry_after, _ = get(port, "/api/v1/no-such-url/")
            outcomes[status] += 1
            if retry_after:
                retry_afters.add(int(retry_after))

        def check_health():
            health_bodies.append(get(port, "/api/v1/health/")[2])

        threads = [threading.Thread(target=flood) for _ in range(300)]
        threads[150:150] = [threading.Thread(target=check_health) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert set(outcomes) <= {404, 503} and outcomes[503] > 0 and outcomes[404] > 0, outcomes
        assert retry_afters <= {3, 4, 5, 6}
        # Every health check answered by the health view itself, however long it waited.
        assert len(health_bodies) == 20 and all(b"busy" not in body and b"status" in body for body in health_bodies)
        assert "overloaded:" in log_path.read_text()  # the operator is told
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


def _answers(port: int) -> bool:
    try:
        return get(port, "/api/v1/health/")[0] in (200, 503)
    except OSError:
        return False

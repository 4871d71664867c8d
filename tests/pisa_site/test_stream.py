"""GET /api/v1/stream/: a real ASGI server (gunicorn's asyncio worker, as the Procfile runs it) tells its viewers of
a change within moments of the publish, only of the countries they show, and keeps doing so after the server and
after Redis restart."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh
from pisa_site import stream
from pisa_site.embedded import free_port
from tests.conftest import ROOT, subprocess_env, wait_until

STARTUP_SECONDS = 30
EVENT_SECONDS = 5


class StreamServer:
    def __init__(self, redis_url: str, log_path, **environment: str):
        self.port, self.redis_url, self.log_path = free_port(), redis_url, log_path
        self.environment = environment
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        bin_dir = os.path.dirname(sys.executable)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [f"{bin_dir}/gunicorn", "pisa_site.asgi", "--worker-class", "asgi", "--bind",
                 f"127.0.0.1:{self.port}", "--workers", "1", "--graceful-timeout", "1", "--log-level", "warning"],
                cwd=ROOT, env=subprocess_env(REDIS_URL=self.redis_url, DEBUG="1", **self.environment), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_until(self._answers, timeout=STARTUP_SECONDS), self.log()

    def _answers(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/api/v1/health/")
            return connection.getresponse().status in (200, 503)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def open(self, query: str = "") -> EventReader:
        return EventReader(self.port, f"/api/v1/stream/{query}")


class EventReader:
    """A client of the stream, as EventSource reads it: (event name, data) pairs."""

    def __init__(self, port: int, path: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=EVENT_SECONDS)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()

    def next_event(self, *, skip: tuple[str, ...] = (stream.HEARTBEAT, stream.SOURCES)) -> tuple[str, dict]:
        name, data = None, None
        while True:
            line = self.response.fp.readline().decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
            elif line == "" and name is not None:
                if name not in skip:
                    return name, data
                name, data = None, None

    def close(self) -> None:
        self.connection.close()


def named(event: tuple[str, dict]) -> tuple[str, list[str]]:
    """An event's name and the countries it says changed (without the document it may carry)."""
    name, data = event
    return name, data["countries"]


def announce(redis_url: str, country: str) -> None:
    """What a publisher does (metrics.cache.country_document_publish), on the given Redis."""
    import redis

    stream.change_announce(topic=stream.METRICS, country=country, pipe=redis.Redis.from_url(redis_url))


@pytest.fixture
def server_on(tmp_path, transactional_db):
    servers = []

    def start(redis_url: str, **environment: str) -> StreamServer:
        server = StreamServer(redis_url, tmp_path / f"stream-{len(servers)}.log", **environment)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def publish_document(country: str) -> None:
    from metrics import cache

    cache.country_document_publish(country=country, document={"country": country, "at": time.time()},
                                   version=f"{time.time_ns()}")


def test_a_publish_reaches_the_viewers_of_that_country_within_moments_and_no_one_else(server_on):
    from django.conf import settings

    publish_document("ALB")
    publish_document("ARG")  # both known to the API, so both may be asked for
    server = server_on(settings.REDIS_URL)
    albania, argentina, everyone = server.open("?countries=ALB"), server.open("?countries=ARG"), server.open()
    assert albania.response.status == 200
    assert albania.response.getheader("Content-Type").startswith("text/event-stream")
    assert albania.response.getheader("Cache-Control") == "no-cache"
    assert albania.next_event() == ("ready", {"countries": ["ALB"]})
    assert argentina.next_event()[0] == everyone.next_event()[0] == "ready"

    started = time.monotonic()
    publish_document("ALB")
    assert named(albania.next_event()) == ("metrics", ["ALB"])
    assert time.monotonic() - started < 1.0
    assert named(everyone.next_event()) == ("metrics", ["ALB"])
    publish_document("ARG")
    # Argentina's viewer hears of Argentina only: its first event is about ARG, not the earlier ALB.
    assert named(argentina.next_event()) == ("metrics", ["ARG"])
    assert named(everyone.next_event()) == ("metrics", ["ARG"])


def test_a_quiet_stream_carries_heartbeats(server_on, own_redis, monkeypatch):
    server = server_on(own_redis.url(0))
    viewer = server.open()
    assert viewer.next_event()[0] == "ready"
    viewer.connection.sock.settimeout(stream.HEARTBEAT_SECONDS + 3)
    assert viewer.next_event(skip=(stream.SOURCES,)) == (stream.HEARTBEAT, {})


def test_bad_countries_are_refused_as_the_metrics_url_refuses_them(server_on):
    from django.conf import settings

    server = server_on(settings.REDIS_URL)
    for query, expected in (("?countries=XXX", "unknown country"), ("?colour=red", "colour")):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=EVENT_SECONDS)
        connection.request("GET", f"/api/v1/stream/{query}")
        response = connection.getresponse()
        assert response.status == 400
        assert expected in json.loads(response.read())["error"]


def test_after_the_server_restarts_a_new_stream_hears_changes_again(server_on, own_redis):
    server = server_on(own_redis.url(0))
    viewer = server.open()
    assert viewer.next_event()[0] == "ready"
    server.stop()
    with pytest.raises((EOFError, OSError)):
        viewer.next_event()  # the stream ends with the server: EventSource's cue to reconnect
    server.start()
    again = server.open()
    assert again.next_event()[0] == "ready"
    announce(own_redis.url(0), "ALB")
    assert named(again.next_event()) == ("metrics", ["ALB"])


def test_after_redis_restarts_each_viewer_is_told_to_resync_then_hears_changes_again(server_on, own_redis):
    server = server_on(own_redis.url(0))
    viewer = server.open()
    assert viewer.next_event()[0] == "ready"
    own_redis.stop()  # changes published meanwhile are not heard: hence the resync
    own_redis.start()
    viewer.connection.sock.settimeout(stream.RECONNECT_SECONDS[1] * 3 + EVENT_SECONDS)
    assert viewer.next_event() == (stream.RESYNC, {})
    announce(own_redis.url(0), "ALB")
    assert named(viewer.next_event()) == ("metrics", ["ALB"])


def test_a_process_beyond_its_most_viewers_answers_503_with_retry_after(server_on, own_redis):
    server = server_on(own_redis.url(0), STREAM_MAX_VIEWERS="2")
    first, second = server.open(), server.open()
    assert first.next_event()[0] == second.next_event()[0] == "ready"
    third = server.open()
    assert third.response.status == 503
    assert int(third.response.getheader("Retry-After")) > 0
    first.close()
    assert wait_until(lambda: server.open().response.status == 200, timeout=EVENT_SECONDS)


def test_a_redis_that_does_not_answer_gets_a_503_not_a_silent_stream(server_on):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = server_on(dead)
    viewer = server.open()
    assert viewer.response.status == 503
    assert "poll" in json.loads(viewer.response.read())["error"]


def test_a_change_in_another_redis_database_on_the_same_server_is_not_heard(server_on, own_redis):
    """Pub/sub ignores database numbers: two deployments sharing a Redis server must not hear each other."""
    server = server_on(own_redis.url(0))
    viewer = server.open()
    assert viewer.next_event()[0] == "ready"
    announce(own_redis.url(1), "ARG")  # another deployment's change
    announce(own_redis.url(0), "ALB")
    assert named(viewer.next_event()) == ("metrics", ["ALB"])


def unpacked(data: dict) -> bytes:
    return gzip.decompress(base64.b64decode(data["gzip"]))


def test_a_change_event_carries_the_metrics_answer_its_viewer_would_get(server_on, two_countries, client):
    """The event's document is the metrics URL's answer for the viewer's countries, byte for byte, with its ETag:
    the dashboard draws it without asking."""
    from django.conf import settings

    server = server_on(settings.REDIS_URL)
    both, everyone = server.open("?countries=ARG,ALB"), server.open()
    assert both.next_event()[0] == everyone.next_event()[0] == "ready"
    two_countries["ALB"].insert_students(5)
    source_sync(source_id=two_countries["ALB"].source.pk)
    country_metrics_refresh(country="ALB")

    for viewer, url in ((both, "/api/v1/metrics/?countries=ARG,ALB"), (everyone, "/api/v1/metrics/")):
        name, data = viewer.next_event(skip=(stream.HEARTBEAT, stream.SOURCES))
        assert (name, data["countries"]) == ("metrics", ["ALB"])
        answer = client.get(url)
        assert unpacked(data) == answer.content
        assert data["etag"] == f"W/{answer['ETag']}"
        assert json.loads(unpacked(data))["countries"] == (["ARG", "ALB"] if "ARG,ALB" in url else ["ALB", "ARG"])
        assert client.get(url, HTTP_IF_NONE_MATCH=data["etag"]).status_code == 304


def without_ages(statuses: list[dict]) -> list[dict]:
    """Source statuses without the figure that grows with the clock (the age of the newest row loaded)."""
    return [{key: value for key, value in status.items() if key != "idle_seconds"} for status in statuses]


def test_every_viewer_is_pushed_the_sources_status_when_it_changes(server_on, two_countries, client):
    from django.conf import settings

    server = server_on(settings.REDIS_URL)
    viewer = server.open("?countries=ARG")
    assert viewer.next_event()[0] == "ready"
    name, first = viewer.next_event(skip=(stream.HEARTBEAT,))
    assert name == stream.SOURCES
    assert without_ages(json.loads(unpacked(first))) == without_ages(client.get("/api/v1/sources/").json())

    two_countries["ALB"].insert_students(3)
    source_sync(source_id=two_countries["ALB"].source.pk)  # ALB's figures change, not ARG's
    viewer.connection.sock.settimeout(stream.SOURCES_PUSH_SECONDS * 2 + EVENT_SECONDS)
    alb = {}
    while alb.get("rows_loaded") != 43:
        name, pushed = viewer.next_event(skip=(stream.HEARTBEAT,))
        assert name == stream.SOURCES and pushed["etag"] != first["etag"]
        alb = next(source for source in json.loads(unpacked(pushed)) if source["code"] == "ALB")


def test_an_event_whose_document_cannot_be_built_still_goes_out_to_be_fetched(server_on):
    """A document the metrics cannot assemble (here: not a country document) costs the push, not the event."""
    from django.conf import settings

    publish_document("ALB")
    server = server_on(settings.REDIS_URL)
    viewer = server.open("?countries=ALB")
    assert viewer.next_event()[0] == "ready"
    publish_document("ALB")
    assert viewer.next_event(skip=(stream.HEARTBEAT, stream.SOURCES)) == ("metrics", {"countries": ["ALB"]})
    assert "could not build the pushed document" in server.log()


def test_a_build_that_cannot_start_in_time_is_skipped_and_its_viewers_fetch(monkeypatch):
    """Viewers each on their own mix of countries cost a build each: when the builds fall behind, an event goes
    without its document (the viewer GETs it from the web tier) rather than late."""
    import asyncio

    def slow_build(countries, fresh):
        time.sleep(stream.PUSH_BUILD_MAX_WAIT_SECONDS * 3)
        return 'W/"e"', gzip.compress(json.dumps({"countries": list(countries)}).encode())

    monkeypatch.setattr(stream, "_pushes", {stream.METRICS: slow_build})
    hub = stream.ChangeHub("redis://127.0.0.1:1/0")  # never connected: only its builds are used here

    async def two_mixes():
        return await asyncio.gather(hub.metrics_pushed(("ALB",)), hub.metrics_pushed(("ARG",)),
                                    hub.metrics_pushed(("ALB",)))

    albania, argentina, albania_again = asyncio.run(two_mixes())
    assert b'"gzip":' in albania and albania == albania_again  # one build, shared by the viewers of one mix
    assert argentina == b""  # waited behind Albania's build for longer than the bound

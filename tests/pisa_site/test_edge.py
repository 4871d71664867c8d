"""The edge (pisa_site/edge.py): a polled answer a view marks is given again by the web process itself, until a
change of its countries is heard on Redis (a real one) or its max-age passes; nothing else is ever kept."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.http import HttpResponse
from django.test import override_settings

from pisa_site import edge, stream
from tests.conftest import wait_until

ETAG = '"v1"'


class View:
    """A WSGI application standing in for Django: answers `body` with the ETag, marked for the edge unless told."""

    def __init__(self, *, countries=("ALB",), max_age=5.0, marked=True, status="200 OK", cookie=False):
        self.calls, self.body, self.etag = 0, b'{"n": 1}', ETAG
        self.countries, self.max_age, self.marked, self.status, self.cookie = countries, max_age, marked, status, cookie
        self.during = None  # run while the answer is being made

    def __call__(self, environ, start_response):
        self.calls += 1
        if self.during:
            self.during()
        response = HttpResponse(self.body, content_type="application/json")
        response["ETag"] = self.etag
        if self.marked:
            edge.edge_mark(SimpleNamespace(META=environ), response, countries=self.countries, max_age=self.max_age)
        headers = list(response.items())
        if self.cookie:
            headers.append(("Set-Cookie", "a=b"))
        if environ.get("HTTP_IF_NONE_MATCH") == self.etag:
            start_response("304 Not Modified", [h for h in headers if h[0] != "Content-Type"])
            return []
        start_response(self.status, headers)
        return [self.body]


@pytest.fixture
def clock():
    clock = edge.ChangeClock(settings.REDIS_URL)
    clock.start()
    assert wait_until(lambda: clock.connected, timeout=10)
    yield clock
    clock.stop()


def get(application, path="/api/v1/metrics/", query="countries=ALB", **headers):
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(response_headers)

    body = b"".join(application({"REQUEST_METHOD": headers.pop("method", "GET"), "PATH_INFO": path,
                                 "QUERY_STRING": query, **headers}, start_response))
    return seen["status"], seen["headers"], body


def announce(clock: edge.ChangeClock, country: str) -> None:
    before = clock.heard
    stream.change_announce(topic=stream.METRICS, country=country)
    assert wait_until(lambda: clock.heard > before, timeout=10)


def test_a_marked_answer_is_given_again_without_django_and_without_the_mark(clock):
    view = View()
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    first = get(application)
    assert first[0] == "200 OK" and edge.EDGE_HEADER not in first[1] and first[2] == b'{"n": 1}'
    assert "Age" not in first[1]
    again = get(application)
    assert again[1].pop("Age") == "0" and again == first and view.calls == 1
    status, headers, body = get(application, HTTP_IF_NONE_MATCH=ETAG)  # the asker holds it: a 304 from the edge
    assert status.startswith("304") and body == b"" and headers["ETag"] == ETAG and "Content-Type" not in headers
    assert view.calls == 1


def test_a_change_of_one_of_its_countries_drops_it_and_others_do_not(clock):
    view = View(countries=("ALB", "ARG"))
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    get(application)
    announce(clock, "BRA")
    get(application)
    assert view.calls == 1
    announce(clock, "ARG")
    view.body = b'{"n": 2}'
    assert get(application)[2] == b'{"n": 2}' and view.calls == 2
    assert get(application)[2] == b'{"n": 2}' and view.calls == 2


def test_an_answer_for_any_country_is_dropped_by_every_change(clock):
    view = View(countries=None)
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    get(application)
    announce(clock, "BRA")
    get(application)
    assert view.calls == 2


def test_an_answer_made_while_its_change_is_heard_is_not_kept(clock):
    view = View()
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    view.during = lambda: announce(clock, "ALB")  # the data it read may predate the change
    get(application)
    view.during = None
    get(application)
    assert view.calls == 2
    get(application)
    assert view.calls == 2


def test_many_asking_at_once_after_a_change_make_one_question_to_django(clock):
    view = View()
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    get(application)
    announce(clock, "ALB")
    view.body, view.during = b'{"n": 2}', lambda: time.sleep(0.3)
    bodies = []
    askers = [threading.Thread(target=lambda: bodies.append(get(application)[2])) for _ in range(5)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(5)
    assert bodies == [b'{"n": 2}'] * 5 and view.calls == 2


def test_the_max_age_bounds_it(clock):
    view = View(max_age=0.2)
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    get(application)
    get(application)
    time.sleep(0.3)
    get(application)
    assert view.calls == 2


def test_a_304_seen_answers_holders_of_that_etag_only(clock):
    view = View()
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    assert get(application, HTTP_IF_NONE_MATCH=ETAG)[0].startswith("304")
    assert get(application, HTTP_IF_NONE_MATCH=ETAG)[0].startswith("304") and view.calls == 1
    assert get(application)[0] == "200 OK" and view.calls == 2  # it has no body to give: Django does


@override_settings(CORS_ALLOWED_ORIGINS=["https://forage.example"])
def test_encodings_allowed_origins_hosts_schemes_and_queries_are_kept_apart(clock):
    view = View()
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    for headers in ({}, {"HTTP_ACCEPT_ENCODING": "gzip"}, {"HTTP_ORIGIN": "https://forage.example"},
                    {"HTTP_HOST": "elsewhere.example"}, {"HTTP_X_FORWARDED_PROTO": "https"}):
        get(application, **headers)
        get(application, **headers)
    get(application, query="countries=ARG")
    assert view.calls == 6
    get(application, HTTP_ACCEPT_ENCODING="gzip;q=0")  # refuses gzip: the identity answer
    get(application, HTTP_ORIGIN="https://any.example")  # CORS lets no other origin read it: answered alike
    assert view.calls == 6


@pytest.mark.parametrize("view, method", [
    (View(marked=False), "GET"), (View(), "HEAD"), (View(status="400 Bad Request"), "GET"), (View(cookie=True), "GET"),
], ids=["not marked", "not a GET", "not a 200 or 304", "sets a cookie"])
def test_nothing_else_is_ever_kept(clock, view, method):
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    for _ in range(2):
        assert edge.EDGE_HEADER not in get(application, method=method)[1]
    assert view.calls == 2


def test_nothing_is_kept_while_changes_cannot_be_heard():
    view, unheard = View(), edge.ChangeClock("redis://127.0.0.1:1/0")
    application = edge.edge_cache(view, clock=unheard, answers=edge.Answers())
    try:
        get(application)
        get(application)
    finally:
        unheard.stop()
    assert view.calls == 2


def test_subscribing_again_forgets_what_was_kept_and_tells_the_apps(clock, monkeypatch):
    told = []
    monkeypatch.setattr(edge, "_heard_callbacks", [told.append])
    view = View()
    application = edge.edge_cache(view, clock=clock, answers=edge.Answers())
    get(application)
    clock._subscribed()  # what redis-py's silent reconnection ends with: a new subscribe confirmation
    get(application)
    assert view.calls == 2 and told == [None]


def test_a_view_marks_nothing_for_a_request_that_did_not_come_through_the_edge():
    response = HttpResponse(b"{}")
    edge.edge_mark(SimpleNamespace(META={}), response, countries=None, max_age=1.0)  # the stream server's
    assert edge.EDGE_HEADER not in response


def test_the_kept_answers_stay_within_their_byte_budget():
    answers = edge.Answers(budget=2 * (1000 + edge.ANSWER_OVERHEAD_BYTES) + 100)
    for n in range(5):
        answers.put(("/", str(n), False, ""), edge.Answer(status="200 OK", headers=[], body=b"x" * 1000, etag="",
                                                           topics=frozenset(), stamp=0, stored_at=0, expires_at=0))
    assert [answers.get(("/", str(n), False, "")) is not None for n in range(5)] == [False, False, False, True, True]


def test_hearing_a_change_tells_the_apps_before_it_drops_the_answers(clock, monkeypatch):
    told = []
    monkeypatch.setattr(edge, "_heard_callbacks", [lambda country: told.append((country, clock.heard))])
    heard_before = clock.heard
    clock.hear(json.dumps({"topic": stream.METRICS, "country": "ALB"}))
    assert told == [("ALB", heard_before)] and clock.heard == heard_before + 1

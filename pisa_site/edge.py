"""The polled answers, kept in each web process in front of Django and dropped the moment their data changes.

Thousands of viewers poll the same few URLs every second, and between two changes of a country its answers do not
change. A view marks an answer that may be kept with the `EDGE_HEADER` (`edge_mark`): which countries it depends on
(`*`: any) and for how long at most. `edge_cache` (around the WSGI application, before the shedding gate and
Django) keeps the 200 or 304 it saw for that URL, encoding and origin, and answers the next asker itself, a 304 when
the asker holds its ETag, in some 90 microseconds of the process's CPU in all, the HTTP server's included, instead
of Django's few hundred (and without taking one of Django's turns). It forgets an answer when:

- one of its countries changed: a thread of the process listens to the change channel the metrics publish on
  (pisa_site/stream.py), so the next request after a publish gets the new document, as it would from Django;
- its max-age passed (1 s for the metrics: it bounds what a change not announced, a codebook label, may take);
- the listener is not connected (nothing is kept while changes could go unheard), or subscribed again (what was
  kept before may have missed changes).

An answer being made while a change of its countries is heard is not kept (each is stamped with the count of
changes heard when its request came in). Nothing else is kept: other URLs, other methods, other statuses, answers
setting a cookie.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from django.conf import settings

from pisa_site import stream
from pisa_site.compression import accepts_gzip

logger = logging.getLogger(__name__)

EDGE_HEADER = "X-Edge-Cache"  # views -> edge_cache; never sent to the client
EDGE_ENVIRON = "pisa.edge"  # set by edge_cache on the requests it passes on: edge_mark marks only those
ANY_COUNTRY = "*"
EDGE_CACHE_BYTES = 32 * 1024 * 1024  # per web process: a few thousand documents of a few countries
ANSWER_OVERHEAD_BYTES = 512  # what an answer costs beside its body (key, headers): a 304 kept is not free
RECONNECT_SECONDS = (0.05, 2.0)
# The longest a request waits for another's answer to the same question before it asks Django itself: no longer
# than it would wait for its turn there (WEB_SHED_QUEUE_MS), so that waiters do not pile up on the web's threads.
COALESCE_WAIT_SECONDS = 0.5
# A 304 carries the headers a cache needs to update what it holds (RFC 9110 15.4.5), not the body's.
NOT_IN_304 = frozenset({"content-length", "content-type", "content-encoding"})


_heard_callbacks: list[Callable[[str | None], None]] = []


def on_change_heard(callback: Callable[[str | None], None]) -> None:
    """Call `callback(country)` when this process hears a change, before it forgets the answers of that country: an
    app forgets its own per-process snapshots there, so that the next answer Django makes (and the edge keeps) is
    of the data as changed."""
    _heard_callbacks.append(callback)


def edge_mark(request, response, *, countries: Iterable[str] | None, max_age: float) -> None:
    """Let edge_cache keep `response` for up to `max_age` seconds, until one of `countries` (None: any) changes.
    Nothing when the request did not come through edge_cache (the stream server, a test client)."""
    if not request.META.get(EDGE_ENVIRON):
        return
    topics = ANY_COUNTRY if countries is None else ",".join(countries)
    response[EDGE_HEADER] = f"{max_age:.3f};{topics}"


@dataclass(frozen=True)
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes | None  # None: only a 304 was seen, which answers only askers holding the ETag
    etag: str  # without W/, as If-None-Match is compared
    topics: frozenset[str]
    stamp: int
    stored_at: float
    expires_at: float


class ChangeClock:
    """The changes heard on the change channel, counted: per country, the count when it last changed; `floor`, the
    count when everything may have changed (the subscription (re)started, or a change named no country)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.heard = self.floor = 0
        self.changed_at: dict[str, int] = {}
        self.connected = False
        self._started = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._started:  # fast path: every GET calls this; the lock only guards the first
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._listen, name="edge-changes", daemon=True).start()

    def stop(self) -> None:
        """Let the listening thread end (within a few seconds); nothing is kept from then on."""
        self._stopping.set()
        self.connected = False

    def valid(self, answer: Answer) -> bool:
        """Whether nothing `answer` depends on changed since its request came in."""
        changed_at = self.changed_at  # read before `floor`, which `_everything_changed` writes first
        if not self.connected or answer.stamp < self.floor:
            return False
        if ANY_COUNTRY in answer.topics:
            return self.heard <= answer.stamp
        return all(changed_at.get(topic, 0) <= answer.stamp for topic in answer.topics)

    def hear(self, message: bytes | str) -> None:
        country = stream.change_country(message)
        for callback in _heard_callbacks:
            callback(country)
        with self._lock:
            self.heard += 1
            if country:
                self.changed_at[country] = self.heard
            else:  # a change of something unnamed: everything may have changed
                self._everything_changed()

    def _everything_changed(self) -> None:
        self.floor = self.heard
        self.changed_at = {}

    def _subscribed(self) -> None:
        """The subscription is (again) in place: what was kept before may predate changes that went unheard."""
        for callback in _heard_callbacks:
            callback(None)
        with self._lock:
            self.heard += 1
            self._everything_changed()
            self.connected = True

    def _listen(self) -> None:
        delay = RECONNECT_SECONDS[0]
        channel = stream.changes_channel(self.url)
        while not self._stopping.is_set():
            client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_keepalive=True,
                                          health_check_interval=10)
            # Subscribe confirmations are read: redis-py may reconnect and subscribe again inside get_message, and
            # each confirmation says the changes published meanwhile went unheard.
            pubsub = client.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(channel)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._subscribed()
                        delay = RECONNECT_SECONDS[0]
                    elif message["type"] == "message":
                        self.hear(message["data"])
            except (redis.RedisError, OSError) as exc:
                if self.connected:
                    logger.warning("edge cache: lost the Redis subscription (%s); answering from Django", exc)
                self.connected = False
                self._stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_SECONDS[1])
            finally:
                self.connected = False
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass


class Answers:
    """The kept answers by (path, query, gzip accepted, origin), the newest within EDGE_CACHE_BYTES."""

    def __init__(self, budget: int = EDGE_CACHE_BYTES) -> None:
        self.budget = budget
        self._answers: OrderedDict[tuple, Answer] = OrderedDict()
        self._refreshing: dict[tuple, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Answer | None:
        return self._answers.get(key)

    def put(self, key: tuple, answer: Answer) -> None:
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._bytes -= _cost(old)
            self._answers[key] = answer
            self._bytes += _cost(answer)
            while self._bytes > self.budget and len(self._answers) > 1:
                _, dropped = self._answers.popitem(last=False)
                self._bytes -= _cost(dropped)

    def drop(self, key: tuple) -> None:
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._bytes -= _cost(old)

    def refresh_start(self, key: tuple) -> threading.Event | None:
        """The caller is to ask for `key` anew (end with `refresh_end`), or None: another request already is."""
        with self._lock:
            if key in self._refreshing:
                return None
            done = self._refreshing[key] = threading.Event()
            return done

    def refresh_wait(self, key: tuple, timeout: float) -> None:
        done = self._refreshing.get(key)
        if done is not None:
            done.wait(timeout)

    def refresh_end(self, key: tuple, done: threading.Event) -> None:
        with self._lock:
            if self._refreshing.get(key) is done:
                del self._refreshing[key]
        done.set()


def _cost(answer: Answer) -> int:
    return ANSWER_OVERHEAD_BYTES + len(answer.body or b"")


def _key(environ, allowed_origins: frozenset[str]) -> tuple:
    """What an answer may vary by: the URL, the host and scheme (Django refuses some hosts, redirects plain HTTP),
    whether gzip is accepted (as pisa_site/api.py decides) and the origin when CORS lets it read the answer (any
    other is answered alike, and must not make an entry of its own)."""
    origin = environ.get("HTTP_ORIGIN", "")
    return (environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), environ.get("HTTP_HOST", ""),
            environ.get("wsgi.url_scheme", ""), environ.get("HTTP_X_FORWARDED_PROTO", ""),
            accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")), origin if origin in allowed_origins else "")


def _answer_from(answer: Answer, environ, start_response) -> list[bytes] | None:
    """The kept answer for this asker, or None when it cannot be answered from it."""
    # Age (RFC 9111 5.1): the answer came from a cache, and how many seconds ago it was made.
    age = ("Age", str(int(time.monotonic() - answer.stored_at)))
    if answer.etag and answer.etag in environ.get("HTTP_IF_NONE_MATCH", ""):
        start_response("304 Not Modified", [(k, v) for k, v in answer.headers if k.lower() not in NOT_IN_304] + [age])
        return []
    if answer.body is None:
        return None
    start_response(answer.status, [*answer.headers, age])
    return [answer.body]


def _usable(answer: Answer, clock: ChangeClock) -> bool:
    return time.monotonic() < answer.expires_at and clock.valid(answer)


def _unmarked(start_response):
    def unmarked(status, headers, exc_info=None):
        return start_response(status, [(name, value) for name, value in headers if name != EDGE_HEADER], exc_info)
    return unmarked


def edge_cache(application, *, clock: ChangeClock | None = None, answers: Answers | None = None):
    """The WSGI application, with the answers its views mark (`edge_mark`) kept and given in front of it."""
    clock = clock or ChangeClock(settings.REDIS_URL)
    answers = answers or Answers()
    allowed_origins = frozenset(settings.CORS_ALLOWED_ORIGINS)

    def edge_application(environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":
            return application(environ, _unmarked(start_response))
        clock.start()
        environ[EDGE_ENVIRON] = True
        key = _key(environ, allowed_origins)
        kept = answers.get(key)
        refreshing = None
        if kept is not None:
            served = _answer_from(kept, environ, start_response) if _usable(kept, clock) else None
            if served is not None:
                return served
            # A URL whose answer is kept, asked by many at once when it changed or expired: one asks Django, and
            # the others wait for its answer rather than each queueing for Django (and being shed) with the same
            # question.
            refreshing = answers.refresh_start(key)
            if refreshing is None:
                answers.refresh_wait(key, COALESCE_WAIT_SECONDS)
                kept = answers.get(key)
                if kept is not None and _usable(kept, clock):
                    served = _answer_from(kept, environ, start_response)
                    if served is not None:
                        return served
        try:
            return _from_application(environ, start_response, key)
        finally:
            if refreshing is not None:
                answers.refresh_end(key, refreshing)

    def _from_application(environ, start_response, key):
        stamp = clock.heard
        seen = {}

        def capture(status, headers, exc_info=None):
            mark = next((value for name, value in headers if name == EDGE_HEADER), None)
            if mark is not None:
                headers = [(name, value) for name, value in headers if name != EDGE_HEADER]
                seen.update(status=status, headers=headers, mark=mark)
            return start_response(status, headers, exc_info)

        result = application(environ, capture)
        if "mark" not in seen or not clock.connected or not seen["status"].startswith(("200", "304")):
            answers.drop(key)  # what was kept for it is of no more use (and others would wait on it)
            return result
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        headers = seen["headers"]
        if any(name.lower() == "set-cookie" for name, _ in headers):
            answers.drop(key)
            return [body]
        max_age, _, topics = seen["mark"].partition(";")
        etag = next((value for name, value in headers if name.lower() == "etag"), "").removeprefix("W/")
        answers.put(key, Answer(
            status=seen["status"], headers=headers, body=body if seen["status"].startswith("200") else None,
            etag=etag, topics=frozenset(topics.split(",")) if topics else frozenset(), stamp=stamp,
            stored_at=time.monotonic(), expires_at=time.monotonic() + float(max_age)))
        return [body]

    return edge_application

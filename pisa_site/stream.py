"""Push: a server-sent-events stream that tells a dashboard, within milliseconds, that a document it shows changed.

    publisher (metrics refresh) --PUBLISH pisa:changes:<db>--> Redis --one subscription per web process--> ChangeHub
        --> every Viewer of that process whose countries include the change --> `event: metrics` on its stream

A publisher announces a change with `change_announce` in the same Redis pipeline as the change itself, so a viewer
told of it always finds it. Each web process holds one subscription, whatever its number of viewers: a viewer is
an asyncio task waiting on an Event, not a Redis connection. A viewer's pending changes coalesce into a set of
countries, so a slow viewer gets one event naming all that changed, never a backlog.

An event carries the new document, so the viewer needs no request to see it. The apps register what they push
(`push_register`, from their AppConfig.ready): the metrics a viewer's countries show (their document mixes those
countries: the average of those shown), built once per process for every viewer of the same countries after each
change heard; and the sources' status, the same for every viewer, looked at every SOURCES_PUSH_SECONDS and pushed
when it changed. Each goes as its ETag and its gzip (made once per ETag, pisa_site/compression) in base64: the
browser unpacks it with DecompressionStream. When a build fails, the event still goes out without the document and
the client GETs it.

When Redis goes away the hub reconnects with backoff and, once back, tells every viewer to `resync` (changes made
meanwhile were not heard). A quiet stream carries a `heartbeat` event every HEARTBEAT_SECONDS, so a dead client is
found, proxies keep the connection open and the dashboard knows the stream is alive. Beyond STREAM_MAX_VIEWERS a process answers 503 with Retry-After; the
dashboard then polls, as it does whenever the stream cannot be opened or breaks.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import redis
import redis.asyncio
from django.conf import settings
from django.db import close_old_connections

from pisa_site.cache import redis_client

logger = logging.getLogger(__name__)

# Pub/sub ignores Redis database numbers: the channel carries the number, so that deployments (or test runs) sharing
# one Redis server on different databases do not hear each other's changes.
CHANNEL = "pisa:changes:{db}"
# An event every HEARTBEAT_SECONDS on a quiet stream: a browser cannot see SSE comments, and the dashboard counts
# the stream alive while events arrive (~20 bytes each).
HEARTBEAT_SECONDS = 5.0
RECONNECT_SECONDS = (0.05, 2.0)  # first and longest wait before the hub tries Redis again
# How long the browser waits before reopening a stream that closed (the SSE `retry:` field).
CLIENT_RETRY_MS = 1000
# The sources' status changes with every sync (its ages grow with the clock): the pipeline panel is read by people,
# and each push is a write to every viewer (at 2 s, 6,094 of the 8,147 events 1,765 streams got in bench.load's 30 s).
SOURCES_PUSH_SECONDS = 5.0
METRICS, SOURCES, RESYNC, HEARTBEAT = "metrics", "sources", "resync", "heartbeat"

# A topic's push: (etag, gzipped body) of what a viewer of `countries` (empty: every country) sees now; `fresh`: the
# first build since a change was heard (re-read what a process snapshot may still hold). None: nothing to push.
PushBuild = Callable[[Sequence[str], bool], "tuple[str, bytes] | None"]
_pushes: dict[str, PushBuild] = {}


def push_register(topic: str, build: PushBuild) -> None:
    """Let events of `topic` carry its document (METRICS: per viewer's countries; SOURCES: the same for everyone)."""
    _pushes[topic] = build


def _pushed(etag: str, gzipped: bytes) -> bytes:
    """The JSON members an event carries for a pushed document, serialized once for every viewer it goes to."""
    return (',"etag":' + json.dumps(etag) + ',"gzip":"').encode() + base64.b64encode(gzipped) + b'"'


def change_announce(*, topic: str, country: str | None = None, pipe=None) -> None:
    """Tell every stream that `topic` (of `country`) changed; in `pipe`, it goes out with the change."""
    client = pipe if pipe is not None else redis_client()
    channel = CHANNEL.format(db=client.connection_pool.connection_kwargs.get("db", 0))
    client.publish(channel, json.dumps({"topic": topic, "country": country}))


def changes_channel(url: str) -> str:
    """The channel change_announce publishes on for the Redis database of `url`."""
    return CHANNEL.format(db=redis.connection.parse_url(url).get("db", 0))


def change_country(message: bytes | str) -> str | None:
    """The country a change message names (None: none, or not a message of ours)."""
    try:
        change = json.loads(message)
    except ValueError:
        return None
    country = change.get("country") if isinstance(change, dict) else None
    return country if isinstance(country, str) else None


class Viewer:
    """One open stream: the countries it shows (None: all) and what changed since it was last written to."""

    def __init__(self, countries: Sequence[str] | None):
        self.shown = tuple(countries or ())  # as asked: the order of the metrics URL's `?countries=`
        self.countries = frozenset(countries) if countries else None
        self.changed: set[str] = set()
        self.resync = False
        self.sources: bytes | None = None  # the SOURCES event's members, when a new status is to be sent
        self.wake = asyncio.Event()

    def offer(self, country: str) -> None:
        if self.countries is None or country in self.countries:
            self.changed.add(country)
            self.wake.set()

    def tell_resync(self) -> None:
        self.resync = True
        self.wake.set()

    def tell_sources(self, members: bytes) -> None:
        self.sources = members
        self.wake.set()

    def take(self) -> tuple[bool, list[str], bytes | None]:
        resync, changed, sources = self.resync, sorted(self.changed), self.sources
        self.resync, self.changed, self.sources = False, set(), None
        self.wake.clear()
        return resync, changed, sources


class ChangeHub:
    """The process's one subscription to its database's CHANNEL and the viewers it feeds (one hub per event loop)."""

    def __init__(self, url: str):
        self.url = url
        self.channel = changes_channel(url)
        self.viewers: set[Viewer] = set()
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task | None = None
        self._sources_pusher: asyncio.Task | None = None
        self._sources_last: bytes | None = None  # the last SOURCES members pushed: a new viewer starts with them
        self.changes_heard = 0
        # The metrics pushed since the last change heard: one build per set of countries shown, shared.
        self._metrics_pushes: dict[tuple[str, ...], asyncio.Future] = {}
        self._metrics_pushes_of = -1  # the changes_heard they were built after

    def full(self) -> bool:
        return len(self.viewers) >= settings.STREAM_MAX_VIEWERS

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    async def join(self, viewer: Viewer, *, timeout: float = 2.0) -> bool:
        """Add a viewer once the subscription is up (a change published after this is heard); False if Redis does
        not answer within `timeout` (the viewer is not added)."""
        self.viewers.add(viewer)
        if self._sources_last:
            viewer.tell_sources(self._sources_last)
        loop = asyncio.get_running_loop()
        if self._listener is None or self._listener.done():
            self._listener = loop.create_task(self._listen())
        if SOURCES in _pushes and (self._sources_pusher is None or self._sources_pusher.done()):
            self._sources_pusher = loop.create_task(self._push_sources())
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
            return True
        except TimeoutError:
            self.viewers.discard(viewer)
            return False

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def deliver(self, message: bytes | str) -> None:
        try:
            change = json.loads(message)
        except ValueError:
            logger.warning("stream: a message on %s that is not JSON: %r", self.channel, message[:100])
            return
        if change.get("topic") == METRICS and change.get("country"):
            self.changes_heard += 1
            for viewer in self.viewers:
                viewer.offer(change["country"])

    async def metrics_pushed(self, shown: tuple[str, ...]) -> bytes:
        """The METRICS event's members for a viewer of `shown` (b"" when not pushed): built by the first viewer of
        those countries to ask since the last change heard, awaited by the others."""
        build = _pushes.get(METRICS)
        if build is None:
            return b""
        fresh = self._metrics_pushes_of != self.changes_heard
        if fresh:
            self._metrics_pushes, self._metrics_pushes_of = {}, self.changes_heard
        pending = self._metrics_pushes.get(shown)
        if pending is None:
            pending = self._metrics_pushes[shown] = asyncio.ensure_future(_build_pushed(build, shown, fresh))
        return await asyncio.shield(pending)

    async def _push_sources(self) -> None:
        build = _pushes[SOURCES]
        while self.viewers:
            members = await _build_pushed(build, (), True, waits=False)
            if members and members != self._sources_last:
                self._sources_last = members
                for viewer in self.viewers:
                    viewer.tell_sources(members)
            await asyncio.sleep(SOURCES_PUSH_SECONDS)

    async def _listen(self) -> None:
        delay, heard_before = RECONNECT_SECONDS[0], False
        while self.viewers:
            client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2, health_check_interval=10)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                delay = RECONNECT_SECONDS[0]
                if heard_before:  # changes published while the subscription was down were not heard
                    for viewer in self.viewers:
                        viewer.tell_resync()
                heard_before = True
                while self.viewers:
                    message = await pubsub.get_message(timeout=HEARTBEAT_SECONDS)
                    if message is not None and message["type"] == "message":
                        self.deliver(message["data"])
            except (redis.RedisError, OSError) as exc:
                if self.connected:
                    logger.warning("stream: lost the Redis subscription (%s); reconnecting", exc)
                self._subscribed.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_SECONDS[1])
            finally:
                self._subscribed.clear()
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except (redis.RedisError, OSError):
                    pass


# The builds use Django's ORM and the Redis client, which are synchronous: one thread of the process runs them, in
# the order asked (a `fresh` build comes before the others of its change), on one database connection kept open.
_builder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-push")
# Viewers each on their own mix of countries cost one build each per change: beyond what the thread keeps up with,
# a build still waiting after this long is not made and its viewer GETs the document from the web tier, which
# spreads over its processes and sheds when it must (bench.pixel beside 2,000 such viewers: 3 to 9 s without it).
PUSH_BUILD_MAX_WAIT_SECONDS = 0.1


def _build_in_thread(build: PushBuild, shown: tuple[str, ...], fresh: bool, asked_at: float | None):
    if asked_at is not None and time.monotonic() - asked_at > PUSH_BUILD_MAX_WAIT_SECONDS:
        return None  # the builds are behind: this event goes without its document, and its viewers GET it
    close_old_connections()  # a connection the database dropped meanwhile is replaced, not failed on
    return build(shown, fresh)


async def _build_pushed(build: PushBuild, shown: tuple[str, ...], fresh: bool, *, waits: bool = True) -> bytes:
    """The event members of `build`'s document for `shown`; b"" when it fails or, when it `waits` for the builds
    before it, could not start within PUSH_BUILD_MAX_WAIT_SECONDS."""
    asked_at = time.monotonic() if waits else None
    try:
        built = await asyncio.get_running_loop().run_in_executor(_builder, _build_in_thread, build, shown, fresh,
                                                                 asked_at)
    except Exception:  # the event still goes out, without its document: the client GETs it
        logger.exception("stream: could not build the pushed document of %s", shown or "every country")
        return b""
    return _pushed(*built) if built else b""


_hubs: dict[asyncio.AbstractEventLoop, ChangeHub] = {}


def change_hub() -> ChangeHub:
    """This event loop's hub (one per web process under the ASGI server)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        for stale in [other for other in _hubs if other.is_closed()]:
            del _hubs[stale]
        hub = _hubs[loop] = ChangeHub(settings.REDIS_URL)
    return hub


def _event(name: str, data: dict, pushed: bytes = b"") -> bytes:
    encoded = json.dumps(data, separators=(",", ":")).encode()
    if pushed:  # its members go inside the object: after the others, or alone
        encoded = encoded[:-1] + (pushed if data else pushed[1:]) + b"}"
    return b"event: " + name.encode() + b"\ndata: " + encoded + b"\n\n"


async def viewer_events(hub: ChangeHub, viewer: Viewer) -> AsyncIterator[bytes]:
    """The stream of a viewer that joined the hub: a `ready` event, then one event per wake-up, heartbeats between.
    Leaves the hub when the client goes away (the server cancels this generator)."""
    try:
        yield f"retry: {CLIENT_RETRY_MS}\n".encode() + _event("ready", {"countries": sorted(viewer.countries or [])})
        while True:
            try:
                await asyncio.wait_for(viewer.wake.wait(), HEARTBEAT_SECONDS)
            except TimeoutError:
                yield _event(HEARTBEAT, {})
                continue
            resync, changed, sources = viewer.take()
            if sources:
                yield _event(SOURCES, {}, sources)
            if resync:
                yield _event(RESYNC, {})
            elif changed:
                yield _event(METRICS, {"countries": changed}, await hub.metrics_pushed(viewer.shown))
    finally:
        hub.leave(viewer)

"""Push: a server-sent-events stream that tells a dashboard, within milliseconds, that a document it shows changed.

    publisher (metrics refresh) --PUBLISH pisa:changes:<db>--> Redis --one subscription per web process--> ChangeHub
        --> every Viewer of that process whose countries include the change --> `event: metrics` on its stream

A publisher announces a change with `change_announce` in the same Redis pipeline as the change itself, so a viewer
told of it always finds it. Each web process holds one subscription, whatever its number of viewers: a viewer is
an asyncio task waiting on an Event, not a Redis connection. A viewer's pending changes coalesce into a set of
countries, so a slow viewer gets one event naming all that changed, never a backlog.

The event says what changed, not the new document: the documents mix countries (the average of those shown), and
the client's GET of its metrics URL is served from the bytes cached per ETag, gzipped once (pisa_site/compression).

When Redis goes away the hub reconnects with backoff and, once back, tells every viewer to `resync` (changes made
meanwhile were not heard). A quiet stream carries a `heartbeat` event every HEARTBEAT_SECONDS, so a dead client is
found, proxies keep the connection open and the dashboard knows the stream is alive. Beyond STREAM_MAX_VIEWERS a process answers 503 with Retry-After; the
dashboard then polls, as it does whenever the stream cannot be opened or breaks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable

import redis
import redis.asyncio
from django.conf import settings

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
METRICS, RESYNC, HEARTBEAT = "metrics", "resync", "heartbeat"


def change_announce(*, topic: str, country: str | None = None, pipe=None) -> None:
    """Tell every stream that `topic` (of `country`) changed; in `pipe`, it goes out with the change."""
    client = pipe if pipe is not None else redis_client()
    channel = CHANNEL.format(db=client.connection_pool.connection_kwargs.get("db", 0))
    client.publish(channel, json.dumps({"topic": topic, "country": country}))


class Viewer:
    """One open stream: the countries it shows (None: all) and what changed since it was last written to."""

    def __init__(self, countries: Iterable[str] | None):
        self.countries = frozenset(countries) if countries else None
        self.changed: set[str] = set()
        self.resync = False
        self.wake = asyncio.Event()

    def offer(self, country: str) -> None:
        if self.countries is None or country in self.countries:
            self.changed.add(country)
            self.wake.set()

    def tell_resync(self) -> None:
        self.resync = True
        self.wake.set()

    def take(self) -> tuple[bool, list[str]]:
        resync, changed = self.resync, sorted(self.changed)
        self.resync, self.changed = False, set()
        self.wake.clear()
        return resync, changed


class ChangeHub:
    """The process's one subscription to its database's CHANNEL and the viewers it feeds (one hub per event loop)."""

    def __init__(self, url: str):
        self.url = url
        self.channel = CHANNEL.format(db=redis.connection.parse_url(url).get("db", 0))
        self.viewers: set[Viewer] = set()
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task | None = None

    def full(self) -> bool:
        return len(self.viewers) >= settings.STREAM_MAX_VIEWERS

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    async def join(self, viewer: Viewer, *, timeout: float = 2.0) -> bool:
        """Add a viewer once the subscription is up (a change published after this is heard); False if Redis does
        not answer within `timeout` (the viewer is not added)."""
        self.viewers.add(viewer)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
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
            for viewer in self.viewers:
                viewer.offer(change["country"])

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


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


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
            resync, changed = viewer.take()
            if resync:
                yield _event(RESYNC, {})
            elif changed:
                yield _event(METRICS, {"countries": changed})
    finally:
        hub.leave(viewer)

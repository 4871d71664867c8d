"""The Celery broker's transport: kombu's Redis transport, with a read that can no longer wait forever.

A worker's main process listens to remote control (ping, inspect: what Flower and `manage.py chaos` send) on a Redis
pub/sub connection, in the same event loop that fetches its tasks. When that socket is readable, kombu reads one
message with `PubSub.parse_response()`, which in redis-py 8 blocks *with no timeout at all* (it turns the socket's
timeout off for that read, on purpose, so that `listen()` can wait for messages), and first reopens the connection
if it is closed. After a Redis restart kombu can find that socket readable while the connection is already closed and
nothing is subscribed (kombu subscribes again at its next poll, which this read holds up): the read reopens the
connection and waits there, for a message that cannot come, fetching no task (the story and its figures are in
docs/ARCHITECTURE.md, "Task delivery guarantees").

Here a pub/sub read does not wait on a closed connection: it closes it the way redis-py does (kombu's disconnect hook
then drops its poll registration) and returns nothing; kombu reopens the connection right after (if Redis is still
down, that raises the connection error the worker reconnects on, as for any broker outage), registers it and
subscribes again at its next poll. On an open connection the read waits at most the broker's `socket_timeout`
(REDIS_SOCKET_TIMEOUT_SECONDS) and returns nothing when nothing came; the loop carries on either way. A connection
that is open but dead is found by kombu's pub/sub health check (every `health_check_interval`, 25 s).

`use_bounded_transport()` (called by pisa_site/celery.py before any connection exists) makes kombu's `redis` and
`rediss` names mean this transport, so URLs, logs and Flower (which reads the scheme) stay as they were.
"""

from __future__ import annotations

from functools import cache, cached_property

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis
from redis.client import PubSub

# When the broker's transport options set no socket timeout.
DEFAULT_PUBSUB_READ_TIMEOUT_SECONDS = 5.0
TRANSPORT_PATH = "pisa_site.broker:Transport"


def use_bounded_transport() -> None:
    for scheme in ("redis", "rediss"):
        kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT_PATH


class BoundedReads:
    """Mixed into a PubSub: a blocking read gives up after `read_timeout` seconds with None (no message), as a
    non-blocking read with that timeout does, and gives None at once when the connection is closed."""

    read_timeout: float = DEFAULT_PUBSUB_READ_TIMEOUT_SECONDS

    def parse_response(self, block: bool = True, timeout: float = 0):
        if not block:
            return super().parse_response(block=False, timeout=timeout)
        connection = self.connection
        sock = getattr(connection, "_sock", None)
        if connection is not None and (sock is None or sock.fileno() == -1):
            connection.disconnect()  # kombu unregisters it; its next poll reconnects and subscribes
            return None
        return super().parse_response(block=False, timeout=self.read_timeout)


@cache
def bounded(pubsub_class: type[PubSub]) -> type[PubSub]:
    """`pubsub_class` with bounded reads (redis-py's PubSub, or kombu's key-prefixed one)."""
    return type(f"Bounded{pubsub_class.__name__}", (BoundedReads, pubsub_class), {})


BoundedPubSub = bounded(PubSub)


class Channel(kombu_redis.Channel):
    @cached_property
    def subclient(self) -> PubSub:
        """The pub/sub connection that consumes fanout queues (remote control): kombu's own (`client.pubsub()`, with
        the client's event dispatcher and key prefix), with bounded reads."""
        pubsub = kombu_redis.Channel.subclient.func(self)
        pubsub.__class__ = bounded(type(pubsub))
        pubsub.read_timeout = self.socket_timeout or DEFAULT_PUBSUB_READ_TIMEOUT_SECONDS
        return pubsub


class Transport(kombu_redis.Transport):
    Channel = Channel

"""The broker's transport (pisa_site/broker.py): a remote-control read on the pub/sub connection gives up when nothing
comes, instead of holding a worker's event loop, and so its task fetching, forever. Against the suite's real Redis."""

from __future__ import annotations

import threading
import uuid

import redis
from django.conf import settings
from kombu import Connection
from kombu.transport.redis import PrefixedRedisPubSub
from redis.client import PubSub

from pisa_site.broker import BoundedPubSub, BoundedReads, Transport
from pisa_site.celery import app


def read_in_background(pubsub) -> tuple[threading.Thread, list]:
    answers: list = []
    reader = threading.Thread(target=lambda: answers.append(pubsub.parse_response()), daemon=True)
    reader.start()
    return reader, answers


def bounded_pubsub(pool, read_timeout: float) -> BoundedPubSub:
    pubsub = BoundedPubSub(pool)
    pubsub.read_timeout = read_timeout
    return pubsub


def subscribed(pubsub, channel: str):
    pubsub.subscribe(channel)
    assert pubsub.parse_response(block=False, timeout=5)[0] == b"subscribe"  # the confirmation: nothing else waits
    return pubsub


def test_celery_reaches_redis_through_the_bounded_transport_under_its_usual_name():
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        # Flower picks its broker client by the URL's scheme; logs show the URL.
        assert connection.transport_cls == "redis" and connection.as_uri().startswith("redis://")
        subclient = connection.default_channel.subclient
        assert isinstance(subclient, BoundedReads) and isinstance(subclient, PubSub)
        assert subclient.read_timeout == settings.REDIS_SOCKET_TIMEOUT_SECONDS


def test_kombus_key_prefixed_pubsub_keeps_its_prefix_with_bounded_reads():
    with Connection(settings.CELERY_BROKER_URL, transport_options={"global_keyprefix": "pisa-test:"}) as connection:
        subclient = connection.default_channel.subclient
        assert isinstance(subclient, BoundedReads) and isinstance(subclient, PrefixedRedisPubSub)


def test_a_pubsub_read_with_nothing_to_read_returns_instead_of_waiting_forever():
    channel = f"pisa-test-{uuid.uuid4().hex}"
    pool = redis.ConnectionPool.from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5)
    bounded = subscribed(bounded_pubsub(pool, 0.5), channel)

    reader, answers = read_in_background(bounded)
    reader.join(timeout=30)

    assert not reader.is_alive() and answers == [None]
    bounded.close()


def test_a_message_is_still_read_whole():
    channel = f"pisa-test-{uuid.uuid4().hex}"
    pool = redis.ConnectionPool.from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5)
    bounded = subscribed(bounded_pubsub(pool, 0.5), channel)
    redis.Redis(connection_pool=pool).publish(channel, b"ping")

    assert bounded.parse_response() == [b"message", channel.encode(), b"ping"]
    bounded.close()


def test_redis_py_alone_would_wait_until_a_message_came():
    """Why the transport exists: the same read on redis-py's own PubSub ignores the socket timeout. Should a release
    of redis-py stop doing that, this fails, and pisa_site/broker.py can go."""
    channel = f"pisa-test-{uuid.uuid4().hex}"
    pool = redis.ConnectionPool.from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5)
    stock = subscribed(PubSub(pool), channel)

    reader, answers = read_in_background(stock)
    reader.join(timeout=3)  # six socket timeouts
    still_waiting = reader.is_alive()
    redis.Redis(connection_pool=pool).publish(channel, b"wake up")  # let it go
    reader.join(timeout=30)

    assert still_waiting and answers == [[b"message", channel.encode(), b"wake up"]]
    stock.close()


def test_a_read_on_a_closed_connection_returns_at_once_and_leaves_it_for_kombu_to_reopen():
    """What a Redis restart left behind: the socket closed under an open-looking connection (seen in the chaos loop:
    fileno -1, kombu not listening). Reading it must not reopen it and wait: kombu reopens and subscribes itself."""
    channel = f"pisa-test-{uuid.uuid4().hex}"
    pool = redis.ConnectionPool.from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5)
    bounded = subscribed(bounded_pubsub(pool, 60), channel)  # a wait would show as one
    bounded.connection._sock.close()

    reader, answers = read_in_background(bounded)
    reader.join(timeout=20)

    assert not reader.is_alive() and answers == [None]
    # Closed the way redis-py closes it: under kombu, that runs the hook that drops the socket's poll registration.
    assert bounded.connection._sock is None
    bounded.close()

"""The workers' consumer survives closing a broken connection whose transport kombu already released (celery 5.7)."""

from __future__ import annotations

import pytest
from django.conf import settings
from kombu import Connection, Exchange, Queue

from pisa_site.celery import app
import logging

from pisa_site.worker_consumer import _tolerating_a_released_transport, worker_connection_errors

QUEUE = Queue("pisa-test-consumer", Exchange("pisa-test-consumer"), "pisa-test-consumer")


def _connection_with_a_message_in_flight_and_its_transport_released(received: list | None = None) -> Connection:
    """What the chaos test caught after a Redis restart: a delivered, unacknowledged (acks_late) message on the
    default channel, and a transport whose client kombu has already let go of."""
    with Connection(settings.CELERY_BROKER_URL) as producer_connection:
        producer_connection.Producer().publish({"n": 1}, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key,
                                               declare=[QUEUE])
    connection = Connection(settings.CELERY_BROKER_URL)
    received = [] if received is None else received
    consumer = connection.Consumer([QUEUE], callbacks=[lambda body, message: received.append(message)],
                                   accept=["json"])
    consumer.consume()
    connection.drain_events(timeout=5)
    assert received, "the message was not delivered"
    connection.transport.client = None
    return connection


def test_closing_it_raises_the_error_that_made_workers_exit():
    connection = _connection_with_a_message_in_flight_and_its_transport_released()
    with pytest.raises(AttributeError, match="hostname"):
        connection.close()


def test_the_workers_consumer_closes_it_without_raising(caplog):
    connection = _connection_with_a_message_in_flight_and_its_transport_released()

    _tolerating_a_released_transport(connection.close)()

    assert "Redis redelivers them after the visibility timeout" in caplog.text


def test_a_late_acknowledgement_through_it_is_logged_instead_of_ending_the_worker(caplog):
    received: list = []
    connection = _connection_with_a_message_in_flight_and_its_transport_released(received)
    [message] = received
    logger = logging.getLogger("test")
    _tolerating_a_released_transport(connection.close)()  # the worker closed the broken connection; the task ends

    with pytest.raises(AttributeError, match="hostname"):  # with kombu's own connection errors: the crash
        message.ack_log_error(logger, connection.connection_errors)
    message.ack_log_error(logger, worker_connection_errors(connection))  # with the workers'

    assert "Couldn't ack" in caplog.text


def test_the_workers_use_it():
    assert app.conf.worker_consumer == "pisa_site.worker_consumer:Consumer"

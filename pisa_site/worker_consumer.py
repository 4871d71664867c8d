"""The Celery workers' consumer, with one defect of celery 5.7 / kombu 5.7 worked around (settings.py names it).

When the broker connection breaks, the consumer closes it before reconnecting, and kombu releases its transport.
Two things then reach Redis through that released transport and raise
`AttributeError: 'NoneType' object has no attribute 'hostname'` (kombu/transport/redis.py `_connparams`):
closing the channel, which tries to give back the acks_late messages in flight, and the late acknowledgement of a
task that was running across the break. Both escape celery's handlers, which only expect connection errors, and the
worker exits with "Unrecoverable error" instead of reconnecting. Nothing is lost by treating the error as a broken connection: the messages stay in Redis's unacked set,
which gives them back after the visibility timeout (their tasks are idempotent), and the fan-out and the metrics
sweep queue fresh work long before that.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

logger = logging.getLogger(__name__)


def worker_connection_errors(conninfo) -> tuple[type[BaseException], ...]:
    """The errors a worker treats as a broken broker connection: kombu's, and the AttributeError above. Celery hands
    them to every request's acknowledgement (which then logs and moves on) and to its consumer loop (which then
    reconnects)."""
    return tuple(conninfo.connection_errors) + (AttributeError,)


class Consumer(CeleryConsumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connection_errors = worker_connection_errors(self.conninfo)

    def on_connection_error_after_connected(self, exc):
        connection = self.connection
        if connection is not None:
            connection.close = _tolerating_a_released_transport(connection.close)
        super().on_connection_error_after_connected(exc)


def _tolerating_a_released_transport(close):
    def close_broken_connection():
        try:
            close()
        except AttributeError as error:
            logger.warning("broker connection closed without giving back its unacknowledged messages (%s): Redis "
                           "redelivers them after the visibility timeout", error)

    return close_broken_connection

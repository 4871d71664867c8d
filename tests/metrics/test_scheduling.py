"""A load announces that a country changed; the metrics queue one refresh for it, however many loads asked."""

import redis
from django.conf import settings
from django.db import transaction

from ingestion.warehouse import Source, country_changed
from metrics.scheduling import refresh_request


def test_refresh_requests_for_a_country_are_coalesced_while_one_is_pending(db):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("metrics")
    assert [refresh_request(country="ARG") for _ in range(3)] == [True, False, False]
    assert refresh_request(country="AUS") is True
    assert broker.llen("metrics") == 2  # one queued message per country, no matter how many loads asked


def test_a_country_changed_announcement_queues_its_refresh(transactional_db):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("metrics")
    with transaction.atomic():
        transaction.on_commit(lambda: country_changed.send(sender=Source, country="BEL"))
    assert broker.llen("metrics") == 1

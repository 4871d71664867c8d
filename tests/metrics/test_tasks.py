"""The metrics queue's tasks with a real worker: a refresh message that is lost does not leave a country's changes
unfolded for good."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
from django.utils import timezone

from metrics.scheduling import pending_key
from pisa_site.cache import redis_client
from ingestion.models import StudentChange
from ingestion.pipeline import source_sync
from metrics.tasks import refresh_overdue

from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_country_whose_refresh_message_was_lost_is_folded_by_the_overdue_sweep(source_db, celery_worker_process,
                                                                                 settings):
    alb = source_db("ALB")
    alb.insert_students(5)
    source_sync(source_id=alb.source.pk)  # on commit: the pending mark, and a refresh message...
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("metrics")  # ...which is lost
    unfolded = StudentChange.objects.filter(country="ALB")
    celery_worker_process("metrics")

    assert unfolded.count() == 5
    assert refresh_overdue() == []  # the changes are recent: their own request may still be on its way
    unfolded.update(recorded_at=timezone.now() - dt.timedelta(seconds=settings.METRICS_OVERDUE_SECONDS + 1))
    assert refresh_overdue() == []  # overdue, but the pending mark holds every request back...
    redis_client().delete(pending_key("ALB"))  # ...until it expires (PENDING_TTL_SECONDS)
    assert refresh_overdue() == ["ALB"]
    assert wait_until(lambda: not unfolded.exists())
    assert refresh_overdue() == []

"""Celery tasks of the metrics queue: thin wrappers that own coalescing and time limits."""

from __future__ import annotations

from celery import shared_task

from ingestion.followup import pending_key
from ingestion.locks import _client
from metrics.services import country_metrics_refresh

REFRESH_SOFT_TIME_LIMIT = 60
REFRESH_TIME_LIMIT = 90


@shared_task(name="metrics.refresh_country", ignore_result=True, acks_late=True,
             soft_time_limit=REFRESH_SOFT_TIME_LIMIT, time_limit=REFRESH_TIME_LIMIT)
def refresh_country(country: str) -> dict:
    # Clear the pending mark first: a load committing from now on queues a new refresh, which this one might miss.
    _client().delete(pending_key(country))
    result = country_metrics_refresh(country=country)
    return {"country": country, "changes": result.changes, "seconds": round(result.seconds, 3)}

"""Celery tasks of the metrics queue: thin wrappers that own coalescing and time limits."""

from __future__ import annotations

import datetime as dt

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from ingestion.warehouse import countries_with_stale_figures
from metrics.scheduling import refresh_request, refresh_started
from metrics.analysis.request import AnalysisSpec
from metrics.services import (PERCENTILES_SECONDS, country_analysis_refresh, country_distribution_refresh,
                              country_metrics_refresh)
from metrics.warehouse import countries_with_changes_recorded_before, countries_with_percentiles_behind

REFRESH_SOFT_TIME_LIMIT = 60
REFRESH_TIME_LIMIT = 90


@shared_task(name="metrics.refresh_country", ignore_result=True, acks_late=True,
             soft_time_limit=REFRESH_SOFT_TIME_LIMIT, time_limit=REFRESH_TIME_LIMIT)
def refresh_country(country: str) -> dict:
    refresh_started(country=country)  # first: a load committing from now on queues a new refresh
    result = country_metrics_refresh(country=country)
    return {"country": country, "changes": result.changes, "seconds": round(result.seconds, 3)}


@shared_task(name="metrics.refresh_overdue", ignore_result=True, soft_time_limit=10, time_limit=15)
def refresh_overdue() -> list[str]:
    """Run by beat every METRICS_SWEEP_SECONDS: request a refresh for every country whose changes have waited longer
    than METRICS_OVERDUE_SECONDS. A refresh message can be lost (one reserved by a metrics worker when Redis went
    away is only redelivered after the visibility timeout), and the pending mark would then hold back the requests of
    later loads until it expires; a country that then receives no new rows would never be folded. Likewise for a
    country whose percentiles are due but no longer receives rows (or whose refreshes found the percentiles lock
    taken), and for a country whose last refresh failed."""
    now = timezone.now()
    overdue = set(countries_with_changes_recorded_before(now - dt.timedelta(seconds=settings.METRICS_OVERDUE_SECONDS)))
    overdue.update(countries_with_percentiles_behind(computed_before=now - dt.timedelta(seconds=PERCENTILES_SECONDS)))
    overdue.update(countries_with_stale_figures())  # a failed refresh is retried, so that a fixed row heals it
    return [country for country in sorted(overdue) if refresh_request(country=country)]


DISTRIBUTION_SOFT_TIME_LIMIT = 90
DISTRIBUTION_TIME_LIMIT = 110  # below the claim's life (metrics.services.DISTRIBUTION_CLAIM_SECONDS)


@shared_task(name="metrics.distribution_country", ignore_result=True, acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=DISTRIBUTION_SOFT_TIME_LIMIT, time_limit=DISTRIBUTION_TIME_LIMIT)
def distribution_country(variable: str, country: str) -> None:
    """On the analysis queue, apart from the refreshes: it reads every student of a country (seconds at PISA size),
    and a refresh must never wait behind it. Idempotent: a redelivered message recomputes the same entry."""
    country_distribution_refresh(variable=variable, country=country)


ANALYSIS_SOFT_TIME_LIMIT = 90
ANALYSIS_TIME_LIMIT = 110  # below the claim's life (metrics.services.ANALYSIS_CLAIM_SECONDS)


@shared_task(name="metrics.analysis_country", ignore_result=True, acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=ANALYSIS_SOFT_TIME_LIMIT, time_limit=ANALYSIS_TIME_LIMIT)
def analysis_country(analysis: dict, country: str) -> None:
    """One country's part of an open analysis, on the analysis queue (it reads every student of the country).
    Idempotent: a redelivered message recomputes the same entry."""
    country_analysis_refresh(spec=AnalysisSpec.from_dict(analysis), country=country)

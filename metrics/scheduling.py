"""When the metrics refresh: one refresh per changed country, coalesced, queued next to the task it schedules.

Ingestion announces `ingestion.warehouse.country_changed`; `country_changed_received` (connected in
metrics/apps.py) queues `metrics.refresh_country`, unless one is already pending for that country.
"""

from __future__ import annotations

from pisa_site.cache import redis_client
from pisa_site.celery import app

# While a refresh for a country is queued and not yet started, further requests for it are dropped: the queued one
# will read every change committed before it runs. The mark expires in case a queued message is lost (then
# metrics.refresh_overdue asks again); a refresh takes tens of milliseconds, so one still queued after this long is
# stuck or lost, and a second one is harmless (refreshes are idempotent).
PENDING_TTL_SECONDS = 10
REFRESH_TASK = "metrics.refresh_country"


def pending_key(country: str) -> str:
    return f"pisa:metrics:pending:{country}"


def refresh_request(*, country: str) -> bool:
    """Queue a metrics refresh for a country unless one is already pending. Returns True if one was queued."""
    if not redis_client().set(pending_key(country), 1, nx=True, ex=PENDING_TTL_SECONDS):
        return False
    app.send_task(REFRESH_TASK, args=[country], queue="metrics")
    return True


def refresh_started(*, country: str) -> None:
    """Clear the pending mark: a load committing from now on queues a new refresh, which this one might miss."""
    redis_client().delete(pending_key(country))


def country_changed_received(sender, *, country: str, now: bool = False, **kwargs) -> None:
    if now:
        from metrics.services import country_metrics_refresh

        country_metrics_refresh(country=country)
    else:
        refresh_request(country=country)

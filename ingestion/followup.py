"""What ingestion asks of the metrics after a load: one refresh per country, coalesced."""

from __future__ import annotations

from pisa_site.celery import app

from ingestion.locks import _client

# While a refresh for a country is queued and not yet started, further requests for it are dropped: the queued one
# will read every change committed before it runs. The mark expires in case a queued message is lost (then
# metrics.refresh_overdue asks again); a refresh takes tens of milliseconds, so one still queued after this long is
# stuck or lost, and a second one is harmless (refreshes are idempotent).
PENDING_TTL_SECONDS = 10
REFRESH_TASK = "metrics.refresh_country"


def pending_key(country: str) -> str:
    return f"pisa:metrics:pending:{country}"


def metrics_refresh_request(*, country: str) -> bool:
    """Queue a metrics refresh for a country unless one is already pending. Returns True if one was queued."""
    if not _client().set(pending_key(country), 1, nx=True, ex=PENDING_TTL_SECONDS):
        return False
    app.send_task(REFRESH_TASK, args=[country], queue="metrics")
    return True

"""Reads of the ingestion app: the source registry and where each source stands."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from ingestion.models import Source, SourceState
from ingestion.services import SourceNotFoundError


def source_list(*, enabled: bool | None = None) -> QuerySet[Source]:
    sources = Source.objects.all()
    return sources if enabled is None else sources.filter(enabled=enabled)


def source_get(*, code: str) -> Source:
    try:
        return Source.objects.get(code=code)
    except Source.DoesNotExist:
        raise SourceNotFoundError(f"no source with code {code!r} (see `manage.py sources list`)") from None


def source_statuses() -> list[dict]:
    """Where every source stands, for the API, the admin and the dashboard's pipeline panel."""
    now = timezone.now()
    statuses = []
    for source in Source.objects.select_related("state").order_by("code"):
        state = getattr(source, "state", None) or SourceState(source=source)
        statuses.append({
            "code": source.code,
            "name": source.name,
            "enabled": source.enabled,
            "url": source.safe_url,
            "poll_interval_seconds": source.poll_interval_seconds,
            "rows_loaded": state.rows_loaded,
            "quarantined_count": state.quarantined_count,
            "source_row_count": state.source_row_count,
            "newest_created_at": state.newest_created_at,
            # As specified: now minus the newest created_at loaded (grows while a source is idle, too).
            "seconds_behind": (now - state.newest_created_at).total_seconds() if state.newest_created_at else None,
            "last_success_at": state.last_success_at,
            "last_batch_size": state.last_batch_size,
            "last_batch_seconds": state.last_batch_seconds,
            "rows_per_second": (state.last_batch_size / state.last_batch_seconds
                                if state.last_batch_seconds else None),
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
            "consecutive_failures": state.consecutive_failures,
            "retry_at": state.retry_at,
        })
    return statuses

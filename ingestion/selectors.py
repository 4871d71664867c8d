"""Reads of the ingestion app: the source registry, where each source stands, and what it could not load."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from ingestion.models import QuarantinedRow, Source, SourceState
from ingestion.services import SourceNotFoundError
from pisa_site.errors import NotFound


class QuarantinedRowNotFoundError(NotFound):
    pass


def source_list(*, enabled: bool | None = None) -> QuerySet[Source]:
    sources = Source.objects.all()
    return sources if enabled is None else sources.filter(enabled=enabled)


def source_get(*, code: str) -> Source:
    if "\x00" in code:  # PostgreSQL text cannot hold NUL: no source has it (and the query would fail)
        raise SourceNotFoundError(f"no source with code {code[:60]!r}")
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
            **source_lag(state, now),
            "last_success_at": state.last_success_at,
            "last_batch_size": state.last_batch_size,
            "last_batch_seconds": state.last_batch_seconds,
            "rows_per_second": (state.last_batch_size / state.last_batch_seconds
                                if state.last_batch_seconds else None),
            "figures_error": state.figures_error,
            "figures_stale_since": state.figures_stale_since,
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
            "consecutive_failures": state.consecutive_failures,
            "retry_at": state.retry_at,
        })
    return statuses


def quarantined_row_list(*, source: Source) -> QuerySet[QuarantinedRow]:
    """A source's quarantined rows, in source order (ids only grow, so a page stays put while new ones arrive)."""
    return QuarantinedRow.objects.filter(source=source).order_by("source_row_id").defer("raw")


def quarantined_row_get(*, source: Source, source_row_id: int) -> QuarantinedRow:
    try:
        return QuarantinedRow.objects.get(source=source, source_row_id=source_row_id)
    except QuarantinedRow.DoesNotExist:
        raise QuarantinedRowNotFoundError(
            f"row {source_row_id} of {source.code} is not in quarantine (it loaded, was deleted, or never existed)"
        ) from None


def countries_with_stale_figures() -> dict[str, str]:
    """Countries whose figures are served stale because their refresh failed -> the reason."""
    return dict(SourceState.objects.exclude(figures_error="").values_list("source__code", "figures_error"))


def country_reloading(country: str) -> bool:
    """Whether a source of the country is being compared in full (ingestion.pipeline): its figures wait until done."""
    return SourceState.objects.filter(source__code=country, reloading=True).exists()


def source_lag(state: SourceState, now) -> dict:
    """`lag_seconds`: 0 when the warehouse holds every source row, else the age of the oldest one not loaded yet;
    `rows_behind`: how many; `idle_seconds`: the age of the newest row loaded (a quiet source grows it, and is not
    behind)."""
    pending = state.oldest_pending_created_at if state.rows_behind else None
    return {
        "lag_seconds": max(0.0, (now - pending).total_seconds()) if pending else 0.0,
        "rows_behind": state.rows_behind,
        "idle_seconds": (now - state.newest_created_at).total_seconds() if state.newest_created_at else None,
    }


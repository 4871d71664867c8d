"""Writes to the source registry."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from ingestion.models import Source, SourceState
from pisa_site.errors import NotFound


class SourceNotFoundError(NotFound):
    pass


@transaction.atomic
def source_register(
    *,
    code: str,
    name: str,
    url: str,
    table_name: str = "responses",
    cursor_columns: str = "created_at,id",
    poll_interval_seconds: float = 1.0,
    enabled: bool | None = None,
) -> Source:
    """Add a source, or update the one with this code. `enabled=None` keeps an existing source's switch (new: on),
    so re-registering (the simulator does it at every start) never re-enables a source an operator turned off."""
    source = Source.objects.select_for_update().filter(code=code).first() or Source(code=code)
    source.name = name
    source.url = url
    source.table_name = table_name
    source.cursor_columns = cursor_columns
    source.poll_interval_seconds = poll_interval_seconds
    if enabled is not None:
        source.enabled = enabled
    source.full_clean()
    source.save()
    return source


def source_set_enabled(*, code: str, enabled: bool) -> Source:
    updated = Source.objects.filter(code=code).update(enabled=enabled)
    if not updated:
        raise SourceNotFoundError(f"no source with code {code!r}")
    return Source.objects.get(code=code)


def country_figures_status_set(*, country: str, error: str) -> dt.datetime | None:
    """Record that a country's figures could not be refreshed (`error`), or that they were again (""). Returns since
    when they have been stale (None when not). Writes only when the status changes."""
    states = SourceState.objects.filter(source__code=country)
    if not error:
        states.exclude(figures_error="").update(figures_error="", figures_stale_since=None)
        return None
    since = states.exclude(figures_stale_since=None).values_list("figures_stale_since", flat=True).first()
    if since is None:
        since = timezone.now()
    states.update(figures_error=error[:2000], figures_stale_since=since)
    return since


def country_students_recheck(*, country: str) -> int:
    """Check the stored students of a country's sources against today's plausibility rules; those that break one move
    to the quarantine. Returns how many moved."""
    from ingestion.pipeline import source_students_recheck

    return sum(source_students_recheck(source=source).quarantined for source in Source.objects.filter(code=country))

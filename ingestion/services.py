"""Writes to the source registry."""

from __future__ import annotations

from django.db import transaction

from ingestion.models import Source


class SourceNotFoundError(LookupError):
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

"""Reads of the source registry."""

from __future__ import annotations

from django.db.models import QuerySet

from ingestion.models import Source
from ingestion.services import SourceNotFoundError


def source_list(*, enabled: bool | None = None) -> QuerySet[Source]:
    sources = Source.objects.all()
    return sources if enabled is None else sources.filter(enabled=enabled)


def source_get(*, code: str) -> Source:
    try:
        return Source.objects.get(code=code)
    except Source.DoesNotExist:
        raise SourceNotFoundError(f"no source with code {code!r} (see `manage.py sources list`)") from None

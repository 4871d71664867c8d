"""The warehouse's public face: what the other apps (the metrics above all) may use of what ingestion keeps.

Everything here is a stable name; the rest of `ingestion` is its own business. The metrics read the students and
the change log through these models and the layout, take a country's write lock to read them consistently, follow
`country_changed` to know when to refresh, and report back through `country_figures_status_set`.
"""

from __future__ import annotations

from django.db.models import Max, Sum
from django.dispatch import Signal

from ingestion.layout import (ANALYSIS_COLUMNS, ANALYSIS_VARIABLES, COVARIATES, PACKED_COLUMNS, PLAUSIBLE_VALUES,
                              SCORE_DOMAINS, WEIGHTS, pisa_variables)
from ingestion.load import country_write_lock
from ingestion.models import Source, SourceState, Student, StudentChange
from ingestion.selectors import countries_with_stale_figures, country_reloading
from ingestion.services import country_figures_status_set, country_students_recheck

# Sent after the commit of every write that changed a country's students (keyword argument `country`), and by
# `manage.py ingest` with `now=True` once a source is loaded: the receiver may refresh at once, in the caller.
country_changed = Signal()


def country_freshness(country: str) -> dict:
    """How current a country's students are: newest created_at loaded, rows loaded and quarantined, and whether its
    figures are stale (their refresh failed since; `country_figures_status_set`)."""
    aggregate = SourceState.objects.filter(source__code=country).aggregate(
        newest=Max("newest_created_at"), rows=Sum("rows_loaded"), quarantined=Sum("quarantined_count"),
        stale_since=Max("figures_stale_since"), error=Max("figures_error"))
    newest, stale_since = aggregate["newest"], aggregate["stale_since"]
    return {"newest_created_at": newest.isoformat() if newest else None, "rows_loaded": aggregate["rows"] or 0,
            "quarantined": aggregate["quarantined"] or 0,
            "stale": {"since": stale_since.isoformat(), "reason": aggregate["error"]} if stale_since else None}


def countries_with_students() -> set[str]:
    return set(Student.objects.values_list("country", flat=True).distinct())


__all__ = [
    "ANALYSIS_COLUMNS", "ANALYSIS_VARIABLES", "COVARIATES", "PACKED_COLUMNS", "PLAUSIBLE_VALUES", "SCORE_DOMAINS", "WEIGHTS", "Source", "Student",
    "StudentChange", "countries_with_stale_figures", "countries_with_students", "country_changed",
    "country_figures_status_set", "country_freshness", "country_reloading", "country_students_recheck",
    "country_write_lock", "pisa_variables",
]

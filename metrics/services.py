"""Writes of the metrics app: fold the warehouse's change log into each country's state and publish it."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from ingestion.load import country_write_lock
from ingestion.models import SourceState, Student
from metrics import cache
from metrics.estimators import country_statistics, score_percentiles
from metrics.models import CountryMetricsState
from metrics.sufficient import CountryState
from metrics.warehouse import changes_after, country_scores, country_students, prune_changes

logger = logging.getLogger(__name__)

PERCENTILES_SECONDS = getattr(settings, "METRICS_PERCENTILES_SECONDS", 30)


@dataclass
class RefreshResult:
    country: str
    changes: int
    seconds: float
    percentiles_recomputed: bool


def _percentiles(weights, pv, school_id) -> dict:
    estimates = score_percentiles(weights=weights, pv=pv, school_id=school_id)
    return {domain: {key: e.to_dict() for key, e in values.items()} for domain, values in estimates.items()}


def _hours_of_day(state: CountryState) -> dict[str, int]:
    """Submissions per hour of the day (UTC) over all time, from the state's per-minute counts."""
    counts = dict.fromkeys((f"{h:02d}:00" for h in range(24)), 0)
    if len(state.minutes):
        hours = (state.minutes * 60 // 3600) % 24
        for hour, count in zip(hours.tolist(), state.minute_counts[:, 0].tolist()):
            counts[f"{hour:02d}:00"] += count
    return counts


def _freshness(country: str) -> dict:
    states = SourceState.objects.filter(source__code=country)
    aggregate = states.aggregate(newest=Max("newest_created_at"), rows=Sum("rows_loaded"),
                                 quarantined=Sum("quarantined_count"))
    newest = aggregate["newest"]
    return {"newest_created_at": newest.isoformat() if newest else None, "rows_loaded": aggregate["rows"] or 0,
            "quarantined": aggregate["quarantined"] or 0}


def _document(country: str, state: CountryState, percentiles: dict | None, version: int) -> dict:
    from codebook.selectors import country_names

    statistics = country_statistics(state)
    for domain, values in (percentiles or {}).items():
        statistics["scores"][domain].update(values)
    return {
        "country": country,
        "name": country_names().get(country, country),
        "version": version,
        "generated_at": timezone.now().isoformat(),
        "freshness": _freshness(country),
        "submissions_by_hour_of_day": _hours_of_day(state),
        "statistics": statistics,
    }


def _locked_state_with_changes(country: str) -> tuple[CountryMetricsState, CountryState, int, int]:
    """Inside a transaction: lock the country, and fold its pending changes into its stored state.
    Returns (row, folded state, number of changes, newest change id); the caller saves."""
    with connection.cursor() as cursor:
        country_write_lock(cursor.cursor, country=country)
    row, _ = CountryMetricsState.objects.select_for_update().get_or_create(
        country=country, defaults={"state": CountryState.empty().to_bytes()})
    state = CountryState.from_bytes(bytes(row.state))
    added, removed, newest_change = changes_after(country, row.last_change_id)
    changes = len(added) + len(removed)
    if changes:
        # Add before subtracting: a row added and then replaced within one delta must be there to be removed.
        state = state + CountryState.from_batch(added) - CountryState.from_batch(removed)
    return row, state, changes, newest_change


def country_metrics_refresh(*, country: str, force_percentiles: bool = False) -> RefreshResult:
    """Fold the new changes of a country into its state and publish its statistics. Idempotent: changes are read
    by id after the stored bookmark, in the same transaction that saves the new state and bookmark."""
    started = time.perf_counter()
    with transaction.atomic():
        row, state, changes, newest_change = _locked_state_with_changes(country)
        if changes:
            row.state = state.to_bytes()
            prune_changes(country, newest_change)
            row.last_change_id = newest_change
        due = (row.percentiles_at is None
               or timezone.now() - row.percentiles_at > dt.timedelta(seconds=PERCENTILES_SECONDS))
        recompute = force_percentiles or (changes and due) or row.percentiles is None
        if recompute:
            # Only the weights, scores and schools of every student: a binary COPY read in place (metrics/warehouse.py)
            row.percentiles = _percentiles(*country_scores(country)) if state.n_students() else None
            row.percentiles_at = timezone.now()
        # Only what changed: the ~400 KB state when changes were folded, the percentiles on their own clock.
        changed_fields = [*(["state", "last_change_id"] if changes else []),
                          *(["percentiles", "percentiles_at"] if recompute else [])]
        if changed_fields:
            row.save(update_fields=[*changed_fields, "updated_at"])
        document = _document(country, state, row.percentiles, row.last_change_id)
    cache.country_document_publish(country=country, document=document, version=row.last_change_id)
    return RefreshResult(country=country, changes=changes, seconds=time.perf_counter() - started,
                         percentiles_recomputed=bool(recompute))


@dataclass
class RebuildResult:
    country: str
    students: int
    differences: list[str]


def country_metrics_rebuild(*, country: str, verify: bool = False) -> RebuildResult:
    """Recompute a country's state from every student in the warehouse. With verify, report how the incremental
    state differs from it (nothing beyond float rounding is expected) and leave the incremental state in place."""
    with transaction.atomic():
        # Pending changes are folded first, so both sides describe the same warehouse.
        row, incremental, _, newest_change = _locked_state_with_changes(country)
        students = country_students(country)
        rebuilt = CountryState.from_batch(students)
        differences = incremental.difference(rebuilt) if verify else []
        if not verify:
            row.state = rebuilt.to_bytes()
            row.percentiles = (_percentiles(students.weights, students.pv, students.school_id) if len(students)
                               else None)
            row.percentiles_at = timezone.now()
        else:
            row.state = incremental.to_bytes()
        prune_changes(country, newest_change)
        row.last_change_id = newest_change
        row.save()
    country_metrics_refresh(country=country)
    return RebuildResult(country=country, students=len(students), differences=differences)


def countries_with_data() -> list[str]:
    codes = set(Student.objects.values_list("country", flat=True).distinct())
    codes.update(CountryMetricsState.objects.values_list("country", flat=True))
    return sorted(codes)

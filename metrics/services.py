"""Writes of the metrics app: fold the warehouse's change log into each country's state and publish it."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ingestion.warehouse import (countries_with_students, country_figures_status_set, country_freshness,
                                 country_reloading, country_students_recheck, country_write_lock,
                                 pisa_variables)
from metrics import cache
from metrics.analysis.data import country_changes, country_data, country_data_at_change, rows_of
from metrics.analysis.engine import country_analysis, state_analysis
from metrics.analysis.request import AnalysisSpec
from metrics.analysis.state import AnalysisState, foldable
from metrics.distribution import country_distribution, variable_position
from metrics.estimators import country_statistics, score_percentiles
from metrics.models import CountryMetricsState
from metrics.sufficient import CountryState
from metrics.warehouse import changes_after, country_scores, country_students, newest_change_id, prune_changes
from pisa_site.locks import redis_lock

logger = logging.getLogger(__name__)

PERCENTILES_SECONDS = settings.METRICS_PERCENTILES_SECONDS
# At most one percentile computation at a time in the whole deployment, and never under a country's write lock. Each
# reads every student of its country (~0.3 s at PISA size); run inside the refresh, with every country due at about the
# same moment, they took every metrics worker for seconds and the dashboards' counts waited behind them. A refresh
# that finds the lock taken publishes its counts and leaves the percentiles to a later one.
PERCENTILES_LOCK = "metrics:percentiles"
PERCENTILES_LOCK_SECONDS = 60


@dataclass
class RefreshResult:
    country: str
    changes: int
    seconds: float
    percentiles_recomputed: bool
    error: str = ""  # the refresh failed: the last good figures stay published, marked stale with this reason


def _percentiles(weights, pv, school_id) -> dict | None:
    """The published P10/P90 of each domain; None for a country without students."""
    if not len(weights):
        return None
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
        "freshness": country_freshness(country),
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


def _published_version(row: CountryMetricsState, document: dict) -> str:
    """What the API's ETags are made of: the change-log position, which percentiles the document carries, and since
    when it is stale, if it is (the same figures, marked stale, are a new answer)."""
    stamp = int(row.percentiles_at.timestamp() * 1_000_000) if row.percentiles_at else 0
    stale = document["freshness"]["stale"]
    return f"{row.last_change_id}.{stamp}" + (f".stale-{stale['since']}" if stale else "")


def _percentiles_store(row: CountryMetricsState, percentiles: dict | None, covered: int, *, save: bool = True) -> None:
    """Set the row's percentiles as covering the change log up to `covered`."""
    row.percentiles, row.percentiles_at, row.percentiles_change_id = percentiles, timezone.now(), covered
    if save:
        row.save(update_fields=["percentiles", "percentiles_at", "percentiles_change_id", "updated_at"])


def _document_publish(row: CountryMetricsState, state: CountryState) -> None:
    """Publish the country's document from this state and the row's percentiles. Called under the row's lock, so that
    documents go out in the order their states were saved."""
    document = _document(row.country, state, row.percentiles, row.last_change_id)
    cache.country_document_publish(country=row.country, version=_published_version(row, document), document=document)


def _percentiles_due(row: CountryMetricsState) -> bool:
    """Never computed; or computed before the last change folded, and either absent (the country had no students
    then) or older than PERCENTILES_SECONDS."""
    if row.percentiles_at is None:
        return True
    if row.percentiles_change_id == row.last_change_id:
        return False
    return row.percentiles is None or timezone.now() - row.percentiles_at > dt.timedelta(seconds=PERCENTILES_SECONDS)


def country_metrics_refresh(*, country: str, force_percentiles: bool = False) -> RefreshResult:
    """Fold the new changes of a country into its state and publish its statistics; then, when they are due, its
    percentiles (see `country_percentiles_refresh`). Idempotent: changes are read by id after the stored bookmark, in
    the same transaction that saves the new state and bookmark.

    Never frozen by data: when the fold fails (a change no estimate can take), the state is rebuilt from the students
    the warehouse holds now, which heals it once the offending row was fixed or removed; when that fails too, the last
    good figures stay published, marked stale with the reason (`_figures_stale`), and the sweep retries."""
    started = time.perf_counter()
    try:
        changes, percentiles_wanted = _fold_and_publish(country, force_percentiles)
    except ValueError as exc:  # StateMismatchError and the StudentBatch checks are ValueErrors
        logger.error("metrics refresh of %s failed (%s): rebuilding it from the warehouse", country, exc)
        try:
            rebuilt = country_metrics_rebuild(country=country)
        except ValueError as rebuild_exc:
            _figures_stale(country, f"refresh failed: {rebuild_exc}")
            return RefreshResult(country=country, changes=0, seconds=time.perf_counter() - started,
                                 percentiles_recomputed=False, error=str(rebuild_exc))
        return RefreshResult(country=country, changes=rebuilt.students, seconds=time.perf_counter() - started,
                             percentiles_recomputed=True)
    recomputed = percentiles_wanted and country_percentiles_refresh(country=country, force=force_percentiles)
    return RefreshResult(country=country, changes=changes, seconds=time.perf_counter() - started,
                         percentiles_recomputed=recomputed)


def _fold_and_publish(country: str, force_percentiles: bool) -> tuple[int, bool]:
    if country_reloading(country):
        return 0, False  # its changes wait in the log, and are folded and published at once when the repair is over
    with transaction.atomic():
        row, state, changes, newest_change = _locked_state_with_changes(country)
        if changes:
            row.state = state.to_bytes()  # the ~400 KB state only when changes were folded
            analyses_fold(country=country, after_id=row.last_change_id, up_to_id=newest_change)
            prune_changes(country, newest_change)
            row.last_change_id = newest_change
            row.save(update_fields=["state", "last_change_id", "updated_at"])
        if row.percentiles is not None and not state.n_students():  # emptied: no percentiles, nothing to compute
            _percentiles_store(row, None, row.last_change_id)
        country_figures_status_set(country=country, error="")
        # Published under the locks, so that two refreshes of a country publish in the order they folded. The cost: a
        # Redis that hangs holds the country's loads for its socket timeout (when Redis is down they stall anyway,
        # their broker being gone), and a commit failing after the publish leaves a document the next refresh redoes.
        _document_publish(row, state)
        return changes, force_percentiles or _percentiles_due(row)


def _figures_stale(country: str, reason: str) -> None:
    """Keep serving the country's last good figures, marked stale with `reason`."""
    country_figures_status_set(country=country, error=reason)
    with transaction.atomic():
        row = CountryMetricsState.objects.select_for_update().filter(country=country).first()
        if row is not None:
            _document_publish(row, CountryState.from_bytes(bytes(row.state)))


def country_percentiles_refresh(*, country: str, force: bool = False) -> bool:
    """Recompute a country's score percentiles from all its students, and publish them. Runs outside the country's
    write lock: its loads and refreshes go on meanwhile. Unless `force`, does nothing and returns False when another
    computation holds the deployment's percentiles lock."""
    with redis_lock(PERCENTILES_LOCK, token=uuid.uuid4().hex, ttl_seconds=PERCENTILES_LOCK_SECONDS) as lock:
        if not (lock.acquired or force):
            return False
        # Read first: the students read next hold at least every change up to it (a later one makes them due again).
        covered = CountryMetricsState.objects.filter(country=country).values_list("last_change_id", flat=True).first()
        percentiles = _percentiles(*country_scores(country))
    with transaction.atomic():
        row = CountryMetricsState.objects.select_for_update().get(country=country)
        if row.percentiles_change_id is not None and covered < row.percentiles_change_id:
            return False  # a rebuild or a forced computation covering later changes committed meanwhile: keep it
        _percentiles_store(row, percentiles, covered)
        _document_publish(row, CountryState.from_bytes(bytes(row.state)))
    return True


@dataclass
class RebuildResult:
    country: str
    students: int
    differences: list[str]


def country_metrics_rebuild(*, country: str, verify: bool = False) -> RebuildResult:
    """Recompute a country's state from every student in the warehouse. With verify, report how the incremental
    state differs from it (nothing beyond float rounding is expected) and leave the incremental state in place.

    Works whatever the data: stored students that no estimate can take (checked in under older rules) are moved to
    the quarantine first, with their reasons."""
    try:
        return _rebuild(country, verify)
    except ValueError:
        if not country_students_recheck(country=country):
            raise
        return _rebuild(country, verify)


def _rebuild(country: str, verify: bool) -> RebuildResult:
    with transaction.atomic():
        with connection.cursor() as cursor:
            country_write_lock(cursor.cursor, country=country)
        row, _ = CountryMetricsState.objects.select_for_update().get_or_create(
            country=country, defaults={"state": CountryState.empty().to_bytes()})
        students = country_students(country)
        rebuilt = CountryState.from_batch(students)
        newest_change = newest_change_id(country, row.last_change_id)
        differences = []
        if verify:
            try:  # pending changes folded first, so both sides describe the same warehouse
                _, incremental, _, newest_change = _locked_state_with_changes(country)
                differences = incremental.difference(rebuilt)
            except ValueError as exc:
                differences = [f"the incremental state cannot fold its pending changes: {exc}"]
                incremental = rebuilt
            row.state = incremental.to_bytes()
        else:
            row.state = rebuilt.to_bytes()
            _percentiles_store(row, _percentiles(students.weights, students.pv, students.school_id), newest_change,
                               save=False)  # saved with the rest below
        # A rebuild does not trust the change log: the country's analyses are computed again from the students.
        cache.analyses_forget_country(country)
        prune_changes(country, newest_change)
        row.last_change_id = newest_change
        row.save()
    country_metrics_refresh(country=country)
    return RebuildResult(country=country, students=len(students), differences=differences)


DISTRIBUTION_TASK = "metrics.distribution_country"
# A computation claimed (queued or running) for longer than this is taken to be lost, and may be asked for again.
DISTRIBUTION_CLAIM_SECONDS = 120


def distributions_request(*, variable: str, countries: Sequence[str]) -> list[str]:
    """Queue the computation of a variable's distribution for each of these countries not already queued or
    running; returns those queued."""
    from pisa_site.celery import app

    queued = []
    for country in countries:
        if cache.distribution_claim(variable=variable, country=country, seconds=DISTRIBUTION_CLAIM_SECONDS):
            app.send_task(DISTRIBUTION_TASK, args=[variable, country], queue="analysis")
            queued.append(country)
    return queued


def country_distribution_refresh(*, variable: str, country: str) -> dict:
    """Compute a variable's distribution over a country's students and store it for the API. Idempotent."""
    from codebook.selectors import labels_version

    position, spec = variable_position(variable)
    # Read before the students: an entry is at least as new as the version it carries.
    [version] = cache.country_versions([country])
    labels = str(labels_version())
    result = country_distribution(spec, position, country)
    cache.distribution_store(variable=spec.name, country=country, entry={
        "computed_at": time.time(), "country_version": version.decode() if version else None, "labels": labels,
        "result": result})
    return result


def countries_with_data() -> list[str]:
    codes = countries_with_students()
    codes.update(CountryMetricsState.objects.values_list("country", flat=True))
    return sorted(codes)


# --- Open analyses (docs/analysis.md) ------------------------------------------------------------------------------

ANALYSIS_TASK = "metrics.analysis_country"
ANALYSIS_CLAIM_SECONDS = 120


def analyses_request(*, spec: AnalysisSpec, countries: Sequence[str]) -> list[str]:
    """Queue, on the analysis worker, each of these countries' part of an analysis not already queued or running;
    returns those queued."""
    from pisa_site.celery import app

    queued = []
    for country in countries:
        if cache.analysis_claim(key=spec.part_key, country=country, seconds=ANALYSIS_CLAIM_SECONDS):
            app.send_task(ANALYSIS_TASK, args=[spec.part.as_dict(), country], queue="analysis")
            queued.append(country)
    return queued


def _variable_specs() -> dict:
    return {variable.name: variable for variable in pisa_variables()}


def country_analysis_refresh(*, spec: AnalysisSpec, country: str) -> dict:
    """Compute one country's part of an analysis over its students and store it for the API; a foldable part also
    stores its running state and is registered, so that every metrics refresh of the country folds its new rows into
    it (`analyses_fold`). Idempotent."""
    from codebook.selectors import labels_version

    part, specs = spec.part, _variable_specs()
    labels = str(labels_version())
    if foldable(part):
        data, change_id = country_data_at_change(part, country)
        state = AnalysisState.from_data(part, data, change_id=change_id)
        entry = {"computed_at": time.time(), "change_id": change_id, "labels": labels,
                 "result": state_analysis(part, state, specs)}
        cache.analysis_register(key=part.key, part=part.as_dict())
        cache.analysis_store(key=part.key, country=country, entry=entry, state=state.to_bytes())
        return entry
    # Read before the students: an entry is at least as new as the version it carries.
    [version] = cache.country_versions([country])
    entry = {"computed_at": time.time(), "country_version": version.decode() if version else None,
             "labels": labels, "result": country_analysis(part, country_data(part, country), specs)}
    cache.analysis_store(key=part.key, country=country, entry=entry)
    return entry


def analyses_fold(*, country: str, after_id: int, up_to_id: int) -> int:
    """Fold a country's changes (after_id, up_to_id] into the running state of every registered analysis part of the
    country, and store each one's new entry. Called by the metrics refresh, under the country's lock and before the
    change log is pruned; one read of the change log serves every part. A state that missed changes (built before
    `after_id`, whose changes are pruned) or cannot take them is dropped: the next request computes it again.
    Returns how many parts were folded."""
    from codebook.selectors import labels_version

    registered = cache.analyses_registered_states(country)
    if not registered:
        return 0
    pipe = cache.analysis_pipeline()
    states = {}
    for key, (part_dict, body) in registered.items():
        try:
            state = AnalysisState.from_bytes(body)
        except ValueError:
            state = None
        if state is None or state.change_id < after_id:
            cache.analysis_forget(key=key, country=country, pipe=pipe)
        elif state.change_id < up_to_id:
            states[key] = (AnalysisSpec.from_dict(part_dict), state)
    folded = 0
    if states:
        start = min(state.change_id for _, state in states.values())
        try:
            with transaction.atomic():  # a savepoint: a failing read must not abort the refresh's transaction
                data, ids, signs = country_changes([part for part, _ in states.values()], country, after_id=start,
                                                   up_to_id=up_to_id)
        except Exception:  # noqa: BLE001 - the metrics fold goes on; the parts are computed again when asked for
            logger.exception("analyses of %s: the change log could not be read; their states are dropped", country)
            for key in states:
                cache.analysis_forget(key=key, country=country, pipe=pipe)
            pipe.execute()
            return 0
        specs, labels = _variable_specs(), str(labels_version())
        for key, (part, state) in states.items():
            newer = ids > state.change_id
            try:
                state.fold(part, added=rows_of(data, newer & (signs > 0)), removed=rows_of(data, newer & (signs < 0)),
                           change_id=up_to_id)
                entry = {"computed_at": time.time(), "change_id": up_to_id, "labels": labels,
                         "result": state_analysis(part, state, specs)}
            except (ValueError, KeyError) as exc:
                logger.error("analysis %s of %s cannot fold its changes (%s): dropped", key, country, exc)
                cache.analysis_forget(key=key, country=country, pipe=pipe)
                continue
            cache.analysis_store(key=key, country=country, entry=entry, state=state.to_bytes(), pipe=pipe)
            folded += 1
    pipe.execute()
    return folded


def analysis_small_enough_to_compute_now(*, countries: Sequence[str]) -> bool:
    """Whether these countries' parts of an analysis may be computed inside the request (a few tens of ms) rather
    than by the analysis worker: at most ANALYSIS_INLINE_MAX_STUDENTS students between them."""
    from ingestion.warehouse import Student

    return Student.objects.filter(country__in=list(countries)).count() <= settings.ANALYSIS_INLINE_MAX_STUDENTS


def analysis_entries_bring_up_to_date(*, spec: AnalysisSpec, entries: dict[str, dict], missing: Sequence[str],
                                      due: Sequence[str]) -> list[str]:
    """Compute the missing and due entries of an analysis: inside the request when their countries are small (each
    by the one request that claims it; the others serve the entry they have), else on the analysis worker. Updates
    `entries`; returns the countries still missing (the caller answers 202)."""
    stale = [*missing, *due]
    if not analysis_small_enough_to_compute_now(countries=stale):
        analyses_request(spec=spec, countries=stale)
        return list(missing)
    still_missing = []
    for country in stale:
        if cache.analysis_claim(key=spec.part_key, country=country, seconds=ANALYSIS_CLAIM_SECONDS):
            entries[country] = country_analysis_refresh(spec=spec, country=country)
        elif country in missing:
            still_missing.append(country)
    return still_missing

"""Reads of the metrics app: everything the API serves, assembled from the per-country documents in Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from django.conf import settings
from django.utils import timezone

from metrics import cache, tables
from pisa_site.api import query_check
from pisa_site.compression import gzip_once, weak
from pisa_site.errors import BadInput
from metrics.distribution import DISTRIBUTION_NOTE, variable_position
from metrics.analysis.engine import analysis_document
from metrics.analysis.request import QUERY_PARAMETERS as ANALYSIS_QUERY_PARAMETERS, AnalysisSpec
from metrics.analysis.state import foldable
from metrics.analysis.request import analysis_parse as analysis_request_parse
from metrics.estimators import average_of_countries, differences_from_average
from metrics.sufficient import DOMAINS

COUNTRY_CODE = "[A-Z]{3,8}"
COUNTRY_LIST = re.compile(rf"^{COUNTRY_CODE}(,{COUNTRY_CODE})*$")
# PISA 2018 has 79 countries and economies; a longer list is a mistake or an attempt to make the server work.
MAX_COUNTRIES = 100
DOMAIN_NAMES = {"READ": "Reading", "MATH": "Mathematics", "SCIE": "Science"}
LABELLED_VARIABLES = ("ESCS", "TMINS", "DURECEC", "BELONG", "ST004D01T", "W_FSTUWT")


class InvalidParameter(BadInput):
    """A query parameter the API refuses with 400 and this message."""


def known_countries() -> set[str]:
    """Codes a request may name: the codebook's CNT codes and every country with published data (no SQL: this runs
    on every request)."""
    from codebook.selectors import country_names

    return set(country_names()) | set(cache.published_countries())


def _country_codes(raw: str | None) -> list[str] | None:
    """The syntax of `?countries=`: None when absent or empty (meaning every country with data)."""
    if not raw:
        return None
    if not COUNTRY_LIST.fullmatch(raw):  # not match(): "$" would let a final newline through
        raise InvalidParameter(
            f"countries must be comma-separated upper-case country codes, such as ALB,ARG (got {raw[:60]!r})")
    codes = list(dict.fromkeys(raw.split(",")))
    if len(codes) > MAX_COUNTRIES:
        raise InvalidParameter(f"countries names {len(codes)} countries: at most {MAX_COUNTRIES} at once")
    return codes


def _check_known(countries: Sequence[str], versions: Sequence[bytes | None]) -> None:
    """Only countries without data need the codebook's word that they exist (the slow path)."""
    without_data = [code for code, version in zip(countries, versions) if version is None]
    if without_data:
        unknown = sorted(set(without_data) - known_countries())
        if unknown:
            raise InvalidParameter(f"unknown country code(s): {', '.join(unknown)}")


def countries_parse(raw: str | None) -> list[str]:
    """`?countries=ALB,ARG` -> ["ALB", "ARG"]; absent or empty -> every country with data."""
    codes = _country_codes(raw)
    snapshot = cache.versions_snapshot()
    if codes is None:
        return snapshot.countries
    _check_known(codes, [snapshot.versions.get(code) for code in codes])
    return codes


def stream_countries_parse(query) -> list[str] | None:
    """The countries a stream announces (`?countries=`, checked as the metrics URL checks them); None: every one."""
    query_check(query, ("countries",))
    codes = _country_codes(query.get("countries"))
    if codes is not None:
        _check_known(codes, [cache.versions_snapshot().versions.get(code) for code in codes])
    return codes


def view_lookup(kind: str, query: str, raw: Callable[[], str | None], *,
                with_labels: bool) -> tuple[list[str], str]:
    """The hot path of every polled view: the countries asked for and the ETag of their view, made from the versions
    of this process's snapshot (metrics/cache.py: at most METRICS_VERSIONS_CACHE_SECONDS old).

    `query` is the request's raw query string and `raw()` its `?countries=` value (None when absent): the snapshot
    remembers the answer for each (kind, query) until its versions change, so a repeated poll parses nothing and
    hashes nothing. Returns (countries, etag) (do not mutate the list); raises InvalidParameter, which is never
    remembered, so bad input gets its 400 every time."""
    snapshot = cache.versions_snapshot()
    key = (kind, query)
    found = snapshot.views.get(key)
    if found is not None:
        return found
    codes = _country_codes(raw())
    countries = snapshot.countries if codes is None else codes
    versions = [snapshot.versions.get(code) for code in countries]
    _check_known(countries, versions)
    labels = snapshot.labels
    if with_labels and labels is None:
        from codebook.selectors import labels_version

        labels = str(labels_version()).encode()  # first use since Redis was flushed: seed it
    found = countries, cache.etag_of(kind, countries, versions, labels.decode() if with_labels else "")
    if len(snapshot.views) >= cache.VIEWS_PER_SNAPSHOT:
        snapshot.views.clear()
    snapshot.views[key] = found
    return found


def _labels() -> dict:
    from codebook.selectors import country_names, variable_spec_map

    specs = variable_spec_map()
    return {
        "domains": DOMAIN_NAMES,
        "variables": {name: specs[name].label for name in LABELLED_VARIABLES if name in specs},
        "gender_gap": "girls minus boys",
        "countries": country_names(),
    }


def metrics_document(countries: Sequence[str]) -> dict:
    documents = cache.country_documents(countries)
    with_data = {code: doc["statistics"] for code, doc in documents.items() if doc["statistics"]["n_students"]}
    labels = _labels()
    return {
        "generated_at": timezone.now().isoformat(),
        "countries": list(countries),
        "labels": {**labels, "countries": {c: labels["countries"].get(c, c) for c in countries}},
        "by_country": {code: documents.get(code) for code in countries},
        "average": average_of_countries(with_data) if with_data else None,
        "average_of": sorted(with_data),
        "mean_score_versus_average": {
            domain: differences_from_average({code: stats["scores"][domain]["mean"]
                                              for code, stats in with_data.items()})
            for domain in DOMAINS},
    }


def metrics_view(countries: Sequence[str], etag: str) -> bytes:
    return cache.view_bytes(etag, lambda: metrics_document(countries))


def metrics_pushed(countries: Sequence[str], fresh: bool) -> tuple[str, bytes]:
    """What the change stream pushes to a viewer of `countries` (pisa_site/stream.py; empty: every country): the
    ETag and the gzip of the metrics URL's answer for them, the very bytes and cache entries a GET gets. `fresh`:
    a change was just heard, so this process's snapshot of the versions may predate it."""
    if fresh:
        cache.versions_forget()
    joined = ",".join(countries)
    codes, etag = view_lookup("metrics", f"countries={joined}" if joined else "", lambda: joined or None,
                              with_labels=True)
    return weak(etag), gzip_once(etag, metrics_view(codes, etag))


FIGURE_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_:]+)*$")


def metrics_figures_parse(raw: str | None) -> list[str]:
    """`?figures=scores.READ.mean,background.escs` (a figure and every figure under it); absent or empty: all."""
    if not raw:
        return []
    figures = list(dict.fromkeys(raw.split(",")))
    for figure in figures:
        if not FIGURE_NAME.fullmatch(figure) or figure.split(".")[0] not in tables.METRICS_FIGURE_ROOTS:
            raise InvalidParameter(
                f"figures: {figure[:60]!r} is not a figure of the metrics document; a figure is a dotted path under "
                f"{', '.join(tables.METRICS_FIGURE_ROOTS)} (scores.READ.mean, scores.MATH, background.escs)")
    return figures


def metrics_csv_bytes(countries: Sequence[str], figures: Sequence[str]) -> bytes:
    return tables.csv_bytes(tables.metrics_rows(metrics_document(countries), figures))


def country_document(country: str) -> dict | None:
    return cache.country_documents([country]).get(country)


def countries_overview() -> list[dict]:
    from codebook.selectors import country_names

    documents = cache.country_documents(cache.published_countries())
    names = country_names()
    return [
        {"code": code, "name": names.get(code, code), "n_students": doc["statistics"]["n_students"],
         "n_schools": doc["statistics"]["n_schools"], "freshness": doc["freshness"], "version": doc["version"]}
        for code, doc in sorted(documents.items())
    ]


def countries_overview_bytes(etag: str) -> bytes:
    """GET /api/v1/countries/'s body, made once per ETag (view_lookup's "countries" view)."""
    return cache.view_bytes(etag, lambda: {"results": countries_overview()})


# --- The course dashboard's contract (shared/forage/API.md) ----------------------------------------------------

def _value(estimate: dict | None, digits: int = 2):
    if not estimate or estimate.get("value") is None:
        return None
    return round(estimate["value"], digits)


def forage_view(kind: str, countries: Sequence[str]) -> dict:
    documents = cache.country_documents(countries)
    present = [documents[c] for c in countries if c in documents]
    if kind == "submissions":
        return {"count": sum(doc["statistics"]["n_students"] for doc in present)}
    if kind == "submissions-over-time":
        by_hour = dict.fromkeys((f"{h:02d}:00" for h in range(24)), 0)
        for doc in present:
            for hour, count in doc["submissions_by_hour_of_day"].items():
                by_hour[hour] += count
        return {"datasets": [{"id": "Submissions", "data": [{"x": h, "y": n} for h, n in by_hour.items()]}]}
    if kind == "learning-hours":
        return {"datasets": [
            {"country": doc["country"], "hours": _value(doc["statistics"]["background"]["learning_hours_per_week"], 1)}
            for doc in present]}
    if kind == "escs":
        return {"datasets": [{"id": doc["country"], "value": _value(doc["statistics"]["background"]["escs_mean"], 3)}
                             for doc in present]}
    if kind == "early-education-belonging":
        return {"datasets": [
            {"id": doc["country"], "data": [{
                "x": _value(doc["statistics"]["background"]["durecec_mean"]),
                "y": _value(doc["statistics"]["background"]["belong_mean"], 3),
                "submissions": doc["statistics"]["n_students"],
            }]} for doc in present]}
    raise InvalidParameter(f"unknown chart {kind!r}")


FORAGE_CHARTS = ("submissions", "submissions-over-time", "learning-hours", "escs", "early-education-belonging")
# The counter and the line chart are over all countries in the course's contract; the others take a selector.
FORAGE_ALL_COUNTRIES = ("submissions", "submissions-over-time")


def forage_bytes(kind: str, countries: Sequence[str], etag: str) -> bytes:
    return cache.view_bytes(etag, lambda: forage_view(kind, countries))


# --- Any variable's distribution ----------------------------------------------------------------------------------

# A distribution reads the raw line of every student of the countries asked for: far too much for a request. The
# analysis worker computes it, one country at a time, into Redis (metrics.services.country_distribution_refresh); a
# request only reads those entries. An entry is recomputed, and served meanwhile, once it is older than this and its
# country changed since (or the codebook labels did).
DISTRIBUTION_TTL_SECONDS = 15


def distribution_lookup(name: str, countries: Sequence[str]) -> tuple[dict, dict[str, dict], list[str]]:
    """(the variable as the answer describes it, the computed entries of these countries, the countries whose entry is
    missing or due again). Reads Redis only. Raises UnknownVariable."""
    from codebook.selectors import labels_version

    _, spec = variable_position(name)
    entries = cache.distribution_entries(spec.name, countries)
    labels = str(labels_version())
    versions = cache.versions_snapshot().versions  # the request's snapshot, as countries_parse read it
    now = time.time()
    due = []
    for country in countries:
        entry = entries.get(country)
        version = versions[country].decode() if versions.get(country) else None
        if entry is None or entry["labels"] != labels or (
                entry["country_version"] != version and now - entry["computed_at"] > DISTRIBUTION_TTL_SECONDS):
            due.append(country)
    variable = {"name": spec.name, "label": spec.label, "kind": spec.kind, "format_spss": spec.format_spss}
    return variable, entries, due


def distribution_etag(variable: dict, countries: Sequence[str], entries: dict[str, dict], *, form: str = "json") -> str:
    stamps = [repr(entries[c]["computed_at"]).encode() for c in countries]
    return cache.etag_of(f"distribution:{variable['name']}:{form}", countries, stamps)


def _distribution_document(variable: dict, countries: Sequence[str], entries: dict[str, dict]) -> dict:
    return {"variable": variable, "note": DISTRIBUTION_NOTE,
            "computed_at": {c: entries[c]["computed_at"] for c in countries},
            "countries": [entries[c]["result"] for c in countries]}


def distribution_bytes(variable: dict, countries: Sequence[str], entries: dict[str, dict], etag: str) -> bytes:
    return cache.view_bytes(etag, lambda: _distribution_document(variable, countries, entries))


def distribution_csv_bytes(variable: dict, countries: Sequence[str], entries: dict[str, dict]) -> bytes:
    return tables.csv_bytes(tables.distribution_rows(_distribution_document(variable, countries, entries)))


# --- Open analyses (docs/analysis.md) ------------------------------------------------------------------------------

def analysis_parse(query) -> AnalysisSpec:
    """The analysis a query asks for (BadInput says what is wrong and what is allowed)."""
    from codebook.selectors import variable_specs
    from ingestion.warehouse import pisa_variables

    query_check(query, ANALYSIS_QUERY_PARAMETERS, unmentioned=())  # the API's one wording for unknown and repeated parameters
    _country_codes(query.get("countries"))  # and for the syntax of a country list
    specs = variable_specs() or list(pisa_variables())
    query = {name: query.get(name) for name in query}
    query.pop("format", None)
    return analysis_request_parse(query, specs=specs, known_countries=known_countries(),
                                  countries_with_data=cache.published_countries())


def analysis_countries_needed(spec: AnalysisSpec) -> list[str]:
    """The countries shown and, for the OECD average, every country with data (its entry says if it is a member)."""
    countries = list(spec.countries)
    if "oecd" in spec.compare:
        countries += [c for c in cache.published_countries() if c not in countries]
    return countries


def analysis_lookup(spec: AnalysisSpec) -> tuple[dict[str, dict], list[str], list[str]]:
    """(the stored entries of the countries needed, those missing, those due again: older than
    ANALYSIS_RECOMPUTE_SECONDS and their country or the codebook labels changed since). Reads Redis only."""
    from codebook.selectors import labels_version

    needed = analysis_countries_needed(spec)
    entries = cache.analysis_entries(spec.part_key, needed)
    labels = str(labels_version())
    versions = dict(zip(needed, cache.country_versions(needed)))
    now = time.time()
    missing = [country for country in needed if country not in entries]
    due = []
    for country, entry in entries.items():
        version = versions[country].decode() if versions.get(country) else None
        if entry["labels"] != labels:
            due.append(country)
        elif "change_id" in entry:  # folded by the refreshes: due only when one of them could not fold it
            if version is not None and entry["change_id"] < cache.version_change_id(version):
                due.append(country)
        elif entry["country_version"] != version and now - entry["computed_at"] > settings.ANALYSIS_RECOMPUTE_SECONDS:
            due.append(country)
    return entries, missing, due


# A remembered answer renews the life of its entries in Redis at most this often (a read of them renews it each time).
ANALYSIS_TOUCH_SECONDS = 60


def analysis_remembered(query: str, form: str) -> tuple[AnalysisSpec, dict[str, dict], str] | None:
    """Fast path of a polled analysis: (spec, entries, etag) of the answer this process last gave to this exact query
    string, while the countries' versions in its snapshot have not moved (a refresh that folds an analysis publishes
    a new version), and for percentiles and quarters at most ANALYSIS_RECOMPUTE_SECONDS; else None. No Redis read."""
    snapshot = cache.versions_snapshot()
    found = snapshot.views.get(("analysis", form, query))
    if found is None:
        return None
    spec, entries, etag, valid_until, touched = found
    now = time.monotonic()
    if valid_until is not None and now > valid_until:
        return None
    if now - touched[0] > ANALYSIS_TOUCH_SECONDS:
        touched[0] = now
        cache.analysis_touch(spec.part_key, list(entries))
    return spec, entries, etag


def analysis_remember(query: str, form: str, spec: AnalysisSpec, entries: dict[str, dict], etag: str) -> None:
    """Remember an answer whose entries are all current (see `analysis_remembered`)."""
    snapshot = cache.versions_snapshot()
    if len(snapshot.views) >= cache.VIEWS_PER_SNAPSHOT:
        snapshot.views.clear()
    valid_until = None if foldable(spec.part) else time.monotonic() + settings.ANALYSIS_RECOMPUTE_SECONDS
    snapshot.views[("analysis", form, query)] = (spec, entries, etag, valid_until, [time.monotonic()])


def analysis_etag(spec: AnalysisSpec, entries: dict[str, dict], *, form: str) -> str:
    countries = sorted(entries)
    stamps = [repr(entries[c]["computed_at"]).encode() for c in countries]
    return cache.etag_of(f"analysis:{spec.key}:{form}", countries, stamps)


def analysis_answer(spec: AnalysisSpec, entries: dict[str, dict]) -> dict:
    from codebook.selectors import variable_specs
    from ingestion.warehouse import pisa_variables

    specs = {variable.name: variable for variable in (variable_specs() or pisa_variables())}
    shown = {c: entries[c]["result"] for c in spec.countries if c in entries}
    members = {c: entry["result"] for c, entry in entries.items() if entry["result"]["oecd_member"]}
    document = analysis_document(spec, shown, members if "oecd" in spec.compare else {}, specs)
    document["computed_at"] = {c: entries[c]["computed_at"] for c in sorted(entries)}
    return document


def analysis_bytes(spec: AnalysisSpec, entries: dict[str, dict], etag: str) -> bytes:
    return cache.view_bytes(etag, lambda: analysis_answer(spec, entries))


def analysis_csv_bytes(spec: AnalysisSpec, entries: dict[str, dict], etag: str) -> bytes:
    return tables.csv_bytes(tables.analysis_rows(analysis_answer(spec, entries)))

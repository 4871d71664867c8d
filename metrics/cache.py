"""Ready-to-send metrics in Redis: one JSON document per country, and the assembled views the API serves.

The 1 Hz request path never touches the warehouse, and usually not Redis either: each web process keeps a snapshot
of every country's version number (and the codebook labels version), read from Redis at most once per
`METRICS_VERSIONS_CACHE_SECONDS` (0.1 s) and shared by its threads. A request compares the client's ETag with the
one those versions give and answers `304 Not Modified`, or sends bytes cached for that exact ETag, building them from
the per-country documents only the first time a combination is asked for.

The bound: a snapshot is used until `METRICS_VERSIONS_CACHE_SECONDS` after the moment its read was *sent*, so a
request handled at time r uses a snapshot read after r - METRICS_VERSIONS_CACHE_SECONDS, which holds every publish
completed before that: a 304 for a changed document is never sent more than METRICS_VERSIONS_CACHE_SECONDS after
the publish. A publish or removal made by a process clears that process's snapshot at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache

from pisa_site import stream
from pisa_site.cache import BytesByEtag, redis_client
from pisa_site.etags import strong_etag
from pisa_site.snapshots import ProcessSnapshot

COUNTRY_DOCUMENT = "pisa:metrics:country:{}"
COUNTRY_VERSION = "pisa:metrics:version:{}"
COUNTRY_INDEX = "pisa:metrics:countries"
VIEW = "pisa:metrics:view:{}"
# Assembled views are cheap to rebuild and keyed by content version, so a short life only bounds memory.
VIEW_TTL_SECONDS = 120


def version_change_id(version: str) -> int:
    """The change-log position a country's published version starts with (metrics.services._published_version)."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def country_document_publish(*, country: str, document: dict, version: str) -> None:
    body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    pipe = redis_client().pipeline()
    pipe.set(COUNTRY_DOCUMENT.format(country), body)
    pipe.set(COUNTRY_VERSION.format(country), version)
    pipe.sadd(COUNTRY_INDEX, country)
    stream.change_announce(topic=stream.METRICS, country=country, pipe=pipe)
    pipe.execute()
    versions_forget()


def country_document_remove(*, country: str) -> None:
    pipe = redis_client().pipeline()
    pipe.delete(COUNTRY_DOCUMENT.format(country), COUNTRY_VERSION.format(country))
    pipe.srem(COUNTRY_INDEX, country)
    stream.change_announce(topic=stream.METRICS, country=country, pipe=pipe)
    pipe.execute()
    versions_forget()


def published_countries() -> list[str]:
    return sorted(code.decode() for code in redis_client().smembers(COUNTRY_INDEX))


def country_documents(countries: Sequence[str]) -> dict[str, dict]:
    if not countries:
        return {}
    bodies = redis_client().mget([COUNTRY_DOCUMENT.format(c) for c in countries])
    return {country: json.loads(body) for country, body in zip(countries, bodies) if body is not None}


def labels_version_key() -> str:
    from codebook.services import LABELS_VERSION_KEY

    return cache.make_and_validate_key(LABELS_VERSION_KEY)


def etag_of(kind: str, countries: Sequence[str], versions: Sequence[bytes | None], *extra: object) -> str:
    return strong_etag("|".join([kind, *countries, *(v.decode() if v else "-" for v in versions), *map(str, extra)]))


# --- The hot path's versions: one snapshot per process, re-read at most every METRICS_VERSIONS_CACHE_SECONDS -------

# A snapshot remembers the (countries, ETag) it gave for each query it served, until its versions change; a bound on
# how many, since queries are whatever clients send.
VIEWS_PER_SNAPSHOT = 512


@dataclass(frozen=True, eq=False)
class VersionsSnapshot:
    versions: dict[str, bytes]  # every published country -> its document's version
    labels: bytes | None  # the codebook labels version; None when Redis has none yet
    expires_at: float  # time.monotonic(): read_sent_at + METRICS_VERSIONS_CACHE_SECONDS
    views: dict = field(default_factory=dict)  # (kind, query) -> (countries, etag), filled by metrics.selectors

    @property
    def countries(self) -> list[str]:
        return sorted(self.versions)




def versions_cache_seconds() -> float:
    return float(settings.METRICS_VERSIONS_CACHE_SECONDS)


def versions_snapshot() -> VersionsSnapshot:
    """The versions of every published country, at most METRICS_VERSIONS_CACHE_SECONDS old (see the module's
    docstring for the bound). Costs a clock read and an attribute read, except once per period: two round trips."""
    return _versions.get()


def _versions_read(previous: VersionsSnapshot | None) -> VersionsSnapshot:
    sent_at = time.monotonic()  # before the read: whatever was published before this moment is in the snapshot
    client = redis_client()
    pipe = client.pipeline(transaction=False)
    pipe.smembers(COUNTRY_INDEX)
    pipe.get(labels_version_key())
    members, labels = pipe.execute()
    countries = sorted(code.decode() for code in members)
    values = client.mget([COUNTRY_VERSION.format(c) for c in countries]) if countries else []
    # A country being removed can still be in the index without a version: it has no data.
    versions = {country: value for country, value in zip(countries, values) if value is not None}
    unchanged = previous is not None and previous.versions == versions and previous.labels == labels
    snapshot = VersionsSnapshot(versions=versions, labels=labels, expires_at=sent_at + versions_cache_seconds(),
                                views=previous.views if unchanged else {})
    return snapshot


# One thread re-reads; the others wait for its snapshot rather than use a stale one.
_versions: ProcessSnapshot[VersionsSnapshot] = ProcessSnapshot(
    _versions_read, lambda snapshot: time.monotonic() < snapshot.expires_at)


def versions_forget() -> None:
    """Drop this process's snapshot (after it published, or when Redis was flushed): the next request re-reads."""
    _versions.forget()


# Fast path: the last assembled views also stay in this process, sparing a Redis read (up to 117 KB) per 200.
RECENT_VIEW_BYTES_PER_PROCESS = 32 * 1024 * 1024
_views = BytesByEtag(VIEW, ttl_seconds=VIEW_TTL_SECONDS, per_process_bytes=RECENT_VIEW_BYTES_PER_PROCESS)


def view_bytes(etag: str, build: Callable[[], dict]) -> bytes:
    return _views.get(etag, lambda: json.dumps(build(), separators=(",", ":"), allow_nan=False).encode())


# --- Distributions of any variable: computed by the analysis worker, one entry per (variable, country) -----------

DISTRIBUTION = "pisa:metrics:distribution:{}:{}"
DISTRIBUTION_CLAIM = "pisa:metrics:distribution:claim:{}:{}"
# Entries are recomputed when stale (metrics.selectors); this only bounds the memory of variables nobody asks for.
DISTRIBUTION_KEEP_SECONDS = 24 * 3600


def distribution_entries(variable: str, countries: Sequence[str]) -> dict[str, dict]:
    if not countries:
        return {}
    bodies = redis_client().mget([DISTRIBUTION.format(variable, c) for c in countries])
    return {country: json.loads(body) for country, body in zip(countries, bodies) if body is not None}


def distribution_store(*, variable: str, country: str, entry: dict) -> None:
    body = json.dumps(entry, separators=(",", ":"), allow_nan=False)
    pipe = redis_client().pipeline()
    pipe.set(DISTRIBUTION.format(variable, country), body, ex=DISTRIBUTION_KEEP_SECONDS)
    pipe.delete(DISTRIBUTION_CLAIM.format(variable, country))
    pipe.execute()


def distribution_claim(*, variable: str, country: str, seconds: float) -> bool:
    """True for the first caller asking for this computation while none is queued or running (then it queues it)."""
    return bool(redis_client().set(DISTRIBUTION_CLAIM.format(variable, country), 1, nx=True, ex=max(1, int(seconds))))


def country_versions(countries: Sequence[str]) -> list[bytes | None]:
    return redis_client().mget([COUNTRY_VERSION.format(c) for c in countries]) if countries else []


# --- Open analyses: one entry per (analysis part, country), kept current by the metrics refresh (foldable ones) or
# recomputed when due (metrics.selectors.analysis_lookup). An analysis part is registered when first computed; the
# least recently asked ones are forgotten beyond ANALYSIS_MAX_REGISTERED, and any not asked for ANALYSIS_KEEP_SECONDS.

ANALYSIS = "pisa:metrics:analysis:{}:{}"
ANALYSIS_STATE = "pisa:metrics:analysis:state:{}:{}"
ANALYSIS_CLAIM = "pisa:metrics:analysis:claim:{}:{}"
ANALYSIS_SPEC = "pisa:metrics:analysis:spec:{}"
ANALYSES_REGISTERED = "pisa:metrics:analyses"  # sorted set: part key -> when last asked for (Unix seconds)


def analysis_entries(key: str, countries: Sequence[str]) -> dict[str, dict]:
    """The stored entries of an analysis part; reading them renews their life and the part's registration."""
    if not countries:
        return {}
    names = [ANALYSIS.format(key, c) for c in countries]
    pipe = redis_client().pipeline(transaction=False)
    pipe.mget(names)
    for name in names:
        pipe.expire(name, settings.ANALYSIS_KEEP_SECONDS)
    pipe.zadd(ANALYSES_REGISTERED, {key: time.time()}, xx=True)
    bodies = pipe.execute()[0]
    return {country: json.loads(body) for country, body in zip(countries, bodies) if body is not None}


def analysis_touch(key: str, countries: Sequence[str]) -> None:
    """Renew the life of an analysis part's entries and states, and its registration, without reading them."""
    pipe = redis_client().pipeline(transaction=False)
    for country in countries:
        pipe.expire(ANALYSIS.format(key, country), settings.ANALYSIS_KEEP_SECONDS)
        pipe.expire(ANALYSIS_STATE.format(key, country), settings.ANALYSIS_KEEP_SECONDS)
    pipe.zadd(ANALYSES_REGISTERED, {key: time.time()}, xx=True)
    pipe.execute()


def analysis_store(*, key: str, country: str, entry: dict, state: bytes | None = None, pipe=None) -> None:
    """Store a country's entry (and the running state of a foldable part); with `pipe`, only queue the commands."""
    body = json.dumps(entry, separators=(",", ":"), allow_nan=False)
    own = pipe is None
    pipe = redis_client().pipeline(transaction=False) if own else pipe
    pipe.set(ANALYSIS.format(key, country), body, ex=settings.ANALYSIS_KEEP_SECONDS)
    if state is not None:
        pipe.set(ANALYSIS_STATE.format(key, country), state, ex=settings.ANALYSIS_KEEP_SECONDS)
    pipe.delete(ANALYSIS_CLAIM.format(key, country))
    if own:
        pipe.execute()


def analysis_forget(*, key: str, country: str, pipe=None) -> None:
    """Drop a country's entry and state (they will be computed again when asked for)."""
    (pipe or redis_client()).delete(ANALYSIS.format(key, country), ANALYSIS_STATE.format(key, country))


def analyses_forget_country(country: str) -> None:
    """Drop every registered analysis's entry and state of a country."""
    client = redis_client()
    keys = [member.decode() for member in client.zrange(ANALYSES_REGISTERED, 0, -1)]
    if keys:
        client.delete(*(name.format(key, country) for key in keys for name in (ANALYSIS, ANALYSIS_STATE)))


def analysis_claim(*, key: str, country: str, seconds: float) -> bool:
    """True for the first caller asking for this computation while none is queued or running (then it queues it)."""
    return bool(redis_client().set(ANALYSIS_CLAIM.format(key, country), 1, nx=True, ex=max(1, int(seconds))))


def analysis_register(*, key: str, part: dict) -> list[str]:
    """Register an analysis part (its states are then folded by every refresh); returns the keys of the least
    recently asked parts forgotten to stay within ANALYSIS_MAX_REGISTERED (their entries and states are dropped)."""
    client = redis_client()
    pipe = client.pipeline(transaction=False)
    pipe.set(ANALYSIS_SPEC.format(key), json.dumps(part), ex=settings.ANALYSIS_KEEP_SECONDS)
    pipe.zadd(ANALYSES_REGISTERED, {key: time.time()})
    pipe.zcard(ANALYSES_REGISTERED)
    count = pipe.execute()[2]
    excess = count - settings.ANALYSIS_MAX_REGISTERED
    if excess <= 0:
        return []
    forgotten = [member.decode() for member, _ in client.zpopmin(ANALYSES_REGISTERED, excess)]
    countries = published_countries()
    pipe = client.pipeline(transaction=False)
    for old in forgotten:
        pipe.delete(ANALYSIS_SPEC.format(old), *(name.format(old, c) for c in countries
                                                  for name in (ANALYSIS, ANALYSIS_STATE)))
    pipe.execute()
    return forgotten


def analyses_registered_states(country: str) -> dict[str, tuple[dict, bytes]]:
    """The registered parts asked for within ANALYSIS_KEEP_SECONDS that hold a state of this country:
    part key -> (part as a dict, state bytes). Parts not asked for that long are unregistered here."""
    client = redis_client()
    idle_since = time.time() - settings.ANALYSIS_KEEP_SECONDS
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(ANALYSES_REGISTERED, "-inf", idle_since)
    pipe.zrange(ANALYSES_REGISTERED, 0, -1)
    keys = [member.decode() for member in pipe.execute()[1]]
    if not keys:
        return {}
    states = client.mget([ANALYSIS_STATE.format(key, country) for key in keys])
    held = [(key, state) for key, state in zip(keys, states) if state is not None]
    if not held:
        return {}
    parts = client.mget([ANALYSIS_SPEC.format(key) for key, _ in held])
    return {key: (json.loads(part), state) for (key, state), part in zip(held, parts) if part is not None}


def analysis_pipeline():
    return redis_client().pipeline(transaction=False)

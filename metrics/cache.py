"""Ready-to-send metrics in Redis: one JSON document per country, and the assembled views the API serves.

The 1 Hz request path never touches the warehouse: it reads a few small version numbers (one MGET), answers
`304 Not Modified` when the client's ETag matches, and otherwise sends bytes cached for that exact ETag, building them
from the per-country documents only the first time a combination is asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from django.core.cache import cache

COUNTRY_DOCUMENT = "pisa:metrics:country:{}"
COUNTRY_VERSION = "pisa:metrics:version:{}"
COUNTRY_INDEX = "pisa:metrics:countries"
VIEW = "pisa:metrics:view:{}"
# Assembled views are cheap to rebuild and keyed by content version, so a short life only bounds memory.
VIEW_TTL_SECONDS = 120


def _client():
    return cache._cache.get_client(write=True)


def country_document_publish(*, country: str, document: dict, version: int) -> None:
    body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    pipe = _client().pipeline()
    pipe.set(COUNTRY_DOCUMENT.format(country), body)
    pipe.set(COUNTRY_VERSION.format(country), version)
    pipe.sadd(COUNTRY_INDEX, country)
    pipe.execute()


def country_document_remove(*, country: str) -> None:
    _client().delete(COUNTRY_DOCUMENT.format(country), COUNTRY_VERSION.format(country))
    _client().srem(COUNTRY_INDEX, country)


def published_countries() -> list[str]:
    return sorted(code.decode() for code in _client().smembers(COUNTRY_INDEX))


def country_documents(countries: Sequence[str]) -> dict[str, dict]:
    if not countries:
        return {}
    bodies = _client().mget([COUNTRY_DOCUMENT.format(c) for c in countries])
    return {country: json.loads(body) for country, body in zip(countries, bodies) if body is not None}


def _etag(fingerprint: str) -> str:
    return '"' + hashlib.blake2b(fingerprint.encode(), digest_size=12).hexdigest() + '"'


def labels_version_key() -> str:
    from codebook.services import LABELS_VERSION_KEY

    return cache.make_and_validate_key(LABELS_VERSION_KEY)


def versions_lookup(countries: Sequence[str] | None) -> tuple[list[str], list[bytes | None], bytes | None]:
    """Fast path: in ONE round trip, the countries (all published ones when None), their versions, and the codebook
    labels version. (countries, versions, labels_version); a version is None for a country without data."""
    client = _client()
    if countries is None:
        countries = sorted(code.decode() for code in client.smembers(COUNTRY_INDEX))
    if not countries:
        return [], [], client.get(labels_version_key())
    *versions, labels = client.mget([*(COUNTRY_VERSION.format(c) for c in countries), labels_version_key()])
    return list(countries), versions, labels


def etag_of(kind: str, countries: Sequence[str], versions: Sequence[bytes | None], *extra: object) -> str:
    return _etag("|".join([kind, *countries, *(v.decode() if v else "-" for v in versions), *map(str, extra)]))


def view_etag(kind: str, countries: Sequence[str], *extra: object) -> str:
    """A strong ETag for a view of these countries: changes exactly when one of their documents (or `extra`, e.g.
    the codebook labels version) changes."""
    versions = _client().mget([COUNTRY_VERSION.format(c) for c in countries]) if countries else []
    return etag_of(kind, countries, versions, *extra)


# Fast path: the last few assembled views also stay in this process, sparing a 100 KB Redis read per 200.
_recent_views: OrderedDict[str, bytes] = OrderedDict()
_recent_views_lock = threading.Lock()  # gunicorn's threads share it
RECENT_VIEWS_PER_PROCESS = 16


def view_bytes(etag: str, build: Callable[[], dict]) -> bytes:
    body = _recent_views.get(etag)
    if body is not None:
        return body
    key = VIEW.format(etag.strip('"'))
    client = _client()
    body = client.get(key)
    if body is None:
        body = json.dumps(build(), separators=(",", ":"), allow_nan=False).encode()
        client.set(key, body, ex=VIEW_TTL_SECONDS)
    with _recent_views_lock:
        _recent_views[etag] = body
        while len(_recent_views) > RECENT_VIEWS_PER_PROCESS:
            _recent_views.popitem(last=False)
    return body

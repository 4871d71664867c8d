"""Answers compressed once per ETag, not once per request (docs/metrics.md, "Compressed answers").

A published document changes every second or so and thousands of viewers ask for it in between: compressing per
request (Django's GZipMiddleware) would cost each request a millisecond or more of CPU for the same bytes. Here the
first web process to serve an ETag's body gzipped stores the gzip in Redis beside it; every other request, in any
process, reuses it (a per-process table first, then Redis).

An ETag names one body, so it also names that body's gzip. A gzipped answer carries the weak form `W/"..."` of the
ETag (a strong ETag must differ between encodings, RFC 9110 8.8.3); If-None-Match compares weakly, so either form
the client sends back earns a 304.
"""

from __future__ import annotations

import gzip

from pisa_site.cache import BytesByEtag

# Below this a body goes as it is: gzip's 20-byte frame and a Redis round trip would cost more than they save.
GZIP_MIN_BYTES = 1024
# Level 9 costs about twice level 6 and saves a few per cent; paid once per ETag, so it is worth it.
GZIP_LEVEL = 9
GZIP_KEY = "pisa:gzip:{}"
GZIP_TTL_SECONDS = 600  # a body's gzip is asked for while its ETag is current: seconds, rarely minutes
GZIPPED_BYTES_PER_PROCESS = 16 * 1024 * 1024

_gzipped = BytesByEtag(GZIP_KEY, ttl_seconds=GZIP_TTL_SECONDS, per_process_bytes=GZIPPED_BYTES_PER_PROCESS)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip with a q above 0 (gzip named, else `*`)."""
    if ";" not in accept_encoding:  # fast path: what browsers send ("gzip, deflate, br, zstd"), or no header
        codings = accept_encoding.lower()
        return "gzip" in codings or "*" in codings
    qualities = {}
    for item in accept_encoding.lower().split(","):
        coding, _, parameters = item.partition(";")
        quality = parameters.strip()
        try:
            qualities[coding.strip()] = float(quality[2:]) if quality.startswith("q=") else 1.0
        except ValueError:
            qualities[coding.strip()] = 0.0
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0


def gzip_once(etag: str, body: bytes) -> bytes:
    """`body` gzipped, compressed by one request per ETag while its Redis key lives."""
    # mtime=0: the same body always gives the same bytes, whichever process compressed it.
    return _gzipped.get(etag, lambda: gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0))


def weak(etag: str) -> str:
    return etag if etag.startswith("W/") else f"W/{etag}"


def gzipped_forget() -> None:
    """Drop this process's table (tests, which flush Redis between them)."""
    _gzipped.forget()

"""A per-source lock in Redis, so that one source is never extracted by two workers at once (even on two hosts)."""

from __future__ import annotations

import contextlib
import secrets

from django.core.cache import cache

# Deletes the key only if it still holds our token: a lock that expired and was taken by another worker is not ours
# to release.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _client():
    return cache._cache.get_client(write=True)


def lock_key(name: str) -> str:
    return f"pisa:lock:{name}"


@contextlib.contextmanager
def redis_lock(name: str, *, ttl_seconds: float):
    """Yields True when acquired (SET NX PX), False when someone else holds it. The TTL must exceed the longest
    time the holder can run (the task's hard time limit), so a killed holder cannot block the source forever."""
    client = _client()
    token = secrets.token_hex(16)
    acquired = bool(client.set(lock_key(name), token, nx=True, px=int(ttl_seconds * 1000)))
    try:
        yield acquired
    finally:
        if acquired:
            client.eval(_RELEASE, 1, lock_key(name), token)


def is_locked(name: str) -> bool:
    return bool(_client().exists(lock_key(name)))


def claim_interval(name: str, *, seconds: float) -> bool:
    """True at most once per `seconds` for a name: used to run each source at its own poll interval."""
    return bool(_client().set(f"pisa:due:{name}", 1, nx=True, px=max(1, int(seconds * 1000))))

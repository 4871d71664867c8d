"""Locks and marks in Redis, shared by the apps: a per-source lock, so that one source is never extracted by two
workers at once (even on two hosts), the percentiles lock, and the due/queued marks of the fan-out.

The lock is a short-lived key (`SET NX PX`) holding the Celery task id, renewed after every batch. If a worker dies,
the source is free again within one TTL; if Celery redelivers the very message whose worker died
(`reject_on_worker_lost`), the redelivery recognises its own task id and takes the lock over at once.

Correctness does not rest on this lock alone: every warehouse write also takes a PostgreSQL advisory lock for its
country (see ingestion/load.py), so even two overlapping runs could not double-count a change.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from pisa_site.cache import redis_client

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


def lock_key(name: str) -> str:
    return f"pisa:lock:{name}"


@dataclass
class RedisLock:
    name: str
    token: str
    ttl_ms: int
    acquired: bool = False

    def extend(self) -> bool:
        """Renew the TTL; False if the lock was lost (expired and taken by someone else)."""
        return bool(redis_client().eval(_EXTEND, 1, lock_key(self.name), self.token, self.ttl_ms))


@contextlib.contextmanager
def redis_lock(name: str, *, token: str, ttl_seconds: float):
    """Yields a RedisLock; `.acquired` is False when another holder has it."""
    client = redis_client()
    lock = RedisLock(name=name, token=token, ttl_ms=int(ttl_seconds * 1000))
    key = lock_key(name)
    lock.acquired = bool(client.set(key, token, nx=True, px=lock.ttl_ms))
    if not lock.acquired and client.get(key) == token.encode():
        # The same task id holds it: an earlier delivery of this message, whose worker died. Take over.
        lock.acquired = bool(client.set(key, token, xx=True, px=lock.ttl_ms))
    try:
        yield lock
    finally:
        if lock.acquired:
            client.eval(_RELEASE, 1, key, token)


def held_by(name: str, token: str) -> bool:
    """Whether the lock is held under this token (the task id of a sync whose worker died mid-run)."""
    return redis_client().get(lock_key(name)) == token.encode()


def is_locked(name: str) -> bool:
    return bool(redis_client().exists(lock_key(name)))


# A claim lapses this much before its interval is over (at most a quarter of it): beat's ticks and the fan-out's own
# run time jitter by tens of milliseconds, and a claim that outlived its interval by a millisecond made the source
# wait a whole extra tick (with a 1 s interval and a 1 s fan-out, a sync every 2 s instead of every second).
CLAIM_MARGIN_SECONDS = 0.2


def claim_interval(name: str, *, seconds: float) -> bool:
    """True at most once per `seconds` for a name: used to run each source at its own poll interval (the fan-out
    tick that comes about one interval later finds it due again, even a little early)."""
    lasts = seconds - min(CLAIM_MARGIN_SECONDS, seconds / 4)
    return bool(redis_client().set(f"pisa:due:{name}", 1, nx=True, px=max(1, int(lasts * 1000))))


def mark_queued(name: str, *, seconds: float) -> bool:
    """Mark that a message for `name` is waiting in the queue; False when one already is. The mark lives as long as
    the message may wait (its expiry), and the task clears it when it starts (`clear_queued`)."""
    return bool(redis_client().set(f"pisa:queued:{name}", 1, nx=True, px=max(1, int(seconds * 1000))))


def clear_queued(name: str) -> None:
    redis_client().delete(f"pisa:queued:{name}")


def follow_up_ask(name: str, *, seconds: float) -> None:
    """Ask whoever holds `name`'s lock to run once more before letting go (new work arrived while it ran)."""
    redis_client().set(f"pisa:again:{name}", 1, px=max(1, int(seconds * 1000)))


def follow_up_take(name: str) -> bool:
    """Whether a follow-up was asked for `name`, clearing the request (one DEL: two takers never both see it)."""
    return bool(redis_client().delete(f"pisa:again:{name}"))

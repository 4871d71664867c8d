"""Django's Redis cache backend, minus one cost on the hot path.

Django's stock backend builds a new `redis.Redis` client object for every cache call (about a quarter of a
millisecond each); the API answers a 304 in well under a millisecond otherwise. This backend keeps one client per
connection pool and process. redis-py's pools are fork-safe, so Celery and gunicorn children get their own sockets.
"""

import threading
from collections import OrderedDict

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class _ReusingClient(RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


class ReusingRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = _ReusingClient

    def redis_client(self):
        """The process's redis-py client of this cache (for commands the cache API has no word for)."""
        return self._cache.get_client(write=True)


def redis_client():
    """The one Redis client of the product's own keys (locks, marks, published metrics): the default cache's."""
    from django.core.cache import cache

    return cache.redis_client()


class BytesByEtag:
    """Bytes an ETag names, built once by whichever process needs them first: kept in that process (the last ones,
    up to `per_process_bytes` in all) and in Redis (`key` formatted with the ETag, for `ttl_seconds`), where every
    other process finds them. An ETag names one body, so what is kept under it never goes stale; it only ages out.

    The budget is in bytes, not entries: viewers each on their own mix of countries ask for thousands of small
    documents (5 KB for a few countries), and a table of a few entries sent nearly every 200 to Redis for its body."""

    def __init__(self, key: str, *, ttl_seconds: int, per_process_bytes: int) -> None:
        self.key, self.ttl_seconds, self.per_process_bytes = key, ttl_seconds, per_process_bytes
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._lock = threading.Lock()  # the web server's threads share it

    def get(self, etag: str, build) -> bytes:
        body = self._recent.get(etag)
        if body is not None:
            return body
        key = self.key.format(etag.removeprefix("W/").strip('"'))
        client = redis_client()
        body = client.get(key)
        if body is None:
            body = build()
            client.set(key, body, ex=self.ttl_seconds)
        with self._lock:
            if etag not in self._recent:
                self._recent[etag] = body
                self._recent_bytes += len(body)
            while self._recent_bytes > self.per_process_bytes and len(self._recent) > 1:
                self._recent_bytes -= len(self._recent.popitem(last=False)[1])
        return body

    def forget(self) -> None:
        """Drop this process's table (tests, which flush Redis between them)."""
        with self._lock:
            self._recent.clear()
            self._recent_bytes = 0

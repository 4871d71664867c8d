"""BytesByEtag (pisa_site/cache.py): bytes an ETag names, built once, kept in the process within a byte budget and in
Redis for the other processes."""

from __future__ import annotations

import pytest
from django.core.cache import cache as django_cache

from pisa_site.cache import BytesByEtag, redis_client

KEY = "pisa:test:bytes:{}"


@pytest.fixture
def table():
    django_cache.clear()
    yield BytesByEtag(KEY, ttl_seconds=60, per_process_bytes=3000)
    django_cache.clear()


def builder(body: bytes, built: list):
    def build():
        built.append(body)
        return body
    return build


def test_bytes_are_built_once_then_served_from_the_process_without_redis(table):
    built = []
    assert table.get('"a"', builder(b"x" * 1000, built)) == b"x" * 1000
    assert redis_client().get(KEY.format("a")) == b"x" * 1000  # where the other processes find them
    redis_client().delete(KEY.format("a"))
    assert table.get('"a"', builder(b"other", built)) == b"x" * 1000  # kept in the process: Redis not asked
    assert built == [b"x" * 1000]


def test_another_process_finds_them_in_redis(table):
    table.get('W/"a"', builder(b"x" * 1000, []))
    elsewhere, built = BytesByEtag(KEY, ttl_seconds=60, per_process_bytes=3000), []
    assert elsewhere.get('"a"', builder(b"rebuilt", built)) == b"x" * 1000 and built == []  # weak or strong: one body


def test_the_process_keeps_the_newest_within_its_byte_budget(table):
    for name in "abcd":
        table.get(f'"{name}"', builder(name.encode() * 1000, []))
    redis_client().flushdb()
    built = []
    assert table.get('"d"', builder(b"rebuilt", built)) == b"d" * 1000
    assert table.get('"b"', builder(b"rebuilt", built)) == b"b" * 1000
    assert table.get('"a"', builder(b"rebuilt", built)) == b"rebuilt"  # the oldest went past 3,000 bytes
    assert built == [b"rebuilt"]


def test_one_body_larger_than_the_budget_is_still_kept(table):
    table.get('"big"', builder(b"z" * 10_000, []))
    redis_client().flushdb()
    assert table.get('"big"', builder(b"rebuilt", [])) == b"z" * 10_000

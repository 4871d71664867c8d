"""What every benchmark needs: real services, a warehouse of its own, and a place to report figures.

Each benchmark runs against the embedded PostgreSQL/Redis (or DATABASE_URL/REDIS_URL's servers), in a database
`pisa_bench` created fresh for the run (and dropped after it) and Redis databases 4/5, so it never touches the data of
a running stack.
Figures are printed and appended as JSON lines to bench/results.jsonl (read by `make bench` for bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results.jsonl"
BENCH_DATABASE = "pisa_bench"
BENCH_CACHE_DB, BENCH_BROKER_DB = 4, 5
CONSTANT_LARGE_BYTES = int(os.environ.get("BENCH_CONSTANT_LARGE_BYTES", "100000"))


def _with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def bench_environment():
    """Services up, a fresh `pisa_bench` warehouse migrated, Django set up; the warehouse dropped on the way out."""
    from pisa_site import embedded

    # Without a handler, SIGTERM (from make, a CI runner, a colleague) would end the benchmark on the spot, leaving
    # its worker processes and the embedded servers behind; as SystemExit it runs every cleanup on the way out.
    signal.signal(signal.SIGTERM, _exit_on_signal)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")
    os.environ.update(embedded.environment_for_running_services())
    with embedded.services_in_environment(quiet=True):
        server = os.environ["DATABASE_URL"]
        _maintenance(server, f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)',
                     f'CREATE DATABASE "{BENCH_DATABASE}"')
        redis_url = os.environ["REDIS_URL"]
        os.environ.update(
            DATABASE_URL=_with_database(server, BENCH_DATABASE),
            REDIS_URL=_with_database(redis_url, str(BENCH_CACHE_DB)),
            CELERY_BROKER_URL=_with_database(redis_url, str(BENCH_BROKER_DB)),
        )
        os.environ.setdefault("DEBUG", "1")
        import django
        import redis
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        for url in (os.environ["REDIS_URL"], os.environ["CELERY_BROKER_URL"]):
            redis.Redis.from_url(url).flushdb()
        try:
            yield
        finally:
            # A full-size run leaves gigabytes behind otherwise.
            from django.db import connections

            connections.close_all()
            _maintenance(server, f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')


def _maintenance(server_url: str, *statements: str) -> None:
    """Run statements (CREATE/DROP DATABASE) on the server's `postgres` database, outside any transaction."""
    import psycopg2

    admin = psycopg2.connect(_with_database(server_url, "postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        admin.close()


def machine() -> str:
    import psutil

    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}")


def report(bench: str, figures: dict, *, quick: bool) -> None:
    """Print the figures and append them to bench/results.jsonl."""
    record = {"bench": bench, "at": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "machine": machine(),
              **figures}
    print(json.dumps(record, indent=2))
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def percentile(values, q: float) -> float | None:
    """The q-quantile (0 < q < 1) of the values by rank, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

"""What change detection costs per source and poll: the ids fingerprint (issue 14) next to the count check it
replaced, in the same run, on real 1,120-column sources of 10,000 and 100,000 rows loaded into the warehouse.

    .venv/bin/python -m bench.change_detection [--quick] [--rounds 30]

Every poll of a source that changed runs one of these (the fan-out polls each source every second):

- **count check** (before): `count(*), max(id)` on the source, and the warehouse's count of the ids it accounts for;
- **fingerprint, fast path** (a poll that found only appended rows): the source's fingerprint only;
- **fingerprint, compared** (any other change): the source's fingerprint and the warehouse's;
- **ranges** (when they differ): both sides' fingerprints per 4,096-id range, to narrow the difference.

Reported per check: wall milliseconds (median over the rounds) and CPU milliseconds (this process plus the PostgreSQL
backends that served it, from /proc, whose 10 ms ticks are why it is the total over the rounds divided by them); the checks alternate round by round so that the host's noise falls on each
alike. The ratio that matters is fingerprint / count at the same size: a poll costs that many times what it did.
"""

from __future__ import annotations

import argparse
import time

import psutil

from bench.common import bench_environment, median, report
from bench.ingest import settle_statistics, student_factory

SIZES = (10_000, 100_000)
QUICK_SIZES = (2_000, 10_000)
INSERT_BATCH = 1000


def _backend_pid(cursor) -> int:
    cursor.execute("SELECT pg_backend_pid()")
    return cursor.fetchone()[0]


class CpuOf:
    """CPU-seconds of this process and of the given PostgreSQL backends over a block."""

    def __init__(self, *pids: int) -> None:
        self.processes = [psutil.Process(), *(psutil.Process(pid) for pid in pids)]

    def _total(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def __enter__(self):
        self._cpu, self._wall = self._total(), time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.cpu_ms = (self._total() - self._cpu) * 1000
        self.wall_ms = (time.perf_counter() - self._wall) * 1000


def _source_with_rows(code: str, rows: int, template: str):
    """A source database of `rows` synthetic students, registered, loaded into the warehouse."""
    from ingestion.models import Source
    from ingestion.pipeline import source_sync
    from simulator.selectors import codebook_specs
    from simulator.services import responses_insert, source_provision

    handle = source_provision(code=code, name=code, url_template=template, specs=codebook_specs(), style="typed")
    factory = student_factory()
    for start in range(0, rows, INSERT_BATCH):
        responses_insert(engine=handle.engine, table=handle.table,
                         rows=factory.students(code, min(INSERT_BATCH, rows - start)))
    settle_statistics(handle)
    source = Source.objects.get(code=code)
    source_sync(source_id=source.pk)
    return handle, source


def measure(source, handle, rounds: int) -> dict:
    import sqlalchemy as sa
    from django.db import connection

    from ingestion.extract import SourceReader
    from ingestion.layout import pisa_variables
    from ingestion.models import DuplicateStudent, QuarantinedRow, Student
    from ingestion.pipeline import DIFF_RANGE, warehouse_ids_fingerprint, warehouse_range_fingerprints

    reader = SourceReader(source, pisa_variables())
    snapshot, _ = reader.poll(None)
    max_id = snapshot.max_id
    # The count check as it was (ingestion/pipeline.py before the fingerprint), for the baseline.
    count_sql = f"""
        SELECT (SELECT count(*) FROM {Student._meta.db_table} WHERE source_id = %(s)s AND source_row_id <= %(m)s)
             + (SELECT count(*) FROM {QuarantinedRow._meta.db_table} WHERE source_id = %(s)s AND source_row_id <= %(m)s)
             + (SELECT count(*) FROM {DuplicateStudent._meta.db_table}
                WHERE source_id = %(s)s AND superseded_row_id <= %(m)s)"""

    with handle.engine.connect() as source_connection, connection.cursor() as warehouse:
        source_pid = source_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        warehouse_pid = _backend_pid(warehouse)
        table = reader._cursor_table
        id_column = table.c[reader.id_column.name]

        def count_check():
            source_connection.execute(sa.select(sa.func.count(), sa.func.max(id_column)).select_from(table)).one()
            warehouse.execute(count_sql, {"s": source.pk, "m": max_id})
            warehouse.fetchone()

        def fingerprint_source():
            from ingestion.extract import fingerprint_columns

            source_connection.execute(
                sa.select(*fingerprint_columns(id_column), sa.func.max(id_column)).select_from(table)).one()

        def fingerprint_compared():
            fingerprint_source()
            warehouse_ids_fingerprint(source, max_id)

        def ranges():
            reader.range_fingerprints(range_size=DIFF_RANGE, up_to_id=max_id)
            warehouse_range_fingerprints(source, max_id)

        checks = {"count_check": count_check, "fingerprint_fast_path": fingerprint_source,
                  "fingerprint_compared": fingerprint_compared, "ranges": ranges}
        samples = {name: {"wall_ms": []} for name in checks}
        cpu_total = dict.fromkeys(checks, 0.0)
        for check in checks.values():  # warm the caches once
            check()
        for _ in range(rounds):
            for name, check in checks.items():
                with CpuOf(source_pid, warehouse_pid) as cost:
                    check()
                samples[name]["wall_ms"].append(cost.wall_ms)
                cpu_total[name] += cost.cpu_ms
    figures = {name: {"wall_ms": round(median(samples[name]["wall_ms"]), 3),
                      "cpu_ms": round(cpu_total[name] / rounds, 3)} for name in checks}
    base = figures["count_check"]
    for name in ("fingerprint_fast_path", "fingerprint_compared", "ranges"):
        figures[name]["wall_vs_count_check"] = round(figures[name]["wall_ms"] / base["wall_ms"], 2)
    for name in ("fingerprint_fast_path", "fingerprint_compared", "ranges"):
        figures[name]["cpu_vs_count_check"] = (round(figures[name]["cpu_ms"] / base["cpu_ms"], 2)
                                               if base["cpu_ms"] else None)
    figures["ids_scanned_per_check"] = snapshot.row_count
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 and 10,000 rows, 20 rounds")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    rounds = args.rounds or (20 if args.quick else 100)
    from bench.stack import SourceDatabases, say

    results = {}
    with bench_environment(), SourceDatabases("pisa_change_src_") as sources:
        for code, rows in zip(("ALB", "ARG"), sizes):
            say(f"{code}: {rows:,} rows into a source and the warehouse...")
            handle, source = _source_with_rows(code, rows, sources.template)
            results[f"{rows}_rows"] = measure(source, handle, rounds)
            handle.dispose()
    report("change_detection", {
        "what": "per poll of one source: wall and CPU ms (this process + the PostgreSQL backends), median of "
                f"{rounds} alternating rounds; the count check is what the fingerprint replaced",
        **results,
    }, quick=args.quick)


if __name__ == "__main__":
    main()

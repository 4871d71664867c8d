"""Freshness: the delay from a row's commit in its source to its presence in the warehouse and in the API's count,
with the simulator adding 200 rows/s over 20 sources and the real processes of `make run` doing the work.

    .venv/bin/python -m bench.freshness [--quick] [--rate 200] [--seconds 60] [--bursts]

Processes (bench/stack.py): `manage.py simulate` (its sources in databases of their own), and the Procfile's web,
ingest, metrics and beat. An observer polls every 50 ms: new warehouse rows (delay = seen - the source row's
created_at, which the source sets at commit-time-ish now()) and GET /api/v1/countries/ (a row counts as served once
its country's n_students reaches the row's rank in that country). Reported: p50 and p99 of both, over every row
the simulator added. Targets: p50 under 1 s, p99 under 2 s. The observer's 50 ms period bounds the bias. Also
reported, to tell waiting from working: the delay to the start of the transaction that loaded each row. The feed is
steady unless --bursts: the simulator's bursts come at random, so two runs would not measure the same load.
"""

from __future__ import annotations

import argparse

from bench.common import bench_environment, report
from bench.stack import COUNTRIES, SourceDatabases, Stack, say

SEED_ROWS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--bursts", action="store_true",
                        help="with the simulator's bursts (4-10x the rate for 3-10 s, about once a minute, at random)")
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    with bench_environment(), SourceDatabases("pisa_fresh_src_") as sources, Stack("freshness") as stack:
        say("seeding the sources...")
        stack.run(sources.simulate(seed_rows=SEED_ROWS, seed=7), env=stack.env)
        seeded = sum(stack.wait_until_settled().values())
        say(f"{seeded} seed rows loaded; simulating {args.rate:g} rows/s for {seconds:g}s...")
        figures = stack.freshness(sources, rate=args.rate, seconds=seconds, seed=8, bursts=args.bursts)
    report("freshness", {
        "what": f"simulator at {args.rate:g} rows/s over {len(COUNTRIES)} sources for {seconds:g}s"
                f"{' with its random bursts' if args.bursts else ' (steady)'}; "
                "delay from the source row's created_at to its presence",
        **figures,
        "targets": "p50 < 1 s, p99 < 2 s",
    }, quick=args.quick)


if __name__ == "__main__":
    main()

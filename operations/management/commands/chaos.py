"""`manage.py chaos [--quick]`: a scripted fault scenario against the running stack, then proof nothing was lost."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from operations.chaos import FULL, QUICK, ChaosError, chaos_run, report_lines


class Command(BaseCommand):
    help = ("While the simulator feeds the sources of a running stack (`make run`): SIGKILL an ingest worker's pool "
            "process mid-batch, restart Redis, take a source down, empty one, inject bad rows, a late transaction, "
            "updates and deletes; then let the pipeline settle, verify every source and the metrics, and report. "
            "Exits 1 on any loss, duplicate or difference (docs/operations.md).")

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true",
                            help=f"short outages and a small backlog (a source down {QUICK.outage_seconds:g} s, "
                                 f"Redis {QUICK.redis_down_seconds:g} s, {QUICK.backlog_rows:,} backlog rows)")
        parser.add_argument("--outage", type=float, metavar="SECONDS",
                            help=f"how long the source stays down (default {FULL.outage_seconds:g}, "
                                 f"--quick {QUICK.outage_seconds:g})")
        parser.add_argument("--redis-down", type=float, metavar="SECONDS",
                            help=f"how long Redis stays stopped (default {FULL.redis_down_seconds:g})")
        parser.add_argument("--late-hold", type=float, metavar="SECONDS",
                            help=f"how long the late transaction stays open (default {FULL.late_hold_seconds:g})")
        parser.add_argument("--backlog", type=int, metavar="ROWS",
                            help=f"rows the killed worker is loading (default {FULL.backlog_rows:,})")
        parser.add_argument("--source", action="append", metavar="CNT",
                            help="only do faults to these sources (repeatable); verify still covers every one")
        parser.add_argument("--json", dest="json_path", type=Path, metavar="PATH",
                            help="also write the report as JSON to PATH")

    def handle(self, *args, quick=False, outage=None, redis_down=None, late_hold=None, backlog=None, source=None,
               json_path=None, **options):
        overrides = {"outage_seconds": ("--outage", outage), "redis_down_seconds": ("--redis-down", redis_down),
                     "late_hold_seconds": ("--late-hold", late_hold), "backlog_rows": ("--backlog", backlog)}
        for option, value in overrides.values():
            if value is not None and value <= 0:
                raise CommandError(f"{option} must be more than zero")
        plan = dataclasses.replace(QUICK if quick else FULL,
                                   **{name: value for name, (_, value) in overrides.items() if value is not None})
        try:
            report = chaos_run(plan=plan, codes=source, say=self.stdout.write)
        except ChaosError as exc:
            raise CommandError(str(exc)) from exc
        for line in report_lines(report):
            self.stdout.write(self.style.SUCCESS(line) if line.startswith("Outcome: PASS") else
                              self.style.ERROR(line) if line.startswith("Outcome: FAIL") else line)
        if json_path is not None:
            json_path.write_text(json.dumps(report.as_dict(), indent=2, default=str))
        if not report.ok:
            raise CommandError(f"the chaos scenario found {len(report.failures)} problem(s)")

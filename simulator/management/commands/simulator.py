"""`manage.py simulator ...`: steer a running `simulate` (rate, pause) and do faults to one source on purpose."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from ingestion.selectors import source_get, source_list
from ingestion.services import SourceNotFoundError
from simulator.models import Injection
from simulator.selectors import codebook_specs, injection_list, simulator_control_get
from simulator.services import (
    LATE_HOLD_SECONDS, injection_bad_rows, injection_delete, injection_late, injection_update, responses_count,
    simulator_control_set, source_empty, source_open, student_factory_for_sources,
)

INJECTION_KINDS = ("late", "update", "delete", "bad")


class Command(BaseCommand):
    help = "Change the running simulator's rate, pause/resume it, empty a source or inject a fault into it."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        rate = actions.add_parser("rate", help="set the rows per second over all sources")
        rate.add_argument("rows_per_second", type=float, help="e.g. 500 for a benchmark, 0.17 for the course's pace")
        actions.add_parser("pause", help="stop inserting (the loop keeps running)")
        actions.add_parser("resume", help="insert again")
        actions.add_parser("status", help="rate, pause, source sizes and the latest injections")
        empty = actions.add_parser("empty", help="remove every row of a source (TRUNCATE)")
        empty.add_argument("code")
        inject = actions.add_parser("inject", help="do a fault to one source, logged with what it touched")
        inject.add_argument("kind", choices=INJECTION_KINDS)
        inject.add_argument("code")
        inject.add_argument("--count", type=int, default=5, help="rows affected (default 5)")
        inject.add_argument("--hold", type=float, default=LATE_HOLD_SECONDS,
                            help="late: seconds the transaction stays open")
        inject.add_argument("--seed", type=int, default=0, help="for the rows an injection creates")

    def handle(self, *args, action, **options):
        if action == "rate":
            if options["rows_per_second"] < 0:
                raise CommandError("the rate must be zero or more rows per second")
            control = simulator_control_set(rows_per_second=options["rows_per_second"])
            self.stdout.write(f"Rate set: {control}")
        elif action in {"pause", "resume"}:
            control = simulator_control_set(paused=action == "pause")
            self.stdout.write(f"Simulator {'paused' if control.paused else 'resumed'}: {control}")
        elif action == "status":
            self._status()
        else:
            self._fault(action, options)

    def _status(self):
        self.stdout.write(f"Simulator: {simulator_control_get()}")
        for source in source_list():
            try:
                handle = source_open(source)
                rows = responses_count(engine=handle.engine, table=handle.table)
                handle.dispose()
            except Exception as exc:  # an unreachable source must not hide the others
                rows = f"unreachable ({type(exc).__name__})"
            self.stdout.write(f"  {source.code:<6} {'on ' if source.enabled else 'off'} {rows} rows")
        for injection in injection_list(limit=10):
            self.stdout.write(f"  {injection}: {len(injection.details.get('ids', []))} ids")

    def _fault(self, action: str, options):
        code = options["code"].upper()
        try:
            handle = source_open(source_get(code=code))
        except SourceNotFoundError as exc:
            raise CommandError(str(exc)) from exc
        try:
            injection = self._do(action, handle, options)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            handle.dispose()
        self.stdout.write(f"{injection} (injection {injection.pk}):")
        self.stdout.write(json.dumps(injection.details, default=str)[:2000])

    def _do(self, action: str, handle, options) -> Injection:
        count = options.get("count") or 0
        if action == "empty":
            return source_empty(handle=handle)
        if count < 1:
            raise ValueError("--count must be at least 1")
        kind = options["kind"]
        if kind == "update":
            return injection_update(handle=handle, count=count)
        if kind == "delete":
            return injection_delete(handle=handle, count=count)
        specs = codebook_specs()
        factory = student_factory_for_sources(seed=options["seed"], specs=specs)
        if kind == "late":
            self.stdout.write(f"Holding {count} rows in an open transaction for {options['hold']:g} s...")
            return injection_late(handle=handle, factory=factory, specs=specs, count=count,
                                  hold_seconds=options["hold"])
        return injection_bad_rows(handle=handle, factory=factory, specs=specs, count=count)

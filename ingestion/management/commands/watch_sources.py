"""python manage.py watch_sources: start each new row's sync within ~50 ms of its commit (ingestion/watch.py)."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from ingestion.watch import sources_watch

STATUS_EVERY_SECONDS = 60


class Command(BaseCommand):
    help = ("Probe every enabled source's largest id every WATCH_PROBE_SECONDS and queue its sync as soon as it grows "
            "(the fan-out still syncs every source every second; this only makes a new row's sync start sooner).")

    def add_arguments(self, parser):
        parser.add_argument("--probe-seconds", type=float, default=None,
                            help=f"time between probes of a source (default WATCH_PROBE_SECONDS, "
                                 f"{settings.WATCH_PROBE_SECONDS})")

    def handle(self, *args, probe_seconds=None, **options):
        every = settings.WATCH_PROBE_SECONDS if probe_seconds is None else probe_seconds
        self.stdout.write(f"watching the enabled sources every {every * 1000:.0f} ms (Ctrl-C stops)")
        last = [time.monotonic()]

        rounds = []

        def status(watched, seconds):
            rounds.append(seconds)
            if time.monotonic() - last[0] >= STATUS_EVERY_SECONDS:
                last[0] = time.monotonic()
                failing = sorted(entry.source.code for entry in watched.values() if entry.failures)
                started = sum(entry.syncs_started for entry in watched.values())
                # A round longer than the probe period means the probes themselves fall behind (a slow source).
                rounds.sort()
                self.stdout.write(f"{len(watched)} sources watched, {started} syncs started by a new row so far; "
                                  f"a round of probes took {rounds[len(rounds) // 2] * 1000:.0f} ms (median), "
                                  f"{rounds[-1] * 1000:.0f} ms at most"
                                  + (f"; cannot probe: {', '.join(failing)}" if failing else ""))
                rounds.clear()

        try:
            sources_watch(probe_seconds=probe_seconds, on_round=status)
        except KeyboardInterrupt:
            pass

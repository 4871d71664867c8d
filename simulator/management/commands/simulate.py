"""`manage.py simulate`: create the per-country source databases, seed them and keep feeding them new responses."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from simulator.replay import ReplayFileError, replay_chunks
from simulator.runner import (
    COURSE_ROWS_PER_SECOND, DEFAULT_ROWS_PER_SECOND, SEED_ROWS, ReplaySupply, Simulation, SyntheticSupply,
    serials_resume,
)
from simulator.schema import STYLES
from simulator.selectors import CodebookMissingError, codebook_specs
from simulator.services import (
    default_url_template, shares_for, simulator_control_set, source_provision, student_factory_for_sources,
)
from simulator.students import TextStyle, country_ids

DEMO_COUNTRIES = "ALB ARG AUS AUT BEL BGR BIH BLR BRA BRN CAN CHE CHL COL CRI CZE DEU DNK DOM ESP".split()


def rate_argument(value: str) -> float:
    if value == "course":
        return COURSE_ROWS_PER_SECOND
    rate = float(value)
    if rate < 0:
        raise ValueError(value)
    return rate


class Command(BaseCommand):
    help = "Create, seed and continuously feed per-country PISA source databases (see docs/simulator.md)."

    def add_arguments(self, parser):
        parser.add_argument("--countries", default=" ".join(DEMO_COUNTRIES),
                            help="country codes, comma- or space-separated (default: the course's 20)")
        parser.add_argument("--rate", type=rate_argument, default=DEFAULT_ROWS_PER_SECOND,
                            help=f"rows per second over all sources, or 'course' ({COURSE_ROWS_PER_SECOND}); "
                                 f"default {DEFAULT_ROWS_PER_SECOND}")
        parser.add_argument("--seed", type=int, default=2018, help="makes the generated rows reproducible")
        parser.add_argument("--style", choices=STYLES, default="typed",
                            help="typed: numeric columns with PISA missing codes; text: every column text, 'NA'")
        parser.add_argument("--from", dest="replay", type=Path,
                            help="replay a real PISA student file (.sav or .csv), split by CNT")
        parser.add_argument("--url-template",
                            help="SQLAlchemy URL with {code}, e.g. sqlite:////tmp/src_{code}.db "
                                 "(default: pisa_src_{code} on the warehouse's PostgreSQL server)")
        parser.add_argument("--seed-rows", type=int, default=SEED_ROWS,
                            help="rows all sources together hold before the continuous feed starts")
        parser.add_argument("--duration", type=float, help="stop after this many seconds")
        parser.add_argument("--max-rows", type=int, help="stop after feeding this many rows (after seeding)")
        parser.add_argument("--steady", action="store_true",
                            help="exactly --rate, without the bursts of 4-10x the rate about once a minute")
        parser.add_argument("--keep-alive", action="store_true",
                            help="when the simulator cannot start (no codebook, say), print why and idle until "
                                 "stopped instead of exiting: under honcho an exit would stop the whole stack")

    def handle(self, *args, **options):
        stop = threading.Event()
        # SIGTERM (honcho, docker) and Ctrl-C end the loop between two batches: no half-written batch, no traceback.
        previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._simulate(stop, options)
        except CommandError as exc:
            if not options["keep_alive"]:
                raise
            self.stderr.write(f"The source simulator cannot start: {exc}\nIdling until stopped.")
            stop.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _simulate(self, stop: threading.Event, options) -> None:
        if not settings.SIMULATOR_ENABLED:
            self.stdout.write("The source simulator is disabled (SIMULATOR_ENABLED=0); idling until stopped.")
            stop.wait()
            return
        try:
            specs = codebook_specs()
        except CodebookMissingError as exc:
            raise CommandError(str(exc)) from exc
        known = country_ids(specs)
        countries = [code.strip().upper() for code in options["countries"].replace(",", " ").split() if code.strip()]
        unknown = [code for code in countries if code not in known]
        if unknown:
            raise CommandError(f"not PISA 2018 country codes of the codebook: {', '.join(unknown)}")
        url_template = options["url_template"] or default_url_template()
        style = options["style"]

        def provision(code: str):
            if code not in known:
                raise CommandError(f"the replayed file has rows of {code!r}, not a country code of the codebook")
            handle = source_provision(code=code, name=known[code][1], url_template=url_template, specs=specs,
                                      style=style)
            if handle.style != style:
                self.stderr.write(f"{code}: its table already exists in the {handle.style} style; kept as it is")
            return handle

        text_style = TextStyle(specs)
        handles = {}
        if options["replay"]:
            try:
                supply = ReplaySupply(replay_chunks(options["replay"], specs))
            except ReplayFileError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"Replaying {options['replay']} into one source per country...")
        else:
            factory = student_factory_for_sources(seed=options["seed"], specs=specs)
            if factory.coarse:
                self.stderr.write("No student sample found under PISA_SHARED_DIR: rows come from the codebook alone.")
            self.stdout.write(f"Preparing {len(countries)} source databases ({style} style)...")
            for code in countries:
                handles[code] = provision(code)
                serials_resume(handle=handles[code], country_id=known[code][0])
            supply = SyntheticSupply(factory=factory, shares=shares_for(countries, seed=options["seed"]),
                                     seed=options["seed"])
        # The shared control (`manage.py simulator rate/pause`) belongs to the process that feeds the sources; a
        # one-off replay runs at its own --rate and leaves the feeding process's rate alone.
        fixed_rate = options["rate"] if options["replay"] else None
        if fixed_rate is None:
            simulator_control_set(rows_per_second=options["rate"], paused=False)
        simulation = Simulation(handles=handles, provision=provision, text_style=text_style, supply=supply,
                                seed=options["seed"], say=self.stdout.write, bursts=not options["steady"],
                                fixed_rate=fixed_rate)
        try:
            if not options["replay"]:
                seeded = simulation.seed_rows(options["seed_rows"])
                self.stdout.write(f"Seeded {seeded} rows; feeding {options['rate']:g} rows/s "
                                  f"(change it with `manage.py simulator rate R`). Ctrl-C stops.")
            inserted = simulation.run(stop=stop, duration=options["duration"], max_rows=options["max_rows"])
        except ReplayFileError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            for handle in simulation.handles.values():
                handle.dispose()
        self.stdout.write(f"Simulator stopped after inserting {inserted} rows into {len(simulation.handles)} sources.")

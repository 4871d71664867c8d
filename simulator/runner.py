"""The `simulate` loop: feeds the source databases at a controlled, bursty rate until told to stop."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg2
from django.db import OperationalError, close_old_connections
from sqlalchemy.exc import SQLAlchemyError

from simulator.selectors import simulator_control_get, source_max_value
from simulator.services import SourceHandle, responses_count, responses_insert, student_serials_reserve_at_least
from simulator.students import SERIAL_DIGITS, StudentFactory, TextStyle

# The course's sources grew from about 100 rows to 100,000+ in a week: 100,000 / 604,800 s = 0.17 rows/s on average.
COURSE_ROWS_PER_SECOND = 0.17
# The default is faster (see docs/simulator.md): every country gets a new response about every 10 s on average, enough
# to watch a dashboard move, while staying near 170,000 rows (~0.8 GB) a day.
DEFAULT_ROWS_PER_SECOND = 2.0
SEED_ROWS = 100
TICK_SECONDS = 0.5
# A tick never inserts more than this, however far behind the loop fell (a long pause of the machine, say).
MAX_ROWS_PER_TICK = 5_000
BURST_CHANCE_PER_SECOND = 1 / 60
BURST_SECONDS = (3.0, 10.0)
BURST_MULTIPLIER = (4.0, 10.0)
PROGRESS_EVERY_SECONDS = 10.0


class SyntheticSupply:
    """New synthetic students, spread over countries by uneven shares."""

    def __init__(self, *, factory: StudentFactory, shares: dict[str, float], seed: int) -> None:
        self.factory = factory
        self.countries = list(shares)
        self.weights = [shares[code] for code in self.countries]
        self.rng = random.Random(seed)

    def take(self, n: int) -> dict[str, list[dict]] | None:
        counts: dict[str, int] = defaultdict(int)
        for country in self.rng.choices(self.countries, weights=self.weights, k=n):
            counts[country] += 1
        return {country: self.factory.students(country, k) for country, k in counts.items()}


class ReplaySupply:
    """The records of a real student file in file order, each to its country's source; None once exhausted."""

    def __init__(self, chunks: Iterator[list[dict]]) -> None:
        self.chunks = chunks
        self.buffer: list[dict] = []

    def take(self, n: int) -> dict[str, list[dict]] | None:
        while len(self.buffer) < n:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer.extend(chunk)
        if not self.buffer:
            return None
        taken, self.buffer = self.buffer[:n], self.buffer[n:]
        by_country: dict[str, list[dict]] = defaultdict(list)
        for row in taken:
            by_country[str(row["cnt"])].append(row)
        return dict(by_country)


@dataclass
class Pace:
    """Rows due per tick: the rate times the elapsed time, with occasional seeded bursts (unless `bursts` is off:
    benchmarks that need exactly the rate asked for); fractions carried over."""

    seed: int
    bursts: bool = True
    carry: float = 0.0
    burst_until: float = 0.0
    burst_multiplier: float = 1.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def rows_due(self, *, rate: float, elapsed: float, now: float) -> int:
        if now >= self.burst_until:
            self.burst_multiplier = 1.0
            if self.bursts and self.rng.random() < BURST_CHANCE_PER_SECOND * elapsed:
                self.burst_until = now + self.rng.uniform(*BURST_SECONDS)
                self.burst_multiplier = self.rng.uniform(*BURST_MULTIPLIER)
        self.carry += rate * self.burst_multiplier * elapsed
        due = min(int(self.carry), MAX_ROWS_PER_TICK)
        self.carry -= int(self.carry)
        return due

    @property
    def bursting(self) -> bool:
        return self.burst_multiplier > 1.0


class Simulation:
    def __init__(
        self,
        *,
        handles: dict[str, SourceHandle],
        provision: Callable[[str], SourceHandle],
        text_style: TextStyle,
        supply,
        seed: int,
        say: Callable[[str], None],
        bursts: bool = True,
        fixed_rate: float | None = None,
    ) -> None:
        """`fixed_rate`: feed at this rate whatever the shared control says (a one-off replay); None: follow the
        control (`manage.py simulator rate/pause`), which belongs to the process feeding the sources."""
        self.handles = handles
        self.provision = provision
        self.text_style = text_style
        self.supply = supply
        self.pace = Pace(seed, bursts=bursts)
        self.fixed_rate = fixed_rate
        self.say = say
        self.inserted = 0
        self.unavailable: set[str] = set()

    def feed(self, batch: dict[str, list[dict]]) -> int:
        """Insert one batch, one transaction per source; how many rows went in.

        A source that cannot be written (down, refusing connections, its table renamed) loses this batch's rows, which
        were never committed, and the others carry on: a real survey's sources fail one at a time, and under honcho
        an exception here would stop the whole stack."""
        count = 0
        for country, rows in batch.items():
            handle = self.handles.get(country)
            if handle is None:
                handle = self.handles[country] = self.provision(country)
            styled = [self.text_style.row(row) for row in rows] if handle.style == "text" else rows
            try:
                written = len(responses_insert(engine=handle.engine, table=handle.table, rows=styled))
            except (SQLAlchemyError, psycopg2.Error) as exc:
                if country not in self.unavailable:
                    self.say(f"{country}: cannot write to the source ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); skipping its rows")
                self.unavailable.add(country)
                continue
            if country in self.unavailable:
                self.unavailable.discard(country)
                self.say(f"{country}: the source accepts rows again")
            count += written
        self.inserted += count
        return count

    def seed_rows(self, total: int) -> int:
        """Top the sources up to `total` rows altogether (the course's ~100 at the start); how many were added."""
        present = sum(responses_count(engine=handle.engine, table=handle.table) for handle in self.handles.values())
        missing = max(total - present, 0)
        batch = self.supply.take(missing) if missing else None
        return self.feed(batch) if batch else 0

    def run(
        self, *, stop: threading.Event, duration: float | None = None, max_rows: int | None = None,
    ) -> int:
        """Insert rows at the controlled rate until `stop` is set, the duration or row budget is used, or a replayed
        file ends; the number of rows inserted by this call."""
        started = last = last_progress = time.monotonic()
        inserted_before = self.inserted
        rate, paused = self._control(None, False)
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            rate, paused = self._control(rate, paused)
            due = 0 if paused else self.pace.rows_due(rate=rate, elapsed=now - last, now=now)
            last = now
            if max_rows is not None:
                due = min(due, max_rows - (self.inserted - inserted_before))
            if due:
                batch = self.supply.take(due)
                if batch is None:
                    self.say("The replayed file is exhausted.")
                    break
                self.feed(batch)
            if max_rows is not None and self.inserted - inserted_before >= max_rows:
                break
            if now - last_progress >= PROGRESS_EVERY_SECONDS:
                state = "paused" if paused else f"{rate:g} rows/s" + (" (burst)" if self.pace.bursting else "")
                self.say(f"{self.inserted} rows inserted so far; {state}")
                last_progress = now
            stop.wait(TICK_SECONDS)
        return self.inserted - inserted_before

    def _control(self, rate: float | None, paused: bool) -> tuple[float, bool]:
        """The rate and pause the operator set; on a database hiccup, keep going as before."""
        if self.fixed_rate is not None:
            return self.fixed_rate, False
        try:
            control = simulator_control_get()
        except OperationalError:
            close_old_connections()
            return rate if rate is not None else DEFAULT_ROWS_PER_SECOND, paused
        return control.rows_per_second, control.paused


def serials_resume(*, handle: SourceHandle, country_id: int) -> None:
    """Hand out no CNTSTUID/CNTSCHID that the source already holds (it may outlive the warehouse)."""
    base = country_id * 10**SERIAL_DIGITS
    for kind, column in (("student", "cntstuid"), ("school", "cntschid")):
        largest = source_max_value(handle=handle, column=column)
        if largest is not None and largest > base:
            student_serials_reserve_at_least(country=handle.code, kind=kind, last_serial=largest - base)

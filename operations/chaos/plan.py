"""How hard and how long the scenario pushes, what it reports, and the ways a step can end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


# How often the scenario looks at the warehouse while it waits for the pipeline.
POLL_SECONDS = 0.25
# The rows the scenario adds come from the simulator's factory (CNTSTUIDs from the same shared serials).
CHAOS_SEED = 8118
# The simulator reads its control row every tick (0.5 s); a batch it began before the pause may commit after it.
SIMULATOR_PAUSE_MARGIN_SECONDS = 2.0
INSPECT_TIMEOUT_SECONDS = 1.0
# A backlog can finish loading before a kill lands (a fast machine, a small --backlog): try again, twice as large.
KILL_ATTEMPTS = 3
BAD_ROWS = 14  # each problem at least twice (the injection cycles through the 6 or 7 the style can hold)
LATE_ROWS = 5
UPDATED_ROWS = 5
DELETED_ROWS = 5
RESUME_PROBE_ROWS = 5

# Steps that act on one source each; bad rows and the updates and deletes share one (see `_assign`).
SOURCE_ROLES = ("kill-worker", "restart-redis", "source-outage", "empty-source", "late-transaction",
                "late-insert-delete", "delete-newest")
# How long the published figures of a country are watched after its newest row is deleted.
WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class ChaosPlan:
    """How hard and how long. `FULL` is the default of `manage.py chaos`, `QUICK` its `--quick` (and CI's)."""

    outage_seconds: float = 60.0
    redis_down_seconds: float = 5.0
    late_hold_seconds: float = 10.0
    backlog_rows: int = 20_000
    # Deadlines for the pipeline to react to one fault, and to settle at the end; generous, never an assertion of speed.
    step_timeout_seconds: float = 180.0
    settle_timeout_seconds: float = 300.0


FULL = ChaosPlan()
QUICK = ChaosPlan(outage_seconds=5.0, redis_down_seconds=1.0, late_hold_seconds=2.0, backlog_rows=4000,
                  step_timeout_seconds=90.0, settle_timeout_seconds=120.0)


class ChaosError(RuntimeError):
    """The scenario cannot run (no stack found, no source): the message says what is missing."""


class StepFailed(RuntimeError):
    """The pipeline did not do what a step waits for within its deadline."""


class StackBroken(StepFailed):
    """A process of the stack (an ingest worker, beat) exited during the scenario: nothing after can be trusted."""


class StepSkipped(RuntimeError):
    """A step that cannot be done here (an external Redis); the message says why."""


@dataclass
class StepOutcome:
    name: str
    status: str = "running"  # done, skipped or failed
    source: str = ""
    started_at: str = ""
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    started_at: str
    steps: list[StepOutcome] = field(default_factory=list)
    verification: dict | None = None
    verify_attempts: int = 0
    metrics_differences: dict[str, list[str]] = field(default_factory=dict)
    metrics_countries: int = 0
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        problems = [f"{step.name} failed: {step.lines[-1] if step.lines else ''}" for step in self.steps
                    if step.status == "failed"]
        if self.verification is None:
            problems.append("verify did not run")
        elif not self.verification["ok"]:
            total = self.verification["total"]
            problems.append("verify: " + (total["error"] or ", ".join(
                f"{total[kind]} {kind}" for kind in ("missing", "extra", "differing", "duplicated"))))
        problems += [f"metrics of {country} differ from a rebuild" for country in self.metrics_differences]
        return problems

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "failures": self.failures}


def report_lines(report: ChaosReport) -> list[str]:
    """The closing table of a run: one line per step, then the outcome."""
    lines = [f"Chaos report (started {report.started_at}, {report.seconds:.0f} s):"]
    for step in report.steps:
        last = step.lines[-1] if step.lines else ""
        lines.append(f"  {step.name:<17} {step.status:<8} {step.seconds:6.1f}s  {step.source:<4} {last}")
    lines.append("Outcome: " + ("PASS: no loss, no duplicate, no difference" if report.ok
                                else "FAIL: " + "; ".join(report.failures)))
    return lines


def poll_until(condition: Callable[[], object], *, timeout: float) -> float | None:
    """Seconds until `condition()` was true, or None if it was not within `timeout`."""
    began = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            return None
        time.sleep(POLL_SECONDS)

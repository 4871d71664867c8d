"""Running the scenario against a stack: choosing sources, running each step with its deadline."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from django.db import close_old_connections
from django.utils import timezone

from ingestion.models import Source
from operations.chaos.faults import FaultSteps, source_style
from operations.chaos.plan import (CHAOS_SEED, SOURCE_ROLES, ChaosError, ChaosPlan, ChaosReport, StackBroken, StepFailed,
                                   StepOutcome, StepSkipped, poll_until)
from operations.chaos.proof import ProofSteps
from operations.chaos.stack import Stack, is_alive, url_without_password, stack_find
from simulator.selectors import codebook_specs, simulator_control_get
from simulator.services import SourceHandle, simulator_control_set, source_open, student_factory_for_sources

class ChaosRun(FaultSteps, ProofSteps):
    """The scenario: its faults (faults.py) one after the other, then the proof (proof.py)."""

    def __init__(self, *, stack: Stack, plan: ChaosPlan, sources: list[Source], say: Callable[[str], None]) -> None:
        if not sources:
            raise ChaosError("no enabled source: start the stack with `make run` (its simulator creates 20)")
        if not stack.ingest_workers:
            raise ChaosError(f"no Celery worker consumes the ingestion queue of the broker {url_without_password(stack.broker_url)}: "
                             "start the stack with `make run` first")
        if not stack.beat:
            raise ChaosError(f"no Celery beat uses the broker {url_without_password(stack.broker_url)}: without it nothing is "
                             "synced; start the stack with `make run` first")
        self.stack = stack
        self.plan = plan
        self.say_line = say
        self.started = time.monotonic()
        self.report = ChaosReport(started_at=timezone.now().isoformat(timespec="seconds"))
        self.specs = codebook_specs()
        self.factory = student_factory_for_sources(seed=CHAOS_SEED, specs=self.specs)
        self.targets = self._assign(sources)
        self.step: StepOutcome | None = None
        self.faults_done_at: dt.datetime | None = None
        self.duplicate: tuple[int, int] | None = None  # (kept row id, CNTSTUID) of the injected duplicates
        self.bad_row_ids: list[int] = []  # the rows bad-rows inserted: later steps leave them alone

    # --- output ---
    def say(self, message: str) -> None:
        stamp = f"[{timezone.localtime():%H:%M:%S} +{time.monotonic() - self.started:6.1f}s]"
        self.say_line(f"{stamp} {message}")
        if self.step is not None:
            self.step.lines.append(message)

    # --- choosing sources ---
    def _assign(self, sources: list[Source]) -> dict[str, Source]:
        """One source per fault where there are enough (cycling otherwise). Bad rows go to a text-style source when
        there is one, because only text can hold text in a numeric column; the updates and deletes go to the same
        source, so that one of them can delete the row that superseded an injected duplicate."""
        ordered = sorted(sources, key=lambda source: source.code)
        text_source = next((source for source in ordered if source_style(source) == "text"), None)
        others = [source for source in ordered if source != text_source] or ordered
        targets = {role: others[index % len(others)] for index, role in enumerate(SOURCE_ROLES)}
        targets["bad-rows"] = targets["update-delete"] = text_source or others[len(SOURCE_ROLES) % len(others)]
        return targets

    # --- running ---
    def run(self) -> ChaosReport:
        self.say(f"Chaos scenario on {len(self.stack.ingest_workers)} ingest worker(s) "
                 f"(pids {', '.join(str(p.pid) for p in self.stack.ingest_workers)}), beat pid "
                 f"{self.stack.beat[0].pid}, broker {url_without_password(self.stack.broker_url)}"
                 f"{' (embedded Redis)' if self.stack.embedded_redis else ''}")
        self.say("Targets: " + ", ".join(f"{role} {source.code}" for role, source in self.targets.items()))
        was_paused = simulator_control_get().paused
        if not self.stack.simulators:
            self.say("warning: no `manage.py simulate` process of this warehouse found: the sources do not grow "
                     "during the scenario (start the stack with `make run`)")
        if was_paused:
            self.say("The simulator was paused: resuming it for the scenario")
            simulator_control_set(paused=False)
        try:
            for name, action in (("kill-worker", self.kill_worker), ("restart-redis", self.restart_redis),
                                 ("source-outage", self.source_outage), ("empty-source", self.empty_source),
                                 ("bad-rows", self.bad_rows), ("late-transaction", self.late_transaction),
                                 ("update-delete", self.update_delete),
                                 ("late-insert-delete", self.late_insert_delete),
                                 ("delete-newest", self.delete_newest)):
                self._run_step(name, action)
            self.faults_done_at = timezone.now()
            self._run_step("settle", self.settle)
            self._run_step("verify", self.verify)
            self._run_step("metrics-verify", self.metrics_verify)
        except StackBroken:
            self.say("The scenario stops: a process of the stack is gone (see its log); start the stack again")
        finally:
            simulator_control_set(paused=was_paused)
            self.say(f"The simulator is {'paused again' if was_paused else 'feeding the sources again'}")
        self.report.seconds = time.monotonic() - self.started
        return self.report

    def _run_step(self, name: str, action: Callable[[Source], None]) -> None:
        source = self.targets.get(name)
        self.step = StepOutcome(name=name, source=source.code if source else "",
                                started_at=timezone.localtime().isoformat(timespec="seconds"))
        self.report.steps.append(self.step)
        began = time.monotonic()
        self.say(f"== {name}" + (f" ({source.code})" if source else ""))
        try:
            action(source)
            self.step.status = "done"
        except StepSkipped as exc:
            self.step.status = "skipped"
            self.say(f"skipped: {exc}")
        except StepFailed as exc:
            self.step.status = "failed"
            self.say(f"FAILED: {exc}")
            if isinstance(exc, StackBroken):
                raise
        except Exception as exc:  # noqa: BLE001 - a fault that broke the scenario itself: report it and go on
            self.step.status = "failed"
            self.say(f"FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        finally:
            self.step.seconds = round(time.monotonic() - began, 1)
            self.step = None
            close_old_connections()

    def wait_for(self, condition: Callable[[], object], *, timeout: float, what: str) -> float:
        """Wait until `condition()` is true; the seconds it took. StepFailed after `timeout`, StackBroken as soon as
        a worker or beat has exited (waiting on would only run out every later step's deadline too)."""
        def stack_alive_and_condition() -> object:
            self._check_stack()
            return condition()

        seconds = poll_until(stack_alive_and_condition, timeout=timeout)
        if seconds is None:
            raise StepFailed(f"{what}: not after {timeout:g} s")
        return seconds

    def _check_stack(self) -> None:
        for role, processes in (("ingest worker", self.stack.ingest_workers), ("beat", self.stack.beat)):
            for process in processes:
                if not is_alive(process):
                    raise StackBroken(f"the {role} pid {process.pid} exited during the scenario")

    def _open(self, source: Source) -> SourceHandle:
        return source_open(source)


def chaos_run(*, plan: ChaosPlan, codes: list[str] | None = None, say: Callable[[str], None]) -> ChaosReport:
    """Run the scenario against the stack the settings point at. ChaosError when there is no stack to run it on."""
    say("Looking for the stack's processes and the sources (a few seconds)...")
    stack = stack_find()
    sources = Source.objects.filter(enabled=True)
    if codes:
        sources = sources.filter(code__in=[code.upper() for code in codes])
    return ChaosRun(stack=stack, plan=plan, sources=list(sources), say=say).run()

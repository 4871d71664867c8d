"""The proof once the faults are done: settle, compare every source, compare every country's metrics."""

from __future__ import annotations

import datetime as dt
import time

from django.conf import settings
from django.utils import timezone

from ingestion.models import Source, SourceState, StudentChange
from operations.verification import Verification, verify_sources
from metrics.services import countries_with_data, country_metrics_rebuild
from operations.chaos.plan import SIMULATOR_PAUSE_MARGIN_SECONDS, StepFailed
from simulator.services import simulator_control_set

class ProofSteps:
    """Mixed into ChaosRun: settling, then the same checks as `verify` and `metrics rebuild --verify`."""

    # --- settling and proof ---
    def settle(self, _source) -> None:
        sources = list(Source.objects.filter(enabled=True))
        self.wait_for(
            lambda: not SourceState.objects.filter(source__in=sources).exclude(
                last_success_at__gt=self.faults_done_at, consecutive_failures=0).exists(),
            timeout=self.plan.settle_timeout_seconds, what="every source synced without error after the faults")
        self.say("every source synced without error since the last fault")
        simulator_control_set(paused=True)
        paused_at = timezone.now() + dt.timedelta(seconds=SIMULATOR_PAUSE_MARGIN_SECONDS)
        self.say(f"paused the simulator; waiting for every source to be synced and reconciled after "
                 f"{timezone.localtime(paused_at):%H:%M:%S}, and the metrics to fold every change")

        def reconciled_after_pause() -> bool:
            behind = SourceState.objects.filter(source__in=sources).exclude(
                last_success_at__gt=paused_at, last_reconciled_at__gt=paused_at, consecutive_failures=0)
            if timezone.now() > paused_at:
                # Ask for a full content comparison of every source (PostgreSQL sources otherwise compare only when
                # their update counter moves, which the update step above has shown).
                behind.filter(last_reconciled_at__lte=paused_at).update(last_reconciled_at=None)
            return not behind.exists()

        seconds = self.wait_for(
            reconciled_after_pause,
            timeout=self.plan.settle_timeout_seconds + settings.INGEST_RECONCILE_SECONDS,
            what="every source synced and reconciled after the pause")
        self.say(f"every source synced and reconciled {seconds:.1f} s later")
        pending = self._metrics_pending
        try:
            seconds = self.wait_for(lambda: not pending(), timeout=self.plan.settle_timeout_seconds,
                                    what="the metrics folding every change")
            self.say(f"the metrics folded every change ({seconds:.1f} s)")
        except StepFailed:
            raise StepFailed(f"changes never folded into the metrics of {', '.join(pending())}: a lost refresh "
                             "request (rebuild --verify below folds them itself)") from None

    @staticmethod
    def _metrics_pending() -> list[str]:
        return sorted(set(StudentChange.objects.values_list("country", flat=True).distinct()))

    def verify(self, _source) -> None:
        deadline = time.monotonic() + self.plan.settle_timeout_seconds
        while True:
            self.report.verify_attempts += 1
            attempt_at = timezone.now()
            verification = verify_sources(sources=Source.objects.filter(enabled=True).order_by("code"))
            self.report.verification = verification.as_dict()
            total = verification.total
            self.say(_summary(verification))
            if verification.ok:
                return
            for result in verification.sources:
                if not result.ok:
                    self.say(f"  {result.code}: " + (result.error or ", ".join(
                        f"{getattr(result, kind)} {kind} (ids {', '.join(map(str, ids))})"
                        for kind, ids in result.examples.items() if ids)))
            if time.monotonic() > deadline or total.error:
                raise StepFailed(f"the warehouse still differs from the sources after {self.report.verify_attempts} "
                                 "comparison(s)")
            # A sync that was running across the pause may have missed its last rows: one more round, then compare.
            failing = [result.code for result in verification.sources if not result.ok]
            self.say(f"comparing {', '.join(failing)} again after their next sync and reconciliation")
            SourceState.objects.filter(source__code__in=failing).update(last_reconciled_at=None)
            self.wait_for(lambda: not SourceState.objects.filter(source__code__in=failing).exclude(
                last_success_at__gt=attempt_at, last_reconciled_at__gt=attempt_at).exists(),
                timeout=self.plan.settle_timeout_seconds + settings.INGEST_RECONCILE_SECONDS,
                what="another sync and reconciliation")

    def metrics_verify(self, _source) -> None:
        countries = countries_with_data()
        self.report.metrics_countries = len(countries)
        for country in countries:
            result = country_metrics_rebuild(country=country, verify=True)
            if result.differences:
                self.report.metrics_differences[country] = result.differences
                self.say(f"{country}: {len(result.differences)} difference(s) from a rebuild over "
                         f"{result.students} students: {result.differences[0]}")
        if self.report.metrics_differences:
            raise StepFailed(f"{len(self.report.metrics_differences)} country state(s) differ from a rebuild")
        self.say(f"metrics rebuild --verify: the incremental state of all {len(countries)} countries matches a "
                 "rebuild from the warehouse")


def _summary(verification: Verification) -> str:
    from operations.verification import describe

    return "verify " + describe(verification.total)

"""The faults, one method each: what a step does to the stack and what it waits for."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import sqlalchemy as sa
from django.conf import settings
from django.utils import timezone

from ingestion.models import DuplicateStudent, QuarantinedRow, Source, SourceState, Student
from ingestion.source_urls import with_installed_driver
from operations.chaos.plan import (BAD_ROWS, DELETED_ROWS, INSPECT_TIMEOUT_SECONDS, KILL_ATTEMPTS, LATE_ROWS, POLL_SECONDS,
                                   RESUME_PROBE_ROWS, UPDATED_ROWS, WATCH_SECONDS, StepFailed, StepSkipped, poll_until)
from operations.chaos.stack import url_without_password
from simulator.schema import table_style
from simulator.services import (
    UPDATE_PV_DELTA, injection_bad_rows, injection_delete, injection_late, injection_update, source_empty,
    source_outage_begin, source_outage_end, students_insert,
)

class FaultSteps:
    """Mixed into ChaosRun: each method does one fault to `source` and waits until the pipeline copes."""

    # --- 1. SIGKILL mid-batch ---
    def kill_worker(self, source: Source) -> None:
        backlog = self.plan.backlog_rows
        for attempt in range(1, KILL_ATTEMPTS + 1):
            ids, landed = self._kill_mid_backlog(source, backlog)
            if landed is not None:
                break
            if attempt == KILL_ATTEMPTS:
                raise StepFailed(f"each of {KILL_ATTEMPTS} backlogs loaded before a kill could land mid-run: use a "
                                 "larger --backlog")
            backlog *= 2
            self.say(f"the backlog loaded before a kill could land mid-run: again with {backlog:,} rows")
        victim, task_id, _ = landed

        def loaded() -> int:
            # By id, not by range: the simulator, writing to the same source meanwhile, can take ids in between.
            return Student.objects.filter(source=source, source_row_id__in=ids).count()

        redelivered = []

        def recovered() -> bool:
            # The same task in another process (until the worker notices the death, it still reports the dead one).
            if not redelivered and (again := self._running_sync(source)) is not None and again[1] == task_id \
                    and again[0] != victim:
                redelivered.append(again[0])
            return loaded() == len(ids)

        seconds = self.wait_for(recovered, timeout=self.plan.step_timeout_seconds,
                                what=f"the {len(ids):,} backlog rows of {source.code} in the warehouse after the kill")
        if redelivered:
            how = f"its message was redelivered (task {task_id} ran again in pool process {redelivered[0]})"
        elif seconds >= settings.INGEST_SYNC_LOCK_SECONDS:
            how = (f"task {task_id} was not seen running again, so a later sync took over once the source's lock "
                   f"had expired (INGEST_SYNC_LOCK_SECONDS={settings.INGEST_SYNC_LOCK_SECONDS})")
        else:
            how = f"task {task_id} was not seen running again (a redelivery too quick to catch, or a later sync)"
        self.say(f"recovered: all {len(ids):,} rows loaded {seconds:.1f} s after the kill; {how}")

    def _kill_mid_backlog(self, source: Source, rows: int) -> tuple[list[int], tuple[int, str, int] | None]:
        """Insert a backlog of `rows` into the source and SIGKILL the pool process syncing it once some but not all of
        it is committed: (the backlog's ids, (victim pid, task id, rows committed at the kill) or None when the whole
        backlog was committed before a kill could land)."""
        handle = self._open(source)
        try:
            ids = students_insert(handle=handle, factory=self.factory, specs=self.specs, count=rows)
        finally:
            handle.dispose()
        first, last = min(ids), max(ids)
        self.say(f"inserted a backlog of {len(ids):,} rows into {source.code} in one transaction (ids {first}-{last})")

        def loaded() -> int:
            return Student.objects.filter(source=source, source_row_id__in=ids).count()

        began = time.monotonic()
        while True:
            self._check_stack()
            if time.monotonic() - began > self.plan.step_timeout_seconds:
                raise StepFailed(f"no sync of {source.code} seen running within {self.plan.step_timeout_seconds:g} s")
            done = loaded()
            if done >= len(ids):
                return ids, None
            # Mid-run: at least one batch committed, the task still running in a pool process of the stack's.
            running = self._running_sync(source) if done > 0 else None
            if running is None:
                time.sleep(POLL_SECONDS / 5)
                continue
            # Asking the workers takes a while, in which the task may have committed its last batch: count again.
            victim, task_id = running
            done = loaded()
            if done >= len(ids):
                return ids, None
            os.kill(victim, signal.SIGKILL)
            self.say(f"SIGKILL to pool process {victim}, running sync_source({source.code}) (task {task_id}) with "
                     f"{done:,} of {len(ids):,} backlog rows committed")
            return ids, (victim, task_id, done)

    def _running_sync(self, source: Source) -> tuple[int, str] | None:
        """(pid, task id) of the stack's pool process running a sync of this source, from the workers' own report."""
        from pisa_site.celery import app

        try:
            active = app.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS, limit=len(self.stack.ingest_workers)
                                         ).active() or {}
        except Exception as exc:  # noqa: BLE001 - a broker hiccup: look again
            self.say(f"inspect failed ({type(exc).__name__}); trying again")
            return None
        children = self.stack.pool_children()
        for tasks in active.values():
            for task in tasks:
                if task.get("name") != "ingestion.sync_source":
                    continue
                if (task.get("kwargs") or {}).get("code") == source.code or (task.get("args") or [None])[0] == source.pk:
                    pid = task.get("worker_pid")
                    return (pid, task.get("id")) if pid in children else None
        return None

    # --- 2. Redis restart ---
    def restart_redis(self, source: Source) -> None:
        redis = self.stack.embedded_redis
        if redis is None:
            raise StepSkipped(
                f"the broker {url_without_password(self.stack.broker_url)} is not the embedded Redis of {settings.PISA_HOME}: an "
                "external Redis (a system service, a managed one) cannot be restarted from here. Restart it by hand "
                "(e.g. `sudo systemctl restart redis-server`) while the stack runs to see the same recovery.")
        old_pid = redis.pid()
        redis.stop()
        self.say(f"stopped the embedded Redis (pid {old_pid}, port {redis.port}): broker, locks and metrics cache "
                 f"are gone for {self.plan.redis_down_seconds:g} s")
        down_until = time.monotonic() + self.plan.redis_down_seconds
        answer = _api_answer("/api/v1/metrics/")
        time.sleep(max(0.0, down_until - time.monotonic()))
        redis.start()
        if answer[0] != 503 or answer[1] != "application/json":
            raise StepFailed(f"while Redis was down, GET /api/v1/metrics/ answered {answer[0]} {answer[1]}, not a JSON "
                             "503")
        self.say(f"while it was down, GET /api/v1/metrics/ answered 503 JSON: {answer[2][:120]}")
        restarted_at = timezone.now()
        self.say(f"started it again (pid {redis.pid()}), same port and append-only file; no other process restarted")
        handle = self._open(source)
        try:
            ids = students_insert(handle=handle, factory=self.factory, specs=self.specs, count=RESUME_PROBE_ROWS)
        finally:
            handle.dispose()
        seconds = self.wait_for(
            lambda: Student.objects.filter(source=source, source_row_id__in=ids).count() == len(ids),
            timeout=self.plan.step_timeout_seconds,
            what=f"{len(ids)} rows inserted into {source.code} after the restart in the warehouse")
        self.say(f"{len(ids)} rows inserted into {source.code} after the restart were loaded {seconds:.1f} s later")
        # Every source, not only the probed one: a sync that was running when Redis went away could not release its
        # lock, which then expires by itself (ingestion.tasks.SYNC_LOCK_SECONDS).
        enabled = Source.objects.filter(enabled=True)
        behind = SourceState.objects.filter(source__in=enabled).exclude(last_success_at__gt=restarted_at)
        self.wait_for(lambda: not behind.exists(), timeout=self.plan.step_timeout_seconds,
                      what="every source synced again after the Redis restart")
        self.say(f"the pipeline resumed by itself: all {enabled.count()} sources synced again, the last "
                 f"{(timezone.now() - restarted_at).total_seconds():.1f} s after the restart")

    # --- 3. a source goes down ---
    def source_outage(self, source: Source) -> None:
        down_at = timezone.now()
        undo = source_outage_begin(source=source)
        self.say(f"{source.code} is down for {self.plan.outage_seconds:g} s (refusing connections, its sessions "
                 f"ended). Should this run die, restore it with: {undo}")
        try:
            state = SourceState.objects.filter(source=source)
            if poll_until(lambda: state.filter(last_error_at__gte=down_at, consecutive_failures__gt=0).exists(),
                          timeout=self.plan.outage_seconds) is not None:
                seen = state.get()
                self.say(f"the pipeline saw it: {seen.last_error.splitlines()[0][:160]} "
                         f"({seen.consecutive_failures} failure(s) so far, backing off)")
            else:
                self.say("the pipeline did not try this source while it was down")
            remaining = self.plan.outage_seconds - (timezone.now() - down_at).total_seconds()
            if remaining > 0:
                time.sleep(remaining)
        finally:
            source_outage_end(source=source)
        up_at = timezone.now()
        self.say(f"{source.code} is back")
        seconds = self.wait_for(
            lambda: SourceState.objects.filter(source=source, last_success_at__gt=up_at,
                                               consecutive_failures=0).exists(),
            timeout=self.plan.step_timeout_seconds, what=f"a successful sync of {source.code} after the outage")
        self.say(f"the pipeline synced {source.code} again {seconds:.1f} s after it came back")

    # --- 4. an emptied source ---
    def empty_source(self, source: Source) -> None:
        handle = self._open(source)
        try:
            with handle.engine.connect() as connection:
                max_id = connection.execute(sa.select(sa.func.max(handle.table.c.id))).scalar() or 0
            injection = source_empty(handle=handle)
        finally:
            handle.dispose()
        before = Student.objects.filter(source=source, source_row_id__lte=max_id).count()
        self.say(f"emptied {source.code}: {injection.details['rows_removed']:,} rows truncated "
                 f"({before:,} of them in the warehouse); the simulator keeps writing to it")
        seconds = self.wait_for(
            lambda: not Student.objects.filter(source=source, source_row_id__lte=max_id).exists(),
            timeout=self.plan.step_timeout_seconds, what=f"the truncated rows of {source.code} out of the warehouse")
        self.say(f"the pipeline removed them in {seconds:.1f} s; "
                 f"{Student.objects.filter(source=source).count():,} newer rows loaded since")

    # --- 5. bad rows ---
    def bad_rows(self, source: Source) -> None:
        handle = self._open(source)
        try:
            injection = injection_bad_rows(handle=handle, factory=self.factory, specs=self.specs, count=BAD_ROWS)
            style = handle.style
        finally:
            handle.dispose()
        rows = injection.details["rows"]
        problems = sorted({row["problem"] for row in rows})
        self.say(f"inserted {len(rows)} bad rows into {source.code} ({style} style): {', '.join(problems)}")
        if "text_in_numeric" not in problems:
            self.say("note: text in a numeric column needs a text-style source; there is none among the targets")
        duplicates = [row for row in rows if row["problem"] == "duplicate_cntstuid"]
        spoiled = [row["id"] for row in rows if row["problem"] != "duplicate_cntstuid"]
        self.bad_row_ids = [row["id"] for row in rows]
        # The duplicates share one CNTSTUID and one created_at: the one with the highest id is the latest, kept.
        kept = max((row["id"] for row in duplicates), default=None)

        def accounted() -> bool:
            quarantined = QuarantinedRow.objects.filter(source=source, source_row_id__in=spoiled).count()
            return quarantined == len(spoiled) and (
                kept is None or Student.objects.filter(source=source, source_row_id=kept).exists())

        seconds = self.wait_for(accounted, timeout=self.plan.step_timeout_seconds,
                                what=f"the bad rows of {source.code} quarantined and the latest duplicate loaded")
        self.say(f"the pipeline quarantined {len(spoiled)} rows with their reasons in {seconds:.1f} s")
        stale = SourceState.objects.filter(source=source).exclude(figures_error="").values_list("figures_error",
                                                                                               flat=True).first()
        if stale:
            raise StepFailed(f"the figures of {source.code} went stale after the bad rows: {stale}")
        if kept is not None:
            superseded = DuplicateStudent.objects.filter(source=source, kept_row_id=kept).count()
            self.duplicate = (kept, duplicates[0]["value"])
            self.say(f"{len(duplicates)} rows repeat CNTSTUID {duplicates[0]['value']}: row {kept} is the student, "
                     f"{superseded} earlier row(s) recorded as superseded")

    # --- 6. a late transaction ---
    def late_transaction(self, source: Source) -> None:
        handle = self._open(source)
        try:
            self.say(f"holding {LATE_ROWS} rows of {source.code} in an open transaction for "
                     f"{self.plan.late_hold_seconds:g} s while newer rows commit")
            injection = injection_late(handle=handle, factory=self.factory, specs=self.specs, count=LATE_ROWS,
                                       hold_seconds=self.plan.late_hold_seconds)
        finally:
            handle.dispose()
        ids = injection.details["ids"]
        self.say(f"committed them (ids {min(ids)}-{max(ids)}, created_at {injection.details['created_at']}) after "
                 f"{len(injection.details['committed_after_ids'])} newer rows")
        seconds = self.wait_for(
            lambda: Student.objects.filter(source=source, source_row_id__in=ids).count() == len(ids),
            timeout=self.plan.step_timeout_seconds, what=f"the late rows of {source.code} in the warehouse")
        self.say(f"the pipeline loaded the late rows {seconds:.1f} s after their commit")

    # --- 7. updates and deletes ---
    def update_delete(self, source: Source) -> None:
        victims = [self.duplicate[0]] if self.duplicate else []
        # The rows the victim superseded: one of them becomes the student again, unless all are gone or quarantined.
        superseded = set(DuplicateStudent.objects.filter(source=source, kept_row_id__in=victims)
                         .values_list("superseded_row_id", flat=True))
        handle = self._open(source)
        try:
            # The quarantined rows of the bad-rows step are its evidence (tests and verify read their reasons).
            updated = injection_update(handle=handle, count=UPDATED_ROWS, spare=self.bad_row_ids)
            deleted = injection_delete(handle=handle, count=DELETED_ROWS, ids=victims, spare=self.bad_row_ids)
        finally:
            handle.dispose()
        deleted_ids = deleted.details["ids"]
        # A row whose gender is a missing code and whose PVs are NULL is "updated" to the same values.
        changed = [row["id"] for row in updated.details["rows"]
                   if row["id"] not in deleted_ids and any(old != new for old, new in row["changes"].values())]
        before = dict(Student.objects.filter(source=source, source_row_id__in=changed)
                      .values_list("source_row_id", "raw_md5"))
        self.say(f"updated {len(updated.details['ids'])} rows of {source.code} in place (gender swapped, math PVs "
                 f"+{UPDATE_PV_DELTA:g}) and deleted {len(deleted_ids)}"
                 + (f", among them row {victims[0]}, the student of the duplicated CNTSTUID" if victims else ""))

        def applied() -> bool:
            if Student.objects.filter(source=source, source_row_id__in=deleted_ids).exists():
                return False
            now = dict(Student.objects.filter(source=source, source_row_id__in=list(before))
                       .values_list("source_row_id", "raw_md5"))
            return all(now.get(row_id) != md5 for row_id, md5 in before.items())

        seconds = self.wait_for(applied, timeout=self.plan.step_timeout_seconds + settings.INGEST_RECONCILE_SECONDS,
                                what=f"the updates and deletes of {source.code} applied")
        self.say(f"the pipeline removed the deleted rows and reloaded the {len(before)} updated rows it held in "
                 f"{seconds:.1f} s (updates are found by its content reconciliation, which a PostgreSQL source's "
                 "update counter triggers)")
        heirs = (superseded - set(deleted_ids)
                 - set(QuarantinedRow.objects.filter(source=source).values_list("source_row_id", flat=True)))
        if self.duplicate and not heirs:
            self.say(f"the rows CNTSTUID {self.duplicate[1]} superseded were deleted or quarantined as well: no "
                     "student of it is expected")
        elif self.duplicate:
            _, cntstuid = self.duplicate
            heir = Student.objects.filter(source=source, cntstuid=cntstuid).exclude(source_row_id__in=victims)
            self.wait_for(heir.exists, timeout=self.plan.step_timeout_seconds,
                          what=f"a student for CNTSTUID {cntstuid} again after deleting the row that had superseded "
                               "the others")
            self.say(f"CNTSTUID {cntstuid} is a student again, from its next latest row "
                     f"{heir.values_list('source_row_id', flat=True).first()}")

    # --- 8. a late transaction whose insert and delete cancel in a count ---
    def late_insert_delete(self, source: Source) -> None:
        handle = self._open(source)
        created_at = timezone.now() - dt.timedelta(seconds=settings.INGEST_LOOKBACK_SECONDS + 60)
        try:
            self.say(f"holding an insert (created_at {created_at:%H:%M:%S}, before the look-back window) and a delete "
                     f"in {source.code} open for {self.plan.late_hold_seconds:g} s")
            injection = injection_late(handle=handle, factory=self.factory, specs=self.specs, count=1,
                                       hold_seconds=self.plan.late_hold_seconds, created_at=created_at,
                                       delete_count=1)
        finally:
            handle.dispose()
        [inserted], deleted = injection.details["ids"], injection.details["deleted_ids"]
        self.say(f"committed: row {inserted} in, row(s) {', '.join(map(str, deleted))} out: the row count did not move")
        rows = Student.objects.filter(source=source)
        seconds = self.wait_for(
            lambda: rows.filter(source_row_id=inserted).exists() and not rows.filter(source_row_id__in=deleted).exists(),
            timeout=self.plan.step_timeout_seconds, what=f"the insert and the delete of {source.code} applied")
        self.say(f"the pipeline loaded the inserted row and removed the deleted one {seconds:.1f} s after the commit")

    # --- 9. the newest row deleted ---
    def delete_newest(self, source: Source) -> None:
        from metrics.selectors import country_document

        def published() -> int | None:
            document = country_document(source.code)
            return document["statistics"]["n_students"] if document else None

        handle = self._open(source)
        try:
            with handle.engine.connect() as connection:
                newest = connection.execute(sa.select(sa.func.max(handle.table.c.id))).scalar()
            before = published()
            injection_delete(handle=handle, count=0, ids=[newest])
        finally:
            handle.dispose()
        self.say(f"deleted row {newest}, the newest of {source.code}; {before} students published")
        lowest = before
        gone = Student.objects.filter(source=source, source_row_id=newest)
        watch_until = None
        deadline = time.monotonic() + self.plan.step_timeout_seconds
        while time.monotonic() < deadline:
            now_published = published()
            if now_published is not None and lowest is not None:
                lowest = min(lowest, now_published)
            if watch_until is None and not gone.exists():
                watch_until = time.monotonic() + WATCH_SECONDS
            if watch_until is not None and time.monotonic() > watch_until:
                break
            time.sleep(POLL_SECONDS / 2)
        if watch_until is None:
            raise StepFailed(f"row {newest} of {source.code} still in the warehouse after "
                             f"{self.plan.step_timeout_seconds:g} s")
        if before is not None and lowest is not None and lowest < before - 1:
            raise StepFailed(f"the published figures of {source.code} went down to {lowest} students (from {before}): "
                             "readers saw a partly loaded country")
        self.say(f"the row left the warehouse; the published count never went below {lowest} (from {before})")


def _api_answer(path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET of the API, in this process (its settings are the stack's)."""
    from django.test import Client

    response = Client(raise_request_exception=False, HTTP_HOST="localhost").get(path)
    return response.status_code, response.get("Content-Type", ""), response.content.decode(errors="replace")


def source_style(source: Source) -> str:
    """typed or text, from one column's type (reflecting all 1,120 would cost half a second per source)."""
    engine = sa.create_engine(with_installed_driver(sa.make_url(source.url)))
    try:
        table = sa.Table(source.table_name, sa.MetaData(), autoload_with=engine, include_columns=["id", "cntryid"])
        return table_style(table)
    except (sa.exc.SQLAlchemyError, AttributeError):
        return "unknown"
    finally:
        engine.dispose()

"""Lag that means lag: 0 when the warehouse holds every source row; the age of the oldest row not loaded when a
backlog is left for the next sync; a quiet source is idle, not behind; a quarantined row is not lag."""

import datetime as dt

from django.utils import timezone

from ingestion import pipeline
from ingestion.models import SourceState
from ingestion.pipeline import source_sync
from ingestion.selectors import source_statuses
from tests.ingestion.factories import minutes_ago


def status_of(code: str) -> dict:
    return next(status for status in source_statuses() if status["code"] == code)


def test_a_quiet_caught_up_source_has_no_lag_and_a_growing_idle_time(source_db):
    alb = source_db("ALB")
    alb.insert([alb.student(created_at=minutes_ago(10))])
    source_sync(source_id=alb.source.pk)
    status = status_of("ALB")
    assert status["lag_seconds"] == 0 and status["rows_behind"] == 0
    assert status["idle_seconds"] >= 9 * 60  # the newest response is ten minutes old: idle, not behind


def test_a_backlog_left_for_the_next_sync_is_lag_as_old_as_its_oldest_row(source_db, monkeypatch):
    monkeypatch.setattr(pipeline, "BATCH_ROWS", 5)
    alb = source_db("ALB")
    alb.insert([alb.student(created_at=minutes_ago(3)) for _ in range(20)])
    result = source_sync(source_id=alb.source.pk, budget_seconds=0)  # stops after the first batch
    assert result.truncated and result.loaded == 5
    status = status_of("ALB")
    assert status["rows_behind"] == 15
    assert 2.5 * 60 <= status["lag_seconds"] <= 4 * 60
    while source_sync(source_id=alb.source.pk, budget_seconds=0).truncated:
        pass
    assert status_of("ALB")["lag_seconds"] == 0 and status_of("ALB")["rows_behind"] == 0


def test_a_quarantined_row_is_counted_apart_and_is_not_lag(source_db):
    alb = source_db("ALB")
    alb.insert_students(3)
    alb.insert([alb.student(W_FSTUWT=-5, created_at=minutes_ago(5))])
    source_sync(source_id=alb.source.pk)
    status = status_of("ALB")
    assert status["quarantined_count"] == 1 and status["lag_seconds"] == 0 and status["rows_behind"] == 0


def test_a_failing_source_is_flagged_by_its_failures_not_by_a_made_up_lag(source_db):
    alb = source_db("ALB")
    alb.insert_students(2)
    source_sync(source_id=alb.source.pk)
    alb.source.url = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    alb.source.save()
    SourceState.objects.filter(source=alb.source).update(retry_at=timezone.now() - dt.timedelta(seconds=1))
    assert source_sync(source_id=alb.source.pk).error
    status = status_of("ALB")
    assert status["consecutive_failures"] == 1 and status["last_error"]
    assert status["lag_seconds"] == 0  # what it knew when it last read the source: caught up

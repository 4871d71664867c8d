"""A row no estimate can take never freezes a country: its last good figures stay published, marked stale with the
reason (API, sources, health), the refresh is retried, and fixing or removing the row heals it without a hand-made
rebuild; `metrics rebuild` works whatever the warehouse holds.

Such a row can no longer pass the door (ingestion/plausibility.py), but one stored under older rules can be in a
warehouse: the tests let it in by switching the weight rule off while it loads."""

import pytest

from ingestion import plausibility
from ingestion.models import QuarantinedRow, SourceState, Student
from ingestion.apis import rendered_statuses_forget
from metrics.scheduling import pending_key
from pisa_site.cache import redis_client
from ingestion.pipeline import source_sync
from metrics import cache
from metrics.services import country_metrics_rebuild, country_metrics_refresh
from metrics.tasks import refresh_overdue


def published(country: str) -> dict:
    return cache.country_documents([country])[country]


@pytest.fixture
def weight_rule_off(monkeypatch):
    """Rows load as if the weight rule did not exist (a warehouse filled under older rules)."""
    monkeypatch.setattr(plausibility, "weight_problems", lambda weights: {})
    return monkeypatch


def test_a_country_whose_refresh_fails_keeps_its_last_good_figures_marked_stale_until_the_row_is_removed(
        source_db, weight_rule_off, client):
    col = source_db("COL")
    col.insert_students(5)
    source_sync(source_id=col.source.pk)
    country_metrics_refresh(country="COL")
    good = published("COL")
    assert good["statistics"]["n_students"] == 5 and good["freshness"]["stale"] is None
    etag = client.get("/api/v1/metrics/?countries=COL")["ETag"]

    [bad] = col.insert([col.student(w_fstuwt=-5)])
    source_sync(source_id=col.source.pk)
    assert Student.objects.filter(source=col.source, source_row_id=bad).exists()
    result = country_metrics_refresh(country="COL")  # does not raise

    assert "weights must be finite and non-negative" in result.error
    stale = published("COL")
    assert stale["statistics"] == good["statistics"]  # the last good figures, not a half-folded state
    cache.versions_forget()
    polled = client.get("/api/v1/metrics/?countries=COL", HTTP_IF_NONE_MATCH=etag)
    assert polled.status_code == 200  # a dashboard polling with its ETag learns that they are stale
    assert polled.json()["by_country"]["COL"]["freshness"]["stale"]["reason"] == stale["freshness"]["stale"]["reason"]
    assert "weights must be finite and non-negative" in stale["freshness"]["stale"]["reason"]
    rendered_statuses_forget()
    [status] = [s for s in client.get("/api/v1/sources/").json() if s["code"] == "COL"]
    assert "weights must be finite" in status["figures_error"] and status["figures_stale_since"] is not None
    health = client.get("/api/v1/health/")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert "COL" in health.json()["figures"]["stale"]
    redis_client().delete(pending_key("COL"))  # the refresh the sync queued has run
    assert "COL" in refresh_overdue.run()  # the sweep retries it

    col.execute("DELETE FROM responses WHERE id = :id", id=bad)
    source_sync(source_id=col.source.pk)
    country_metrics_refresh(country="COL")  # what the sweep's retry runs

    healed = published("COL")
    assert healed["freshness"]["stale"] is None
    assert healed["statistics"]["n_students"] == 5
    assert SourceState.objects.get(source=col.source).figures_error == ""
    rendered_statuses_forget()
    assert client.get("/api/v1/health/").json()["status"] == "ok"


def test_a_rebuild_works_whatever_the_warehouse_holds(source_db, weight_rule_off):
    col = source_db("COL")
    col.insert_students(4)
    [bad] = col.insert([col.student(w_fstuwt=-5)])
    source_sync(source_id=col.source.pk)
    weight_rule_off.undo()  # today's rules again: the stored row breaks them

    result = country_metrics_rebuild(country="COL")

    assert result.students == 4
    assert published("COL")["statistics"]["n_students"] == 4
    reasons = QuarantinedRow.objects.get(source=col.source, source_row_id=bad).reasons
    assert "W_FSTUWT: -5 is not a plausible final weight" in reasons[0]


def test_a_refresh_that_fails_on_a_row_stored_under_older_rules_heals_itself(source_db, weight_rule_off):
    col = source_db("COL")
    col.insert_students(3)
    source_sync(source_id=col.source.pk)
    country_metrics_refresh(country="COL")
    col.insert([col.student(w_fstuwt=-5)])
    source_sync(source_id=col.source.pk)
    weight_rule_off.undo()

    result = country_metrics_refresh(country="COL")

    assert result.error == ""
    assert published("COL")["statistics"]["n_students"] == 3
    assert published("COL")["freshness"]["stale"] is None

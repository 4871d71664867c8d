"""The metrics refresh folds the warehouse's change log into each country's state: equal to a rebuild, always."""

import datetime as dt

import pytest
from django.utils import timezone

from pisa_site.locks import redis_lock
from ingestion.models import SourceState
from ingestion.pipeline import source_sync
from metrics import cache
from metrics.estimators import country_statistics
from metrics.models import CountryMetricsState
from metrics.services import (PERCENTILES_LOCK, PERCENTILES_SECONDS, country_metrics_rebuild,
                              country_metrics_refresh)
from metrics.sufficient import CountryState
from metrics.warehouse import countries_with_percentiles_behind, country_scores, country_students


def reconcile_now(source):
    SourceState.objects.filter(source=source).update(last_reconciled_at=None)


def rebuilt_statistics(country: str) -> dict:
    return country_statistics(CountryState.from_batch(country_students(country)), now=0)


def published(country: str) -> dict:
    return cache.country_documents([country])[country]


def test_incremental_state_equals_a_rebuild_after_inserts_updates_deletes_and_a_truncate(source_db):
    alb = source_db("ALB")
    ids = alb.insert_students(60)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    assert published("ALB")["statistics"]["n_students"] == 60

    # ESCS moves only where it is a value, not one of PISA's missing codes (99 + 1 would be an implausible index).
    alb.execute("UPDATE responses SET escs = CASE WHEN escs < 95 THEN escs + 1 ELSE escs END, pv1read = pv1read + 50 "
                "WHERE id = ANY(:ids)", ids=ids[:10])
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=ids[10:15])
    alb.insert_students(20)
    reconcile_now(alb.source)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    assert country_metrics_rebuild(country="ALB", verify=True).differences == []
    document = published("ALB")
    assert document["statistics"]["n_students"] == 75
    expected = rebuilt_statistics("ALB")
    assert document["statistics"]["scores"]["READ"]["mean"]["value"] == pytest.approx(
        expected["scores"]["READ"]["mean"]["value"], rel=1e-9)
    assert document["statistics"]["background"]["escs_mean"]["se"] == pytest.approx(
        expected["background"]["escs_mean"]["se"], rel=1e-9)

    alb.execute("TRUNCATE responses RESTART IDENTITY")
    alb.insert_students(8)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    assert country_metrics_rebuild(country="ALB", verify=True).differences == []
    assert published("ALB")["statistics"]["n_students"] == 8


def test_a_refresh_with_nothing_new_changes_nothing(source_db):
    alb = source_db("ALB")
    alb.insert_students(12)
    source_sync(source_id=alb.source.pk)
    first = country_metrics_refresh(country="ALB")
    version, etag = published("ALB")["version"], _etag_of_alb()
    again = country_metrics_refresh(country="ALB")
    assert (first.changes, again.changes) == (12, 0)
    assert not again.percentiles_recomputed
    assert (published("ALB")["version"], _etag_of_alb()) == (version, etag)


def _etag_of_alb() -> str:
    cache.versions_forget()
    snapshot = cache.versions_snapshot()
    return cache.etag_of("country", ["ALB"], [snapshot.versions.get("ALB")])


def test_percentiles_are_published_with_the_other_score_statistics(source_db):
    alb = source_db("ALB")
    alb.insert_students(40)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB", force_percentiles=True)
    read = published("ALB")["statistics"]["scores"]["READ"]
    assert {"mean", "p10", "p90", "gender_gap", "below_level2", "escs_gradient", "escs_strength"} <= set(read)
    assert read["p10"]["value"] < read["mean"]["value"] < read["p90"]["value"]


def _make_percentiles_due(country: str) -> None:
    CountryMetricsState.objects.filter(country=country).update(
        percentiles_at=timezone.now() - dt.timedelta(seconds=PERCENTILES_SECONDS + 1))


def test_a_refresh_that_finds_the_percentiles_lock_taken_publishes_its_counts_and_leaves_the_percentiles(source_db):
    alb = source_db("ALB")
    alb.insert_students(30)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    before = published("ALB")["statistics"]["scores"]["READ"]["p10"]
    alb.insert_students(30)
    source_sync(source_id=alb.source.pk)
    _make_percentiles_due("ALB")

    with redis_lock(PERCENTILES_LOCK, token="another worker", ttl_seconds=30):
        busy = country_metrics_refresh(country="ALB")
    assert (busy.changes, busy.percentiles_recomputed) == (30, False)
    assert published("ALB")["statistics"]["n_students"] == 60
    assert published("ALB")["statistics"]["scores"]["READ"]["p10"] == before

    # No new row: the next refresh (the overdue sweep asks for one) computes them over all 60 students.
    assert countries_with_percentiles_behind(computed_before=timezone.now()) == ["ALB"]
    etag = _etag_of_alb()
    later = country_metrics_refresh(country="ALB")
    assert (later.changes, later.percentiles_recomputed) == (0, True)
    assert published("ALB")["statistics"]["scores"]["READ"]["p10"]["n_students"] == 60
    assert _etag_of_alb() != etag  # a dashboard holding the old document is sent the new one
    assert countries_with_percentiles_behind(computed_before=timezone.now()) == []


def test_percentiles_are_not_recomputed_before_they_are_due(source_db):
    alb = source_db("ALB")
    alb.insert_students(20)
    source_sync(source_id=alb.source.pk)
    assert country_metrics_refresh(country="ALB").percentiles_recomputed  # the first ones
    alb.insert_students(5)
    source_sync(source_id=alb.source.pk)
    assert not country_metrics_refresh(country="ALB").percentiles_recomputed
    _make_percentiles_due("ALB")
    assert country_metrics_refresh(country="ALB").percentiles_recomputed


def test_percentiles_are_computed_outside_the_countrys_write_lock(source_db, monkeypatch):
    from django.db import connection

    import metrics.services as services

    alb = source_db("ALB")
    alb.insert_students(20)
    source_sync(source_id=alb.source.pk)
    held = []

    def scores_noting_the_lock(country):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            held.append(cursor.fetchone()[0])
        return country_scores(country)

    monkeypatch.setattr(services, "country_scores", scores_noting_the_lock)
    assert country_metrics_refresh(country="ALB").percentiles_recomputed
    assert held == [0]


def test_a_country_whose_first_percentiles_found_the_lock_taken_is_asked_for_again(source_db):
    alb = source_db("ALB")
    alb.insert_students(10)
    source_sync(source_id=alb.source.pk)
    with redis_lock(PERCENTILES_LOCK, token="another worker", ttl_seconds=30):
        assert not country_metrics_refresh(country="ALB").percentiles_recomputed
    assert "p10" not in published("ALB")["statistics"]["scores"]["READ"]
    assert countries_with_percentiles_behind(computed_before=timezone.now()) == ["ALB"]
    assert country_metrics_refresh(country="ALB").percentiles_recomputed
    assert "p10" in published("ALB")["statistics"]["scores"]["READ"]


def test_a_computation_overtaken_by_a_newer_one_keeps_the_newer(source_db, monkeypatch):
    import metrics.services as services

    alb = source_db("ALB")
    alb.insert_students(10)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    scores_of_10 = country_scores("ALB")
    alb.insert_students(10)
    source_sync(source_id=alb.source.pk)  # their changes are recorded, not folded yet

    def scores_read_before_a_rebuild_commits(country):
        monkeypatch.setattr(services, "country_scores", country_scores)
        country_metrics_rebuild(country=country)  # folds the 10 new students, with percentiles over all 20
        return scores_of_10

    monkeypatch.setattr(services, "country_scores", scores_read_before_a_rebuild_commits)
    assert not services.country_percentiles_refresh(country="ALB")
    assert published("ALB")["statistics"]["scores"]["READ"]["p10"]["n_students"] == 20


def test_percentiles_come_back_at_once_when_a_country_emptied_gets_students_again(source_db):
    alb = source_db("ALB")
    alb.insert_students(10)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    alb.execute("TRUNCATE responses RESTART IDENTITY")
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    assert "p10" not in published("ALB")["statistics"]["scores"]["READ"]
    alb.insert_students(12)
    source_sync(source_id=alb.source.pk)
    assert country_metrics_refresh(country="ALB").percentiles_recomputed  # not PERCENTILES_SECONDS later
    assert published("ALB")["statistics"]["scores"]["READ"]["p10"]["n_students"] == 12


def test_percentiles_computed_before_the_upgrade_count_as_behind(source_db):
    # Rows written before percentiles_change_id existed hold NULL there: behind, once old enough.
    alb = source_db("ALB")
    alb.insert_students(5)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    CountryMetricsState.objects.filter(country="ALB").update(percentiles_change_id=None)
    assert countries_with_percentiles_behind(computed_before=timezone.now() - dt.timedelta(hours=1)) == []
    assert countries_with_percentiles_behind(computed_before=timezone.now()) == ["ALB"]

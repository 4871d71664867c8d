"""The metrics refresh folds the warehouse's change log into each country's state: equal to a rebuild, always."""

import pytest

from ingestion.models import SourceState
from ingestion.pipeline import source_sync
from metrics import cache
from metrics.estimators import country_statistics
from metrics.services import country_metrics_rebuild, country_metrics_refresh
from metrics.sufficient import CountryState
from metrics.warehouse import country_students


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

    alb.execute("UPDATE responses SET escs = escs + 1, pv1read = pv1read + 50 WHERE id = ANY(:ids)", ids=ids[:10])
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
    again = country_metrics_refresh(country="ALB")
    assert (first.changes, again.changes) == (12, 0)
    assert published("ALB")["version"] == published("ALB")["version"]


def test_percentiles_are_published_with_the_other_score_statistics(source_db):
    alb = source_db("ALB")
    alb.insert_students(40)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB", force_percentiles=True)
    read = published("ALB")["statistics"]["scores"]["READ"]
    assert {"mean", "p10", "p90", "gender_gap", "below_level2", "escs_gradient", "escs_strength"} <= set(read)
    assert read["p10"]["value"] < read["mean"]["value"] < read["p90"]["value"]

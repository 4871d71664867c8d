"""A registered analysis is kept current by the metrics refresh: its running state, folded from the change log, equals
a rebuild from the warehouse after inserts, updates, deletes and an emptied source, and its answer follows."""

from __future__ import annotations

import os
import signal

import pytest
from django.http import QueryDict

from ingestion.pipeline import source_sync
from ingestion.models import SourceState, StudentChange
from metrics import cache, selectors
from metrics.analysis.data import country_data_at_change
from metrics.analysis.engine import state_analysis
from metrics.analysis.request import AnalysisSpec, Breakdown
from metrics.analysis.state import AnalysisState, foldable
from metrics.models import CountryMetricsState
from metrics.scheduling import pending_key, refresh_request
from ingestion.warehouse import pisa_variables
from metrics.services import country_analysis_refresh, country_metrics_refresh
from pisa_site.cache import redis_client
from tests.conftest import wait_until

FOLDED = [
    AnalysisSpec("mean", "READ", (Breakdown("IMMIG"), Breakdown("ST004D01T")), (), ()),
    AnalysisSpec("sd", "ESCS", (Breakdown("ST004D01T"),), (), ()),
    AnalysisSpec("percent", "IMMIG", (), (), ()),
    AnalysisSpec("levels", "MATH", (Breakdown("ST004D01T"),), (), ()),
    AnalysisSpec("slope", "READ", (), (), (), predictor="ESCS"),
    AnalysisSpec("correlation", "MATH", (Breakdown("IMMIG"),), (), (), predictor="ESCS"),
]


def stored_state(spec: AnalysisSpec, country: str) -> AnalysisState | None:
    body = cache.redis_client().get(cache.ANALYSIS_STATE.format(spec.part_key, country))
    return None if body is None else AnalysisState.from_bytes(body)


def stored_entry(spec: AnalysisSpec, country: str) -> dict | None:
    return cache.analysis_entries(spec.part_key, [country]).get(country)


def rebuilt(spec: AnalysisSpec, country: str, shifts=None) -> AnalysisState:
    """A state built from the warehouse now (with `shifts`, the constants a state's sums are taken around)."""
    data, change_id = country_data_at_change(spec, country)
    return AnalysisState.from_data(spec, data, change_id=change_id, shifts=shifts)


def assert_folded_equals_rebuild(country: str) -> None:
    last_change = CountryMetricsState.objects.get(country=country).last_change_id
    specs = {variable.name: variable for variable in pisa_variables()}
    for spec in FOLDED:
        state, entry = stored_state(spec, country), stored_entry(spec, country)
        assert state is not None and entry is not None, spec
        assert state.change_id == entry["change_id"] == last_change, spec
        assert state.difference(rebuilt(spec, country, state.shifts), spec) == [], spec
        folded_answer, rebuilt_answer = state_analysis(spec, state, specs), state_analysis(spec, rebuilt(spec, country),
                                                                                           specs)
        assert entry["result"] == folded_answer
        assert_same_figures(folded_answer, rebuilt_answer)


def assert_same_figures(a: dict, b: dict) -> None:
    assert [c["group"] for c in a["cells"]] == [c["group"] for c in b["cells"]]
    assert a["students"] == b["students"] and a["missing_breakdown"].keys() == b["missing_breakdown"].keys()
    for mine, theirs in zip(a["cells"], b["cells"]):
        for figure, estimate in mine["figures"].items():
            other = theirs["figures"][figure]
            assert (estimate["students"], estimate["schools"], estimate["undefined"]) == (
                other["students"], other["schools"], other["undefined"])
            for name in ("value", "se"):
                if estimate[name] is None:
                    assert other[name] is None
                else:
                    assert estimate[name] == pytest.approx(other[name], rel=1e-9, abs=1e-9)


def resync(source) -> None:
    SourceState.objects.filter(source=source.source).update(last_reconciled_at=None)
    source_sync(source_id=source.source.pk)
    country_metrics_refresh(country=source.source.code)


def test_every_foldable_statistic_folds_inserts_updates_deletes_and_an_emptied_source(source_db):
    assert all(foldable(spec) for spec in FOLDED)
    alb = source_db("ALB")
    ids = alb.insert([alb.student(IMMIG=[1, 2, 3, 9][k % 4], ST004D01T=[1, 2][k % 2]) for k in range(80)])
    resync(alb)
    for spec in FOLDED:
        country_analysis_refresh(spec=spec, country="ALB")  # registered here: from now on the refreshes fold it
    first = {spec.key: stored_entry(spec, "ALB")["computed_at"] for spec in FOLDED}

    alb.insert([alb.student(IMMIG=2, ST004D01T=1) for _ in range(15)])  # inserts
    resync(alb)
    assert_folded_equals_rebuild("ALB")
    assert all(stored_entry(spec, "ALB")["computed_at"] > first[spec.key] for spec in FOLDED)

    alb.execute("UPDATE responses SET st004d01t = 3 - st004d01t, pv1math = pv1math + 40, immig = 1 "
                "WHERE id = ANY(:ids)", ids=ids[:12])  # updates (gender swapped, a group changed)
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=ids[12:20])  # deletes
    resync(alb)
    assert_folded_equals_rebuild("ALB")

    alb.execute("DELETE FROM responses WHERE immig = 3")  # a whole group leaves: it is reported empty, as rebuilt
    resync(alb)
    assert_folded_equals_rebuild("ALB")
    groups = {tuple(c["group"]) for c in stored_entry(FOLDED[0], "ALB")["result"]["cells"] if c["figures"]["mean"]["students"]}
    assert all(group[0] != 3 for group in groups)

    alb.execute("TRUNCATE responses RESTART IDENTITY")  # an emptied source
    resync(alb)
    assert_folded_equals_rebuild("ALB")
    assert stored_entry(FOLDED[0], "ALB")["result"]["students"] == 0

    alb.insert([alb.student(IMMIG=1, ST004D01T=2) for _ in range(6)])  # and it starts again
    resync(alb)
    assert_folded_equals_rebuild("ALB")


def test_a_state_that_missed_changes_is_dropped_and_computed_again_when_asked(client, source_db):
    alb = source_db("ALB")
    alb.insert([alb.student(IMMIG=1 + k % 3) for k in range(40)])
    resync(alb)
    spec = FOLDED[2]
    country_analysis_refresh(spec=spec, country="ALB")
    # The state is lost (evicted, Redis restarted without persistence) while rows arrive and are folded.
    cache.redis_client().delete(cache.ANALYSIS_STATE.format(spec.part_key, "ALB"))
    alb.insert([alb.student(IMMIG=2) for _ in range(5)])
    resync(alb)
    entry = stored_entry(spec, "ALB")
    assert entry["change_id"] < CountryMetricsState.objects.get(country="ALB").last_change_id  # not folded: behind
    answer = client.get("/api/v1/analyses/?statistic=percent&target=IMMIG&countries=ALB")
    assert answer.status_code == 200
    assert answer.json()["countries"]["ALB"]["students"] == 45  # computed again, in the request (a small country)
    assert_state_current(spec, "ALB")


def assert_state_current(spec: AnalysisSpec, country: str) -> None:
    state = stored_state(spec, country)
    assert state is not None and state.difference(rebuilt(spec, country, state.shifts), spec) == []


def test_registered_analyses_are_bounded_least_recently_asked_first(source_db, settings):
    settings.ANALYSIS_MAX_REGISTERED = 3
    alb = source_db("ALB")
    alb.insert([alb.student() for _ in range(20)])
    resync(alb)
    for spec in FOLDED[:3]:
        country_analysis_refresh(spec=spec, country="ALB")
    cache.analysis_entries(FOLDED[0].part_key, ["ALB"])  # asked again: now the most recent
    country_analysis_refresh(spec=FOLDED[3], country="ALB")  # a fourth: the least recently asked one goes
    registered = {member.decode() for member in cache.redis_client().zrange(cache.ANALYSES_REGISTERED, 0, -1)}
    assert registered == {FOLDED[0].part_key, FOLDED[2].part_key, FOLDED[3].part_key}
    assert stored_state(FOLDED[1], "ALB") is None and stored_entry(FOLDED[1], "ALB") is None
    assert stored_state(FOLDED[0], "ALB") is not None


def test_one_part_serves_every_country_list_and_comparison(client, source_db):
    for code in ("ALB", "ARG"):
        source = source_db(code)
        source.insert([source.student() for _ in range(30)])
        resync(source)
    for query in ("countries=ALB", "countries=ALB,ARG&compare=average", "countries=ARG,ALB&compare=ALB"):
        assert client.get(f"/api/v1/analyses/?statistic=mean&target=READ&by=ST004D01T&{query}").status_code == 200
    part = AnalysisSpec("mean", "READ", (Breakdown("ST004D01T"),), (), ())
    assert cache.redis_client().zrange(cache.ANALYSES_REGISTERED, 0, -1) == [part.part_key.encode()]


def test_after_a_metrics_worker_is_killed_and_restarted_every_registered_analysis_answers_correctly(
        client, source_db, celery_worker_process):
    sources = {}
    for code in ("ALB", "ARG"):
        source = sources[code] = source_db(code)
        source.insert([source.student(IMMIG=1 + k % 3, ST004D01T=1 + k % 2) for k in range(60)])
        resync(source)
    queries = ["statistic=mean&target=READ&by=IMMIG,ST004D01T", "statistic=levels&target=MATH",
               "statistic=slope&target=READ&predictor=ESCS&by=ST004D01T", "statistic=percent&target=IMMIG"]
    for query in queries:  # registered by being asked for
        assert client.get(f"/api/v1/analyses/?{query}&countries=ALB,ARG").status_code == 200

    worker = celery_worker_process("metrics", concurrency=1)
    for code, source in sources.items():  # loads whose refreshes the worker takes...
        source.insert([source.student(IMMIG=2) for _ in range(1200)])
        source_sync(source_id=source.source.pk)
    assert wait_until(lambda: StudentChange.objects.count() < 2400, timeout=60, interval=0.02)
    os.killpg(worker.process.pid, signal.SIGKILL)  # ...killed, pool and all, while it folds them
    worker.process.wait()
    for source in sources.values():  # more rows while no worker runs
        source.insert([source.student(IMMIG=3) for _ in range(30)])
        source_sync(source_id=source.source.pk)

    celery_worker_process("metrics", concurrency=1)
    for code in sources:  # the sweep's part, once the lost refresh's pending mark has expired
        redis_client().delete(pending_key(code))
        refresh_request(country=code)
    assert wait_until(lambda: not StudentChange.objects.exists(), timeout=60)

    parts = [selectors.analysis_parse(QueryDict(f"{query}&countries=ALB,ARG")).part for query in queries]
    for part in parts:
        for code in sources:  # every registered part folded up to the country's last change, or computed again
            state = stored_state(part, code)
            if state is not None:
                assert state.difference(rebuilt(part, code, state.shifts), part) == []
    specs = {variable.name: variable for variable in pisa_variables()}
    for query, part in zip(queries, parts):
        answer = client.get(f"/api/v1/analyses/?{query}&countries=ALB,ARG")
        assert answer.status_code == 200
        for code in sources:
            assert_same_figures(answer.json()["countries"][code], state_analysis(part, rebuilt(part, code), specs))
            assert answer.json()["countries"][code]["students"] == 1290


def test_a_rebuild_of_the_country_drops_its_analyses_which_are_computed_again(client, source_db):
    from metrics.services import country_metrics_rebuild

    alb = source_db("ALB")
    alb.insert([alb.student(IMMIG=1 + k % 3) for k in range(30)])
    resync(alb)
    spec = FOLDED[2]
    country_analysis_refresh(spec=spec, country="ALB")
    country_metrics_rebuild(country="ALB")  # it does not trust the change log: neither may the analyses
    assert stored_state(spec, "ALB") is None and stored_entry(spec, "ALB") is None
    answer = client.get("/api/v1/analyses/?statistic=percent&target=IMMIG&countries=ALB")
    assert answer.status_code == 200 and answer.json()["countries"]["ALB"]["students"] == 30
    assert_state_current(spec, "ALB")

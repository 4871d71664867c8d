"""GET /api/v1/analyses/: open analyses of the warehouse's students, their differences, CSV, ETags and refusals."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from codebook.catalogue import read_codebook_csv
from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh
from tests.conftest import codebook_csv_path, wait_until
from tests.metrics.conftest import PV_COLUMNS, WEIGHT_COLUMNS
from tests.metrics.test_analyses import reference
from tests.metrics.test_against_svy import replicate_se, rubin

URL = "/api/v1/analyses/"
MEAN_READ_BY_IMMIG_AND_GENDER = URL + "?statistic=mean&target=READ&by=IMMIG,ST004D01T&countries=ALB,ARG"


@pytest.fixture(scope="module")
def specs():
    return {spec.name: spec for spec in read_codebook_csv(codebook_csv_path())}


def decoded_columns(rows: list[dict], specs) -> dict[str, np.ndarray]:
    """The inserted students as the analysis sees them: missing codes and NULLs as NaN."""
    names = [*WEIGHT_COLUMNS, *PV_COLUMNS["READ"], *PV_COLUMNS["MATH"], "IMMIG", "ST004D01T", "ESCS", "CNTSCHID"]

    def value(name, row):
        raw = row.get(name)
        return math.nan if raw is None or specs[name].is_missing(float(raw)) else float(raw)

    return {name: np.array([value(name, row) for row in rows]) for name in names}


two_countries_sources: dict = {}  # the SourceDatabase of each, for a test that adds rows


@pytest.fixture
def two_countries(source_db):
    """ALB and ARG with students of every immigrant status, loaded and refreshed; their rows as inserted."""
    inserted = {}
    two_countries_sources.clear()
    for code, n in (("ALB", 90), ("ARG", 70)):
        source = source_db(code)
        rows = [source.student(IMMIG=[1, 2, 3, 9][k % 4], ST004D01T=[1, 2][k % 3 % 2]) for k in range(n)]
        source.insert(rows)
        source_sync(source_id=source.source.pk)
        country_metrics_refresh(country=code)
        inserted[code] = rows
        two_countries_sources[code] = source
    return inserted


def test_a_crossed_breakdown_of_the_warehouse_matches_the_reference_on_the_rows_inserted(client, two_countries, specs):
    answer = client.get(MEAN_READ_BY_IMMIG_AND_GENDER)
    assert answer.status_code == 200, answer.content[:300]
    body = answer.json()
    assert [b["variable"] for b in body["breakdown"]] == ["IMMIG", "ST004D01T"]
    assert {g["label"] for g in body["breakdown"][0]["groups"]} == {"Native", "Second-Generation", "First-Generation"}
    for code, rows in two_countries.items():
        expected = reference("mean", "READ", decoded_columns(rows, specs), "IMMIG x gender")
        cells = {"|".join(map(str, c["group"])): c["figures"]["mean"] for c in body["countries"][code]["cells"]}
        assert set(expected) <= set(cells)
        for cell, (value, se) in ((cell, figures["mean"]) for cell, figures in expected.items()):
            assert cells[cell]["value"] == pytest.approx(value, rel=1e-6)
            assert cells[cell]["se"] == pytest.approx(se, rel=1e-6)
        # IMMIG = 9 (No Response) is reported apart, never as a group
        missing = body["countries"][code]["missing_breakdown"]["IMMIG"]
        assert missing["students"] == sum(1 for row in rows if row["IMMIG"] == 9)


def test_group_differences_are_taken_weight_by_weight_and_pv_by_pv(client, two_countries, specs):
    body = client.get(URL + "?statistic=mean&target=READ&by=ST004D01T&countries=ALB").json()
    columns = decoded_columns(two_countries["ALB"], specs)
    weights = np.column_stack([columns[w] for w in WEIGHT_COLUMNS])
    scores = np.column_stack([columns[pv] for pv in PV_COLUMNS["READ"]])
    girls, boys = columns["ST004D01T"] == 1, columns["ST004D01T"] == 2
    per_weight = (weights[girls].T @ scores[girls] / weights[girls].sum(axis=0)[:, None]
                  - weights[boys].T @ scores[boys] / weights[boys].sum(axis=0)[:, None])  # (81, 10): male - female below
    value, se = rubin(list(-per_weight[0]), [replicate_se(-per_weight[:, m]) for m in range(10)])
    [difference] = body["countries"]["ALB"]["within_country_differences"]
    assert (difference["group"], difference["versus"]) == ([2], [1])  # boys minus girls, as OECD tables show
    assert difference["value"] == pytest.approx(value, rel=1e-6)
    assert difference["se"] == pytest.approx(se, rel=1e-6)
    assert difference["significant"] == (abs(value) > 1.959963984540054 * se)


def test_countries_are_compared_with_the_average_shown_and_with_each_other(client, two_countries):
    body = client.get(URL + "?statistic=mean&target=MATH&countries=ALB,ARG&compare=average,ARG").json()
    alb = body["countries"]["ALB"]["cells"][0]["figures"]["mean"]
    arg = body["countries"]["ARG"]["cells"][0]["figures"]["mean"]
    [average] = [a for a in body["averages"] if a["of"] == "average"]
    assert average["value"] == pytest.approx((alb["value"] + arg["value"]) / 2)
    assert average["se"] == pytest.approx(math.sqrt(alb["se"] ** 2 + arg["se"] ** 2) / 2)
    comparisons = {(c["country"], c["versus"]): c for c in body["comparisons"]}
    # ALB is part of the average: ALB - (ALB + ARG)/2 = (ALB - ARG)/2, whose SE counts ALB's error once.
    assert comparisons[("ALB", "average")]["value"] == pytest.approx((alb["value"] - arg["value"]) / 2)
    assert comparisons[("ALB", "average")]["se"] == pytest.approx(math.sqrt(alb["se"] ** 2 + arg["se"] ** 2) / 2)
    assert comparisons[("ALB", "ARG")]["se"] == pytest.approx(math.sqrt(alb["se"] ** 2 + arg["se"] ** 2))
    assert ("ARG", "ARG") not in comparisons


def test_the_csv_is_a_tidy_table_pandas_reads_as_is(client, two_countries):
    answer = client.get(MEAN_READ_BY_IMMIG_AND_GENDER + "&compare=average&format=csv")
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/csv")
    assert answer["Content-Disposition"].startswith("attachment;")
    table = pd.read_csv(io.BytesIO(answer.content), encoding="utf-8-sig")
    body = client.get(MEAN_READ_BY_IMMIG_AND_GENDER + "&compare=average").json()
    estimates = table[table["kind"] == "estimate"]
    assert len(estimates) == sum(len(r["cells"]) for r in body["countries"].values())
    row = estimates[(estimates["country"] == "ALB") & (estimates["group"] == "1|2")].iloc[0]
    cell = next(c for c in body["countries"]["ALB"]["cells"] if c["group"] == [1, 2])["figures"]["mean"]
    assert row["estimate"] == pytest.approx(cell["value"], rel=1e-12)
    assert row["ci_low"] == pytest.approx(cell["value"] - 1.959963984540054 * cell["se"], rel=1e-12)
    assert row["group_label"] == "IMMIG=Native; ST004D01T=Male"
    assert set(table["kind"]) == {"estimate", "group difference", "average", "country difference"}


def test_an_unchanged_answer_is_a_304_and_new_rows_change_it(client, two_countries, settings):
    settings.ANALYSIS_RECOMPUTE_SECONDS = 0
    url = URL + "?target=READ&countries=ALB"
    first = client.get(url)
    assert first.json()["countries"]["ALB"]["cells"][0]["figures"]["mean"]["students"] == 90
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    alb = two_countries_sources["ALB"]
    alb.insert_students(10)
    source_sync(source_id=alb.source.pk)
    country_metrics_refresh(country="ALB")
    client.get(url)  # finds the entry due again (its country changed) and has it recomputed (inline: small)
    assert wait_until(lambda: client.get(url).json()["countries"]["ALB"]["cells"][0]["figures"]["mean"]["students"]
                      == 100, timeout=10)
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 200


@pytest.mark.parametrize(("query", "message"), [
    ("target=NOPE1", "unknown variable 'NOPE1'"),
    ("statistic=mean", "target is required"),
    ("statistic=median&target=READ", "is not one of: mean, sd"),
    ("target=READ&by=ESCS", "say by=ESCS:quarters"),
    ("target=READ&by=ST004D01T:quarters", "quarters apply to a continuous variable"),
    ("statistic=percent&target=ESCS", "percent applies to a categorical"),
    ("statistic=levels&target=ESCS", "levels apply to a domain"),
    ("statistic=mean&target=IMMIG", "ask for percent"),
    ("statistic=slope&target=READ", "needs predictor"),
    ("target=READ&by=ST004D01T,IMMIG,REPEAT", "at most 2"),
    ("target=READ&by=ST001D01T,ST003D02T", "too many cells"),
    ("target=READ&countries=XXX", "unknown country code"),
    ("target=READ&compare=nowhere", "say average, oecd"),
    ("target=READ&colour=red", "unknown query parameter(s): 'colour' (this URL takes by, compare, countries, format"),
    ("target=READ&format=xml", "say json or csv"),
])
def test_what_cannot_be_asked_is_a_400_that_says_what_is_allowed(client, two_countries, query, message):
    answer = client.get(f"{URL}?{query}")
    assert answer.status_code == 400, answer.content[:200]
    assert message in answer.json()["error"]


def test_a_big_country_is_computed_by_the_analysis_worker_while_the_api_says_so(
    client, two_countries, settings, celery_worker_process,
):
    settings.ANALYSIS_INLINE_MAX_STUDENTS = 0
    url = URL + "?statistic=percentiles&target=SCIE&by=ESCS:quarters&countries=ARG"
    computing = client.get(url)
    assert computing.status_code == 202 and computing["Retry-After"] == "1"
    assert computing.json()["computing"] == ["ARG"]
    celery_worker_process("analysis", name="analysis")
    assert wait_until(lambda: client.get(url).status_code == 200, timeout=60)
    body = client.get(url).json()
    assert len(body["countries"]["ARG"]["cells"]) == 4 and body["figures"][0] == "p5"

"""metrics/warehouse.py reads the analysis columns by a binary COPY parsed in place: it must read exactly what the
ORM reads, NULLs as NaN, for the refresh's change log, a rebuild's students and the percentiles' scores."""

from __future__ import annotations

import numpy as np

from ingestion.layout import ANALYSIS_COLUMNS, WEIGHTS
from ingestion.models import Student
from ingestion.pipeline import source_sync
from metrics.sufficient import DOMAINS
from metrics.warehouse import changes_after, country_scores, country_students

SCORE_COLUMNS = [c for c in ANALYSIS_COLUMNS if c.startswith("pv")]


def as_rows(*columns) -> list[bytes]:
    """A multiset of rows, comparable whatever order the rows came in (NaN compares equal to NaN as bytes)."""
    matrix = np.column_stack([np.asarray(c, dtype=np.float64).reshape(len(columns[0]), -1) for c in columns])
    return sorted(row.tobytes() for row in matrix)


def orm_matrix(country: str, fields: list[str]) -> np.ndarray:
    rows = Student.objects.filter(country=country).values_list(*fields)
    values = [[np.nan if value is None else float(value) for value in row] for row in rows]
    return np.array(values).reshape(-1, len(fields))


def test_the_binary_copy_reads_what_the_orm_reads_with_nulls_as_nan(source_db):
    alb = source_db("ALB")
    alb.insert_students(45)
    source_sync(source_id=alb.source.pk)
    ids = list(Student.objects.filter(country="ALB").values_list("pk", flat=True))
    Student.objects.filter(pk__in=ids[:9]).update(escs=None, belong=None, cntschid=None)
    Student.objects.filter(pk__in=ids[9:12]).update(**{column: None for column in SCORE_COLUMNS if "read" in column})

    batch = country_students("ALB")
    # A batch holds what the metrics document uses: every analysis column but IMMIG (only open analyses read it).
    expected = orm_matrix("ALB", ["cntschid", *(c for c in ANALYSIS_COLUMNS if c != "immig")])
    expected[np.isnan(expected[:, 0]), 0] = -1  # a student without a school id counts as school -1
    got = np.column_stack([batch.school_id, batch.weights, *(batch.pv[d] for d in DOMAINS), batch.gender,
                           batch.escs, batch.tmins, batch.durecec, batch.belong])
    assert len(batch) == 45 and np.isnan(batch.escs).sum() >= 9 and np.isnan(batch.pv["READ"][:, 0]).sum() >= 3
    assert as_rows(got) == as_rows(expected)

    weights, pv, school_id = country_scores("ALB")
    assert weights.shape == (45, len(WEIGHTS)) and school_id.dtype == np.int64
    assert as_rows(school_id, weights, *(pv[d] for d in DOMAINS)) == as_rows(
        batch.school_id, batch.weights, *(batch.pv[d] for d in DOMAINS))


def test_no_rows_read_as_empty_arrays(db):
    weights, pv, school_id = country_scores("ZZZ")
    assert weights.shape == (0, len(WEIGHTS)) and pv["READ"].shape == (0, 10) and school_id.shape == (0,)
    added, removed, newest = changes_after("ZZZ", 41)
    assert len(added) == len(removed) == 0 and newest == 41
    assert len(country_students("ZZZ")) == 0


def test_the_change_log_is_read_in_order_with_its_signs(source_db):
    alb = source_db("ALB")
    alb.insert_students(6)
    source_sync(source_id=alb.source.pk)
    added, removed, newest = changes_after("ALB", 0)
    assert (len(added), len(removed)) == (6, 0) and newest > 0
    assert as_rows(added.weights) == as_rows(orm_matrix("ALB", list(ANALYSIS_COLUMNS[:len(WEIGHTS)])))
    assert changes_after("ALB", newest)[2] == newest

"""Reading analysis values out of the warehouse as NumPy arrays, in the shape the estimators take."""

from __future__ import annotations

import numpy as np
from django.db import connection

from ingestion.layout import ANALYSIS_COLUMNS, PLAUSIBLE_VALUES, SCORE_DOMAINS, WEIGHTS
from ingestion.models import Student, StudentChange
from metrics.sufficient import StudentBatch

_N_WEIGHTS = len(WEIGHTS)
_PV_PER_DOMAIN = len(PLAUSIBLE_VALUES) // len(SCORE_DOMAINS)
_COVARIATE_START = _N_WEIGHTS + len(PLAUSIBLE_VALUES)
_SELECT = f"extract(epoch from source_created_at), coalesce(cntschid, -1), {', '.join(ANALYSIS_COLUMNS)}"


def _batch(rows: np.ndarray) -> StudentBatch:
    """rows: (n, 2 + len(ANALYSIS_COLUMNS)) float64 in the order of _SELECT, NaN for NULL."""
    analysis = rows[:, 2:]
    pv = {
        domain: analysis[:, _N_WEIGHTS + d * _PV_PER_DOMAIN:_N_WEIGHTS + (d + 1) * _PV_PER_DOMAIN]
        for d, domain in enumerate(SCORE_DOMAINS)
    }
    covariates = analysis[:, _COVARIATE_START:]
    return StudentBatch(
        weights=analysis[:, :_N_WEIGHTS], pv=pv, gender=covariates[:, 0], escs=covariates[:, 1],
        tmins=covariates[:, 2], durecec=covariates[:, 3], belong=covariates[:, 4],
        school_id=rows[:, 1].astype(np.int64), created_at=rows[:, 0],
    )


def _fetch(sql: str, params: list) -> np.ndarray:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    width = 2 + len(ANALYSIS_COLUMNS)
    if not rows:
        return np.empty((0, width))
    return np.array(rows, dtype=np.float64)  # None -> nan


def changes_after(country: str, last_change_id: int) -> tuple[StudentBatch, StudentBatch, int]:
    """(added versions, removed versions, newest change id) of a country's change log after an id."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, sign, {_SELECT} FROM {StudentChange._meta.db_table} WHERE country = %s AND id > %s "
            "ORDER BY id", [country, last_change_id])
        rows = cursor.fetchall()
    if not rows:
        empty = _batch(np.empty((0, 2 + len(ANALYSIS_COLUMNS))))
        return empty, empty, last_change_id
    matrix = np.array(rows, dtype=np.float64)
    signs = matrix[:, 1]
    return _batch(matrix[signs > 0, 2:]), _batch(matrix[signs < 0, 2:]), int(matrix[-1, 0])


def country_students(country: str) -> StudentBatch:
    """Every student of a country (for a rebuild, or for percentiles)."""
    return _batch(_fetch(f"SELECT {_SELECT} FROM {Student._meta.db_table} WHERE country = %s", [country]))


def prune_changes(country: str, up_to_id: int) -> int:
    return StudentChange.objects.filter(country=country, id__lte=up_to_id).delete()[0]

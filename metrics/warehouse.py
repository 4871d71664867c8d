"""Reading analysis values out of the warehouse as NumPy arrays, in the shape the estimators take.

Rows come out of PostgreSQL as a binary COPY in which every field is a float8 (NULL turned into NaN by the query), so
each row has the same size and NumPy reads the whole buffer in place: no Python object per value. For 35,000 students
and ~120 columns that is about 20 times faster than fetching rows through the cursor.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from django.db import connection
from django.db.models import F, Q

from ingestion.warehouse import (ANALYSIS_COLUMNS, PACKED_COLUMNS, PLAUSIBLE_VALUES, SCORE_DOMAINS, WEIGHTS, Source,
                                 Student, StudentChange)
from metrics.sufficient import StudentBatch

_N_WEIGHTS = len(WEIGHTS)
_PV_PER_DOMAIN = len(PLAUSIBLE_VALUES) // len(SCORE_DOMAINS)
_COVARIATE_START = _N_WEIGHTS + len(PLAUSIBLE_VALUES)
WEIGHTS_AND_SCORES = ANALYSIS_COLUMNS[:_COVARIATE_START]
_COLUMNS = ("extract(epoch from source_created_at)", "coalesce(cntschid, -1)", *ANALYSIS_COLUMNS)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _float_columns(expressions) -> str:
    return ", ".join(f"coalesce(({expression})::float8, 'NaN'::float8)" for expression in expressions)


def _copy_floats(expressions, rest: str, params: list) -> np.ndarray:
    """`SELECT <expressions> <rest>` as an (n, len(expressions)) float64 array, NULL as NaN, by one binary COPY.

    Every field is cast to float8 and never NULL, so a row is an int16 field count followed by, per field, an int32
    length (8) and 8 big-endian bytes: a fixed stride, read by NumPy without parsing. Integers (ids, school ids,
    signs) are exact in float8 up to 2^53."""
    fields, _ = _copy(expressions, rest, params, packed=False)
    return fields.astype(np.float64)


def _copy_floats_and_packed(expressions, rest: str, params: list) -> tuple[np.ndarray, np.ndarray]:
    """As `_copy_floats`, with each student's `analysis_packed` after its fields: (fields as float64, the packed
    values as an (n, len(PACKED_COLUMNS)) big-endian view of the COPY's buffer). The caller converts only the
    columns it needs: for a 30,000-student country, converting all 118 and then picking was ~25 ms of ~120."""
    fields, packed = _copy(expressions, rest, params, packed=True)
    return fields.astype(np.float64), packed


def _copy(expressions, rest: str, params: list, *, packed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    width, extra = len(expressions), len(PACKED_COLUMNS) if packed else 0
    columns = ", ".join(filter(None, [_float_columns(expressions), "analysis_packed" if packed else ""]))
    with connection.cursor() as cursor:
        raw = cursor.cursor
        sql = raw.mogrify(f"COPY (SELECT {columns} {rest}) TO STDOUT (FORMAT binary)", params)
        buffer = io.BytesIO()
        raw.copy_expert(sql.decode(), buffer)
    data = buffer.getbuffer()  # the views below keep it alive: no copy of the ~30 MB
    if bytes(data[:11]) != _COPY_SIGNATURE:
        raise ValueError("not a PostgreSQL binary COPY")
    start = 19 + struct.unpack(">i", data[15:19])[0]  # signature, flags, header extension length, extension
    row = 2 + 12 * width + (4 + 8 * extra if packed else 0)
    n, trailing = divmod(len(data) - start - 2, row)
    if trailing or bytes(data[-2:]) != b"\xff\xff":
        raise ValueError("unexpected binary COPY layout")
    if n == 0:
        return np.empty((0, width), ">f8"), np.empty((0, extra), ">f8") if packed else None
    counts = np.ndarray((n,), ">i2", data, start, (row,))
    lengths = np.ndarray((n, width), ">i4", data, start + 2, (row, 12))
    if (counts != width + packed).any() or (lengths != 8).any():
        raise ValueError("unexpected binary COPY row layout")
    fields = np.ndarray((n, width), ">f8", data, start + 6, (row, 12))
    if not packed:
        return fields, None
    at = start + 2 + 12 * width
    if (np.ndarray((n,), ">i4", data, at, (row,)) != 8 * extra).any():
        raise ValueError("analysis_packed does not hold PACKED_COLUMNS: migrate the warehouse")
    return fields, np.ndarray((n, extra), ">f8", data, at + 4, (row, 8))


def _batch(rows: np.ndarray) -> StudentBatch:
    """rows: (n, 2 + len(ANALYSIS_COLUMNS)) float64 in the order of _COLUMNS, NaN for NULL."""
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


def changes_after(country: str, last_change_id: int) -> tuple[StudentBatch, StudentBatch, int]:
    """(added versions, removed versions, newest change id) of a country's change log after an id."""
    matrix = _copy_floats(("id", "sign", *_COLUMNS),
                          f"FROM {StudentChange._meta.db_table} WHERE country = %s AND id > %s ORDER BY id",
                          [country, last_change_id])
    if not len(matrix):
        empty = _batch(np.empty((0, len(_COLUMNS))))
        return empty, empty, last_change_id
    signs = matrix[:, 1]
    return _batch(matrix[signs > 0, 2:]), _batch(matrix[signs < 0, 2:]), int(matrix[-1, 0])


def country_students(country: str) -> StudentBatch:
    """Every student of a country (for a rebuild)."""
    return _batch(_copy_floats(_COLUMNS, f"FROM {Student._meta.db_table} WHERE country = %s", [country]))


def country_scores(country: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """What percentiles need of every student of a country, and nothing else: (weights (n, 81), pv domain -> (n, 10),
    school_id (n,)), with NaN for missing scores."""
    matrix = _copy_floats(("coalesce(cntschid, -1)", *WEIGHTS_AND_SCORES),
                          f"FROM {Student._meta.db_table} WHERE country = %s", [country])
    scores = matrix[:, 1 + _N_WEIGHTS:]
    pv = {domain: scores[:, d * _PV_PER_DOMAIN:(d + 1) * _PV_PER_DOMAIN] for d, domain in enumerate(SCORE_DOMAINS)}
    return matrix[:, 1:1 + _N_WEIGHTS], pv, matrix[:, 0].astype(np.int64)


def newest_change_id(country: str, at_least: int) -> int:
    """The id of a country's newest change-log row (`at_least` when there is none after it)."""
    newest = StudentChange.objects.filter(country=country, id__gt=at_least).order_by("-id").values_list(
        "id", flat=True).first()
    return at_least if newest is None else newest


def prune_changes(country: str, up_to_id: int) -> int:
    return StudentChange.objects.filter(country=country, id__lte=up_to_id).delete()[0]


def countries_with_changes_recorded_before(moment) -> list[str]:
    """Countries whose oldest unfolded change was recorded before `moment`: a refresh for them is overdue. One index
    lookup per source (the change log's (country, id) index), whatever the size of a backlog's change log."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT k.code FROM {Source._meta.db_table} k
                CROSS JOIN LATERAL (SELECT recorded_at FROM {StudentChange._meta.db_table} c
                                    WHERE c.country = k.code ORDER BY c.id LIMIT 1) oldest
                WHERE oldest.recorded_at < %s ORDER BY k.code""",
            [moment],
        )
        return [code for (code,) in cursor.fetchall()]


def countries_with_percentiles_behind(*, computed_before) -> list[str]:
    """Countries whose percentiles were never computed (a first refresh found the percentiles lock taken), or were
    computed before `computed_before` and before their last folded change: due, also when no new row arrives to
    trigger a refresh (the last changes of a stream would otherwise never reach them)."""
    from metrics.models import CountryMetricsState

    never = Q(percentiles_at__isnull=True)  # a first refresh that found the percentiles lock taken
    behind = Q(percentiles_at__lt=computed_before) & ~Q(percentiles_change_id=F("last_change_id"))
    return sorted(CountryMetricsState.objects.filter(never | behind).values_list("country", flat=True))

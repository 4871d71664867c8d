"""From source lines to warehouse rows: parse, validate, decode missing codes, find duplicates. Vectorised.

Every check runs per column over the whole batch (pandas' C parser, NumPy masks), never per value in Python, so a
batch of a few thousand 1,120-column rows costs milliseconds here. A row that fails any check is set aside with every
reason found; the rest of the batch loads.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from codebook.catalogue import Kind, VariableSpec
from ingestion.layout import ANALYSIS_VARIABLES, SCORE_DOMAINS, WEIGHTS

KEY_VARIABLES = ("CNTSTUID", "CNTSCHID")
# NULL in any of these makes a row unusable: it is quarantined rather than loaded.
REQUIRED_VARIABLES = frozenset((*KEY_VARIABLES, *WEIGHTS))

NULL_MARKERS = ["\\N", "NA"]  # COPY's NULL, and the course's text-style sources' missing value


@dataclass
class ParsedBatch:
    """A batch of source rows, parsed. Row i of every array is line i."""

    row_ids: np.ndarray  # int64
    created_at: pd.Series  # datetime64[ns, UTC]
    raw: list[str]  # the 1,118 values, COPY text, codebook order
    raw_md5: list[str]
    values: pd.DataFrame  # one column per variable (upper-case codebook names), NaN for NULL/'NA'
    problems: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))


@dataclass(frozen=True)
class Duplicate:
    cntstuid: int
    kept_row_id: int
    superseded_row_id: int


@dataclass
class Transformed:
    good: ParsedBatch
    good_index: np.ndarray  # indices into the parsed batch of rows to load
    quarantined: list[tuple[int, str, list[str], str]]  # (row id, CNTSTUID text, reasons, raw)
    duplicates: list[Duplicate]
    cntstuid: np.ndarray
    cntschid: np.ndarray
    analysis: np.ndarray  # len(good_index) x len(ANALYSIS_VARIABLES), NaN for missing


def parse_lines(lines: Sequence[bytes], variables: Sequence[VariableSpec]) -> ParsedBatch:
    names = ["__id", "__created_at", *[v.name for v in variables]]
    frame = pd.read_csv(
        io.BytesIO(b"\n".join(lines)), sep="\t", header=None, names=names, quoting=csv.QUOTE_NONE,
        na_values=NULL_MARKERS, keep_default_na=False, low_memory=False, dtype={"__created_at": str},
        encoding="utf-8", encoding_errors="replace",
    )
    raw = [line.split(b"\t", 2)[2].decode("utf-8", "replace") if line.count(b"\t") >= 2 else "" for line in lines]
    return ParsedBatch(
        row_ids=frame.pop("__id").to_numpy(dtype=np.int64),
        created_at=pd.to_datetime(frame.pop("__created_at"), utc=True, format="ISO8601", errors="coerce"),
        raw=raw,
        raw_md5=[hashlib.md5(text.encode()).hexdigest() for text in raw],
        values=frame,
    )


def _numeric(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN for NULL, mask of cells that hold text that is not a number)."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(column), dtype=bool)
    numbers = pd.to_numeric(column, errors="coerce")
    not_a_number = (numbers.isna() & column.notna()).to_numpy()
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan), not_a_number


def _missing_mask(spec: VariableSpec, values: np.ndarray) -> np.ndarray:
    mask = np.isnan(values)
    if spec.na_values:
        mask |= np.isin(values, np.array(spec.na_values, dtype=np.float64))
    if spec.na_range is not None:
        mask |= (values >= spec.na_range[0]) & (values <= spec.na_range[1])
    return mask


def validate(batch: ParsedBatch, variables: Sequence[VariableSpec], *, country: str) -> None:
    """Record every problem of every row in `batch.problems` (row index -> reasons)."""
    problems = batch.problems
    for index in np.flatnonzero(batch.created_at.isna().to_numpy()):
        problems[int(index)].append("created_at is NULL or not a timestamp")
    for spec in variables:
        column = batch.values[spec.name]
        if spec.is_text:
            if spec.name == "CNT":
                cnt = column.astype("string")
                for index in np.flatnonzero(cnt.isna().to_numpy()):
                    problems[int(index)].append("key column CNT is NULL")
                for index in np.flatnonzero((cnt.notna() & (cnt != country)).to_numpy()):
                    problems[int(index)].append(f"CNT {column.iloc[index]!r} does not match the source's country "
                                                f"{country}")
            continue
        values, not_a_number = _numeric(column)
        for index in np.flatnonzero(not_a_number):
            problems[int(index)].append(f"{spec.name}: {str(column.iloc[index])[:40]!r} is not a number")
        if spec.name in REQUIRED_VARIABLES:
            for index in np.flatnonzero(np.isnan(values) & ~not_a_number):
                problems[int(index)].append(f"key column {spec.name} is NULL" if spec.name in KEY_VARIABLES
                                            else f"{spec.name} is NULL: a response without weights cannot be analysed")
        elif spec.kind == Kind.CATEGORICAL:
            labelled = np.array(list(spec.value_labels), dtype=np.float64)
            out_of_range = ~np.isnan(values) & ~np.isin(values, labelled) & ~_missing_mask(spec, values)
            for index in np.flatnonzero(out_of_range):
                problems[int(index)].append(f"{spec.name}: {values[index]:g} is not a code of this variable")


def _check_plausible_values(batch: ParsedBatch) -> None:
    """A student has all ten plausible values of a domain or none (the estimators average over all ten)."""
    for domain in SCORE_DOMAINS:
        present = np.column_stack([
            pd.to_numeric(batch.values[f"PV{m}{domain}"], errors="coerce").notna().to_numpy() for m in range(1, 11)
        ])
        partial = present.any(axis=1) & ~present.all(axis=1)
        for index in np.flatnonzero(partial):
            batch.problems[int(index)].append(f"PV1{domain}..PV10{domain}: only {present[index].sum()} of 10 present")


def transform(lines: Sequence[bytes], variables: Sequence[VariableSpec], *, country: str) -> Transformed:
    batch = parse_lines(lines, variables)
    validate(batch, variables, country=country)
    _check_plausible_values(batch)
    by_name = {spec.name: spec for spec in variables}

    ok = np.ones(len(batch.row_ids), dtype=bool)
    ok[list(batch.problems)] = False
    cntstuid_text = batch.values["CNTSTUID"].astype("string").fillna("").tolist()
    quarantined = [(int(batch.row_ids[i]), cntstuid_text[i], reasons, batch.raw[i])
                   for i, reasons in sorted(batch.problems.items())]

    cntstuid_all = pd.to_numeric(batch.values["CNTSTUID"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    # Duplicate CNTSTUIDs inside the batch: the latest (created_at, id) wins, the others are recorded.
    order = np.lexsort((batch.row_ids, batch.created_at.to_numpy(dtype="int64", na_value=0), cntstuid_all))
    duplicates: list[Duplicate] = []
    candidates = [i for i in order if ok[i]]
    latest_by_student: dict[int, int] = {}
    for i in candidates:  # ascending, so the last one seen per CNTSTUID is the latest
        student = int(cntstuid_all[i])
        if student in latest_by_student:
            earlier = latest_by_student[student]
            duplicates.append(Duplicate(student, int(batch.row_ids[i]), int(batch.row_ids[earlier])))
            ok[earlier] = False
        latest_by_student[student] = i
    good_index = np.flatnonzero(ok)

    analysis = np.empty((len(good_index), len(ANALYSIS_VARIABLES)), dtype=np.float64)
    for j, name in enumerate(ANALYSIS_VARIABLES):
        spec = by_name[name]
        values, _ = _numeric(batch.values[name])
        values = values[good_index]
        values[_missing_mask(spec, values)] = np.nan
        analysis[:, j] = values
    cntschid, _ = _numeric(batch.values["CNTSCHID"])
    return Transformed(
        good=batch,
        good_index=good_index,
        quarantined=quarantined,
        duplicates=duplicates,
        cntstuid=cntstuid_all[good_index].astype(np.int64),
        cntschid=cntschid[good_index],
        analysis=analysis,
    )

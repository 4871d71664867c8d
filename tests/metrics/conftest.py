"""The shared PISA sample (FRA, ITA, MEX), decoded with the codebook, as columns and as `StudentBatch`es."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from codebook.catalogue import read_codebook_csv
from metrics.sufficient import DOMAINS, N_PLAUSIBLE_VALUES, StudentBatch
from tests.conftest import codebook_csv_path, students_sample_path

COUNTRIES = ("FRA", "ITA", "MEX")
WEIGHT_COLUMNS = ["W_FSTUWT"] + [f"W_FSTURWT{g}" for g in range(1, 81)]
PV_COLUMNS = {domain: [f"PV{m}{domain}" for m in range(1, N_PLAUSIBLE_VALUES + 1)] for domain in DOMAINS}
NUMERIC_COLUMNS = (
    ["CNTSCHID", "ST004D01T", "ESCS", "TMINS", "DURECEC", "BELONG", "IMMIG", "REPEAT", "OECD"] + WEIGHT_COLUMNS
    + [column for columns in PV_COLUMNS.values() for column in columns]
)
# The sample has no created_at: students are given one a few seconds apart, from a fixed moment.
FIRST_CREATED_AT = 1_750_000_000.0
SECONDS_BETWEEN_STUDENTS = 7.0


def load_sample_columns() -> dict[str, dict[str, np.ndarray]]:
    """country -> column -> float array, PISA's missing codes (and empty cells) decoded to NaN."""
    specs = {spec.name: spec for spec in read_codebook_csv(codebook_csv_path())}
    rows_by_country: dict[str, list[dict[str, str]]] = {country: [] for country in COUNTRIES}
    with students_sample_path().open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows_by_country[row["CNT"]].append(row)

    def decode(spec, raw: str) -> float:
        value = float(raw) if raw.strip() else float("nan")
        return float("nan") if spec.is_missing(value) else value

    columns = {}
    for country, rows in rows_by_country.items():
        columns[country] = {
            name: np.array([decode(specs[name], row[name]) for row in rows]) for name in NUMERIC_COLUMNS
        }
        columns[country]["created_at"] = FIRST_CREATED_AT + SECONDS_BETWEEN_STUDENTS * np.arange(len(rows))
    return columns


@pytest.fixture(scope="session")
def sample_columns() -> dict[str, dict[str, np.ndarray]]:
    return load_sample_columns()


def batch_from_columns(columns: dict[str, np.ndarray], rows=slice(None)) -> StudentBatch:
    return StudentBatch(
        weights=np.column_stack([columns[name] for name in WEIGHT_COLUMNS])[rows],
        pv={domain: np.column_stack([columns[name] for name in names])[rows] for domain, names in PV_COLUMNS.items()},
        gender=columns["ST004D01T"][rows],
        escs=columns["ESCS"][rows],
        tmins=columns["TMINS"][rows],
        durecec=columns["DURECEC"][rows],
        belong=columns["BELONG"][rows],
        school_id=columns["CNTSCHID"][rows].astype(np.int64),
        created_at=columns["created_at"][rows],
    )


@pytest.fixture(scope="session")
def sample_batches(sample_columns) -> dict[str, StudentBatch]:
    return {country: batch_from_columns(columns) for country, columns in sample_columns.items()}


def synthetic_batch(n: int, *, seed: int = 0, n_schools: int = 10, **columns) -> StudentBatch:
    """n made-up students with plausible-looking values; keyword arguments replace whole columns."""
    rng = np.random.default_rng(seed)
    base_weight = rng.uniform(5, 50, n)
    replicate_factors = rng.choice([0.5, 1.5], size=(n, 80))
    ability = rng.normal(480, 90, n)
    values = {
        "weights": np.column_stack([base_weight, base_weight[:, None] * replicate_factors]),
        "pv": {domain: ability[:, None] + rng.normal(0, 30, (n, N_PLAUSIBLE_VALUES)) for domain in DOMAINS},
        "gender": rng.choice([1.0, 2.0], n),
        "escs": rng.normal(-0.2, 1.0, n),
        "tmins": rng.uniform(1200, 2100, n),
        "durecec": rng.integers(0, 9, n).astype(float),
        "belong": rng.normal(0, 1, n),
        "school_id": rng.integers(0, n_schools, n) + 1000,
        "created_at": FIRST_CREATED_AT + rng.uniform(0, 86_400, n),
    }
    values.update(columns)
    return StudentBatch(**values)

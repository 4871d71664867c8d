"""Synthetic PISA 2018 students that look like real ones, for any country.

Every student is a copy of a real-shaped record (the shared 1,269-student sample: all 1,118 values, PISA's missing
codes and empty cells kept), re-keyed to its country (CNT, CNTRYID, CNTSCHID, CNTSTUID and the national codes inside
text variables), grouped into schools, with plausible values shifted so that the country's weighted mean lands on its
published 2018 mean. Without the sample, records are drawn from the codebook alone (coarser: independent answers).
See docs/simulator.md for the statistics behind the shifts and tolerances.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from codebook.catalogue import PLAUSIBLE_VALUE, VariableSpec

PUBLISHED_DOMAINS = {"MATH": "math_mean", "READ": "read_mean", "SCIE": "scie_mean"}
# The reading subscales move with reading; global competence (GLCM) has no published mean and is left as it is.
DOMAIN_SHIFTED_WITH = {"RCLI": "READ", "RCUN": "READ", "RCER": "READ", "RTSN": "READ", "RTML": "READ"}
# Used when the codebook alone is available (no sample): PISA's scale is centred on 500 with SD 100.
SYNTHETIC_PV_MEAN, SYNTHETIC_PV_SD = 500.0, 90.0
SYNTHETIC_POOL_SIZE = 150
# How far a student's ten PVs spread around their ability (the imputation variance PISA's PVs carry).
SYNTHETIC_PV_SPREAD = 30.0
SYNTHETIC_MISSING_SHARE = 0.08
# Each student's PVs move together by a small random offset, so that copies of one template differ; it has mean zero
# and is independent of the weight, so it leaves the expected weighted mean where the shift put it.
STUDENT_PV_JITTER_SD = 8.0
# A school gets one weight factor for its students' final and replicate weights alike (keeping them consistent).
SCHOOL_WEIGHT_FACTOR_RANGE = (0.8, 1.25)
SCHOOL_SIZE_RANGE = (10, 35)
# CNTSTUID/CNTSCHID are built as in the real file: the country id followed by a five-digit serial.
SERIAL_DIGITS = 5
TEXT_MISSING = "NA"

SerialAllocator = Callable[[str, str, int], int]


class UnknownCountryError(ValueError):
    pass


def typed_value(spec: VariableSpec, raw: str):
    if raw == "":
        return None
    if spec.is_text:
        return raw
    number = float(raw)
    return int(number) if spec.decimals == 0 and number.is_integer() else number


def sample_records(path: Path, specs: list[VariableSpec]) -> tuple[dict[str, object], ...]:
    """The sample file's students as typed rows keyed by lower-case column name (missing codes kept, '' -> None).

    Parsed once per process (1.4 million values take seconds): callers copy a record before changing it.
    """
    return _parsed_sample(path, path.stat().st_mtime, tuple(specs))


@lru_cache(maxsize=2)
def _parsed_sample(path: Path, modified: float, specs: tuple[VariableSpec, ...]) -> tuple[dict[str, object], ...]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [spec.name for spec in specs if spec.name not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{path} lacks {len(absent)} codebook variable(s), e.g. {', '.join(absent[:5])}")
        return tuple({spec.name.lower(): typed_value(spec, row[spec.name]) for spec in specs} for row in reader)


def country_ids(specs: Iterable[VariableSpec]) -> dict[str, tuple[int, str]]:
    """CNT code -> (CNTRYID, display name), from the value labels of CNT and CNTRYID."""
    by_name = {spec.name: spec for spec in specs}
    id_by_label = {label: int(value) for value, label in by_name["CNTRYID"].value_labels.items()}
    return {
        code: (id_by_label[label], label)
        for code, label in by_name["CNT"].value_labels.items()
        if label in id_by_label
    }


def country_means(path: Path | None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Published means per country and domain, and the default for what is not published: the OECD average.

    The OECD average is the unweighted mean over the file's OECD countries (those given at full precision, with a
    standard error), as the OECD computes it.
    """
    if path is None or not path.exists():
        return {}, {domain: SYNTHETIC_PV_MEAN for domain in PUBLISHED_DOMAINS}
    published: dict[str, dict[str, float]] = {}
    oecd: dict[str, list[float]] = {domain: [] for domain in PUBLISHED_DOMAINS}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            means = {}
            for domain, column in PUBLISHED_DOMAINS.items():
                if row.get(column):
                    means[domain] = float(row[column])
                    if row.get(column.replace("_mean", "_se")):
                        oecd[domain].append(float(row[column]))
            published[row["CNT"]] = means
    default = {domain: sum(values) / len(values) for domain, values in oecd.items() if values}
    return published, default


def oecd_members(path: Path | None) -> frozenset[str]:
    """The countries the means file gives at full precision, with standard errors: the OECD members."""
    if path is None or not path.exists():
        return frozenset()
    with path.open(newline="", encoding="utf-8") as handle:
        return frozenset(row["CNT"] for row in csv.DictReader(handle) if row.get("math_se"))


@dataclass
class _School:
    serial: int
    seats_left: int
    anchor: dict[str, object]
    weight_factor: float


class StudentFactory:
    """Deterministic (for a seed and a sequence of calls) generator of typed PISA rows for any country."""

    def __init__(
        self,
        *,
        seed: int,
        specs: list[VariableSpec],
        sample_path: Path | None,
        country_means_path: Path | None,
        serial_allocator: SerialAllocator | None = None,
    ) -> None:
        self.specs = specs
        self.rng = random.Random(seed)
        self.countries = country_ids(specs)
        self.published_means, self.default_means = country_means(country_means_path)
        self.oecd_members = oecd_members(country_means_path)
        self._allocate_serials = serial_allocator or _InMemorySerials()
        self.coarse = sample_path is None or not sample_path.exists()
        self.pool = (
            _synthetic_records(specs, random.Random(seed), SYNTHETIC_POOL_SIZE) if self.coarse
            else sample_records(sample_path, specs)
        )
        self.pv_columns = _plausible_value_columns(specs)
        self.weight_columns = [spec.name.lower() for spec in specs if spec.name.startswith("W_")]
        self.text_columns = [spec.name.lower() for spec in specs if spec.is_text]
        self.decimals = {spec.name.lower(): spec.decimals for spec in specs}
        self.pool_means = {domain: _weighted_pv_mean(self.pool, columns) for domain, columns in self.pv_columns.items()}
        self._schools: dict[str, _School] = {}

    def target_means(self, country: str) -> dict[str, float]:
        """The weighted means the country's students aim at, per published domain."""
        published = self.published_means.get(country, {})
        return {domain: published.get(domain, default) for domain, default in self.default_means.items()}

    def students(self, country: str, n: int) -> list[dict[str, object]]:
        if country not in self.countries:
            raise UnknownCountryError(f"{country!r} is not a PISA 2018 country code of the codebook (CNT)")
        country_id, _ = self.countries[country]
        shifts = self._shifts(country)
        first = self._allocate_serials(country, "student", n)
        rows = []
        for offset in range(n):
            school = self._school(country)
            template = self.rng.choice(self.pool)
            rows.append(self._rekeyed(template, school, country, country_id, first + offset, shifts))
        return rows

    def _shifts(self, country: str) -> dict[str, float]:
        targets = self.target_means(country)
        shifts = {}
        for domain in self.pv_columns:
            anchor = DOMAIN_SHIFTED_WITH.get(domain, domain)
            if anchor in targets and self.pool_means.get(anchor) is not None:
                shifts[domain] = targets[anchor] - self.pool_means[anchor]
        return shifts

    def _school(self, country: str) -> _School:
        school = self._schools.get(country)
        if school is None or school.seats_left == 0:
            school = _School(
                serial=self._allocate_serials(country, "school", 1),
                seats_left=self.rng.randint(*SCHOOL_SIZE_RANGE),
                anchor=self.rng.choice(self.pool),
                weight_factor=self.rng.uniform(*SCHOOL_WEIGHT_FACTOR_RANGE),
            )
            self._schools[country] = school
        school.seats_left -= 1
        return school

    def _rekeyed(self, template, school: _School, country: str, country_id: int, serial: int, shifts) -> dict:
        row = dict(template)
        old_id, old_code = template["cntryid"], template["cnt"]
        for column in self.text_columns:
            row[column] = _rekeyed_text(row[column], old_id, old_code, country_id, country)
        row["cntryid"] = country_id
        row["cnt"] = country
        row["cntschid"] = country_id * 10**SERIAL_DIGITS + school.serial
        row["cntstuid"] = country_id * 10**SERIAL_DIGITS + serial
        if self.oecd_members:
            row["oecd"] = int(country in self.oecd_members)
        for column in ("stratum", "subnatio"):
            row[column] = _rekeyed_text(school.anchor[column], school.anchor["cntryid"], school.anchor["cnt"],
                                        country_id, country)
        for column in self.weight_columns:
            if isinstance(row[column], float):
                row[column] = round(row[column] * school.weight_factor, self.decimals[column])
        for domain, columns in self.pv_columns.items():
            if domain not in shifts:
                continue
            move = shifts[domain] + self.rng.gauss(0.0, STUDENT_PV_JITTER_SD)
            for column in columns:
                if isinstance(row[column], float):
                    row[column] = round(row[column] + move, self.decimals[column])
        return row


class _InMemorySerials:
    """Serials for one process: 1, 2, 3... per (country, kind)."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}

    def __call__(self, country: str, kind: str, n: int) -> int:
        first = self.last.get((country, kind), 0) + 1
        self.last[(country, kind)] = first + n - 1
        return first


def _rekeyed_text(value, old_id, old_code, new_id: int, new_code: str):
    """National codes inside text variables start with the country id (e.g. STRATUM FRA0206, PROGN 2500001)."""
    if not isinstance(value, str):
        return value
    if old_code and value.startswith(old_code):
        return new_code + value[len(old_code):]
    prefix = f"{int(old_id):03d}" if old_id is not None else None
    if prefix and value.startswith(prefix):
        return f"{new_id:03d}" + value[len(prefix):]
    return value


def _plausible_value_columns(specs: Iterable[VariableSpec]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {}
    for spec in specs:
        match = PLAUSIBLE_VALUE.match(spec.name)
        if match:
            columns.setdefault(match[2], []).append(spec.name.lower())
    return columns


def _weighted_pv_mean(records: list[dict], columns: list[str]) -> float | None:
    """Weighted (W_FSTUWT) mean over students of the mean of their PVs: the PISA point estimate averaged over PVs."""
    total = weight_sum = 0.0
    for record in records:
        weight = record.get("w_fstuwt")
        values = [record[column] for column in columns if isinstance(record[column], float)]
        if isinstance(weight, float) and weight > 0 and len(values) == len(columns):
            total += weight * sum(values) / len(values)
            weight_sum += weight
    return total / weight_sum if weight_sum else None


def weighted_pv_mean(rows: list[dict], domain: str) -> float | None:
    """The weighted mean of PV1..PV10 of `domain` over typed rows (what a PISA analysis reports)."""
    columns = [f"pv{m}{domain.lower()}" for m in range(1, 11)]
    return _weighted_pv_mean(rows, columns)


def _synthetic_records(specs: list[VariableSpec], rng: random.Random, count: int) -> list[dict[str, object]]:
    """Records drawn from the codebook alone: labelled answers, some missing codes, PVs around 500, Fay weights."""
    drawers = [(spec.name.lower(), _value_drawer(spec)) for spec in specs]
    pv_columns = _plausible_value_columns(specs)
    weight_decimals = next((spec.decimals for spec in specs if spec.name == "W_FSTUWT"), 5)
    records = []
    for _ in range(count):
        record = {column: draw(rng) for column, draw in drawers}
        record.update(cntryid=0, cnt="XXX", cntschid=0, cntstuid=0, cyc="07MS", stratum="XXX0101", subnatio="0000000")
        final_weight = round(rng.uniform(5.0, 300.0), weight_decimals)
        record["w_fstuwt"] = final_weight
        for replicate in range(1, 81):
            # Fay's BRR with k = 0.5: each replicate weight is half or one and a half times the final weight.
            record[f"w_fsturwt{replicate}"] = round(final_weight * rng.choice((0.5, 1.5)), weight_decimals)
        for columns in pv_columns.values():
            ability = rng.gauss(SYNTHETIC_PV_MEAN, SYNTHETIC_PV_SD)
            for column in columns:
                record[column] = round(ability + rng.gauss(0.0, SYNTHETIC_PV_SPREAD), 3)
        records.append(record)
    return records


def _value_drawer(spec: VariableSpec) -> Callable[[random.Random], object]:
    """How to draw one value of a variable: mostly a labelled answer (or a plain number), sometimes a missing code."""
    if spec.is_text:
        return lambda rng: None
    as_stored = int if spec.decimals == 0 else float
    codes = list(spec.na_values) or ([spec.na_range[1]] if spec.na_range else [])
    missing_codes = [as_stored(code) for code in codes]
    answers = [as_stored(value) for value in spec.value_labels if not spec.is_missing(value)]
    largest = min(10**spec.width - 1, 100)

    def draw(rng: random.Random):
        if missing_codes and rng.random() < SYNTHETIC_MISSING_SHARE:
            return rng.choice(missing_codes)
        if answers:
            return rng.choice(answers)
        value = rng.randint(0, largest) if spec.decimals == 0 else round(rng.gauss(0.0, 1.0), spec.decimals)
        return None if spec.is_missing(value) else value

    return draw


def _text_formatter(spec: VariableSpec) -> Callable[[object], str]:
    if spec.is_text:
        return lambda value: TEXT_MISSING if spec.is_missing(value) else str(value)
    if spec.decimals == 0:
        return lambda value: TEXT_MISSING if spec.is_missing(value) else str(int(value))

    def decimal(value) -> str:
        if spec.is_missing(value):
            return TEXT_MISSING
        if isinstance(value, float) and not math.isfinite(value):
            return TEXT_MISSING
        return f"{value:.{spec.decimals}f}".rstrip("0").rstrip(".")

    return decimal


class TextStyle:
    """Converts typed rows to text-style rows: every PISA value as text, missing codes and NULLs as 'NA'."""

    def __init__(self, specs: list[VariableSpec]) -> None:
        self.formatters = [(spec.name.lower(), _text_formatter(spec)) for spec in specs]

    def row(self, typed_row: dict[str, object]) -> dict[str, object]:
        converted = dict(typed_row)
        for column, formatter in self.formatters:
            converted[column] = formatter(typed_row[column])
        return converted


def row_as_text(typed_row: dict[str, object], specs: list[VariableSpec]) -> dict[str, object]:
    """One typed row in the text style (for many rows, build a `TextStyle` once)."""
    return TextStyle(specs).row(typed_row)

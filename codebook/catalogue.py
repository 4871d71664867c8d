"""The PISA codebook as plain Python values: what every variable is, how it is stored and which codes mean "missing".

This is the one place that knows the shape of a codebook file. The `codebook` models are loaded from it, and code that
must run before the database has a codebook (the source simulator, tests) can read it directly.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

IDENTIFIERS = frozenset({"CNTRYID", "CNT", "CNTSCHID", "CNTSTUID", "CYC", "NatCen", "STRATUM", "SUBNATIO"})
PLAUSIBLE_VALUE = re.compile(r"^PV(\d+)([A-Z]+)$")
SPSS_FORMAT = re.compile(r"^(?P<type>[AF])(?P<width>\d+)(?:\.(?P<decimals>\d+))?$")


class Kind:
    IDENTIFIER = "identifier"
    CATEGORICAL = "categorical"
    CONTINUOUS = "continuous"
    WEIGHT = "weight"
    PLAUSIBLE_VALUE = "plausible_value"
    TEXT = "text"

    CHOICES = [
        (IDENTIFIER, "Identifier"),
        (CATEGORICAL, "Categorical"),
        (CONTINUOUS, "Continuous"),
        (WEIGHT, "Weight"),
        (PLAUSIBLE_VALUE, "Plausible value"),
        (TEXT, "Text"),
    ]


class CodebookFormatError(ValueError):
    """A codebook file that cannot be used; `problems` lists (line number, reason) for every bad line."""

    def __init__(self, path: Path | str, problems: list[tuple[int, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        listing = "\n".join(f"  line {line}: {reason}" for line, reason in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{self.path} is not a valid codebook ({len(problems)} problem(s)):\n{listing}{more}")


@dataclass(frozen=True)
class VariableSpec:
    name: str
    label: str
    format_spss: str
    # value -> label, values as stored (float for numeric variables, str for text ones)
    value_labels: dict = field(default_factory=dict, hash=False, compare=True)
    na_values: tuple = ()
    na_range: tuple[float, float] | None = None

    @property
    def is_text(self) -> bool:
        return self.format_spss.startswith("A")

    @property
    def width(self) -> int:
        return int(SPSS_FORMAT.match(self.format_spss)["width"])

    @property
    def decimals(self) -> int:
        return int(SPSS_FORMAT.match(self.format_spss)["decimals"] or 0)

    @property
    def kind(self) -> str:
        if self.name in IDENTIFIERS:
            return Kind.IDENTIFIER
        if self.name.startswith("W_"):
            return Kind.WEIGHT
        if PLAUSIBLE_VALUE.match(self.name):
            return Kind.PLAUSIBLE_VALUE
        if self.is_text:
            return Kind.TEXT
        if self.decimals == 0 and any(not self.is_missing(value) for value in self.value_labels):
            return Kind.CATEGORICAL
        return Kind.CONTINUOUS

    def is_missing(self, value) -> bool:
        """True for a user-missing code (e.g. 95..99, 99999997) or a system-missing value (None, NaN, '')."""
        if value is None or value == "":
            return True
        if isinstance(value, float) and math.isnan(value):
            return True
        if value in self.na_values:
            return True
        if self.na_range is not None and not isinstance(value, str):
            low, high = self.na_range
            return low <= value <= high
        return False


def _json_field(raw: str, expected: type, what: str):
    try:
        value = json.loads(raw) if raw.strip() else expected()
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, expected):
        raise ValueError(f"{what} must be a JSON {expected.__name__}, got {type(value).__name__}")
    return value


def parse_csv_row(row: dict[str, str]) -> VariableSpec:
    """One line of the codebook CSV layout -> VariableSpec; ValueError with the reason when it is malformed."""
    name = (row.get("variable") or "").strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise ValueError(f"variable name {name!r} is not a valid identifier")
    format_spss = (row.get("format_spss") or "").strip()
    if not SPSS_FORMAT.match(format_spss):
        raise ValueError(f"format_spss {format_spss!r} is not an SPSS format like F8.3 or A3")
    is_text = format_spss.startswith("A")
    labels = _json_field(row.get("value_labels") or "", dict, "value_labels")
    value_labels = {}
    for label, value in labels.items():
        if is_text:
            value_labels[str(value)] = str(label)
        else:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"value_labels: value {value!r} of {label!r} is not a number")
            value_labels[float(value)] = str(label)
    na_values = _json_field(row.get("na_values") or "", list, "na_values")
    if not is_text and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in na_values):
        raise ValueError("na_values must be numbers for a numeric variable")
    na_range = _json_field(row.get("na_range") or "", list, "na_range")
    if na_range and (len(na_range) != 2 or not all(isinstance(v, (int, float)) for v in na_range)
                     or na_range[0] > na_range[1]):
        raise ValueError(f"na_range must be [low, high] with low <= high, got {na_range!r}")
    return VariableSpec(
        name=name,
        label=(row.get("label") or "").strip(),
        format_spss=format_spss,
        value_labels=value_labels,
        na_values=tuple(str(v) if is_text else float(v) for v in na_values),
        na_range=(float(na_range[0]), float(na_range[1])) if na_range else None,
    )


REQUIRED_COLUMNS = ("variable", "label", "format_spss", "value_labels", "na_values", "na_range")


def read_codebook_csv(path: Path | str) -> list[VariableSpec]:
    """Every variable of a codebook CSV, in file order. Refuses the whole file, listing every bad line."""
    path = Path(path)
    problems: list[tuple[int, str]] = []
    specs: list[VariableSpec] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise CodebookFormatError(path, [(1, f"missing column(s): {', '.join(missing)}")])
        for row in reader:
            line = reader.line_num
            try:
                spec = parse_csv_row(row)
            except ValueError as exc:
                problems.append((line, str(exc)))
                continue
            if spec.name in seen:
                problems.append((line, f"variable {spec.name} is already defined on line {seen[spec.name]}"))
                continue
            seen[spec.name] = line
            specs.append(spec)
    if not specs and not problems:
        problems.append((1, "the file defines no variable"))
    if problems:
        raise CodebookFormatError(path, problems)
    return specs

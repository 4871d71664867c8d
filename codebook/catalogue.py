"""The PISA codebook as plain Python values: what every variable is, how it is stored and which codes mean "missing".

This is the one place that knows the shape of a codebook file. The `codebook` models are loaded from it, and code that
must run before the database has a codebook (the source simulator, tests) can read it directly.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

IDENTIFIERS = frozenset({"CNTRYID", "CNT", "CNTSCHID", "CNTSTUID", "CYC", "NatCen", "STRATUM", "SUBNATIO"})
PLAUSIBLE_VALUE = re.compile(r"^PV(\d+)([A-Z]+)$")
SPSS_FORMAT = re.compile(r"^(?P<type>[AF])(?P<width>\d+)(?:\.(?P<decimals>\d+))?$")
# Any SPSS display format of a numeric variable (F8.3, N4, COMMA10.2, ...): PISA uses F only, others read as F.
SPSS_NUMERIC_FORMAT = re.compile(r"^[A-Z]+(?P<width>\d+)(?:\.(?P<decimals>\d+))?$")
# Questionnaire items are named <questionnaire prefix><3-digit question number>..., e.g. ST004D01T, IC010Q01TA.
QUESTION_ITEM = re.compile(r"^(?P<prefix>[A-Z]{2})\d{3}")


class Section:
    """Where a variable comes from, derived from its name (see `section_of`)."""

    IDENTIFICATION = "identification"
    STUDENT = "student"
    EDUCATIONAL_CAREER = "educational_career"
    ICT_FAMILIARITY = "ict_familiarity"
    FINANCIAL_LITERACY = "financial_literacy"
    WELL_BEING = "well_being"
    PARENT = "parent"
    DERIVED = "derived"
    PLAUSIBLE_VALUES = "plausible_values"
    WEIGHTS = "weights"

    CHOICES = [
        (IDENTIFICATION, "Identification"),
        (STUDENT, "Student questionnaire"),
        (EDUCATIONAL_CAREER, "Educational career questionnaire"),
        (ICT_FAMILIARITY, "ICT familiarity questionnaire"),
        (FINANCIAL_LITERACY, "Financial literacy questionnaire"),
        (WELL_BEING, "Well-being questionnaire"),
        (PARENT, "Parent questionnaire"),
        (DERIVED, "Derived indices and design variables"),
        (PLAUSIBLE_VALUES, "Plausible values"),
        (WEIGHTS, "Weights"),
    ]


QUESTIONNAIRE_PREFIXES = {
    "ST": Section.STUDENT,
    "EC": Section.EDUCATIONAL_CAREER,
    "IC": Section.ICT_FAMILIARITY,
    "FL": Section.FINANCIAL_LITERACY,
    "WB": Section.WELL_BEING,
    "PA": Section.PARENT,
}


def section_of(name: str) -> str:
    """The questionnaire section of a variable, from its name's prefix (ST004D01T -> student, W_FSTUWT -> weights)."""
    if name in IDENTIFIERS:
        return Section.IDENTIFICATION
    if name.startswith("W_"):
        return Section.WEIGHTS
    if PLAUSIBLE_VALUE.match(name):
        return Section.PLAUSIBLE_VALUES
    item = QUESTION_ITEM.match(name)
    if item and item["prefix"] in QUESTIONNAIRE_PREFIXES:
        return QUESTIONNAIRE_PREFIXES[item["prefix"]]
    return Section.DERIVED


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
    """A codebook file that cannot be used; `problems` lists (line number, reason) for every bad line.

    `unit` names what the numbers count: lines of a CSV file, variables (1-based, in file order) of an SPSS file.
    """

    def __init__(self, path: Path | str, problems: list[tuple[int, str]], unit: str = "line") -> None:
        self.path = str(path)
        self.problems = problems
        self.unit = unit
        listing = "\n".join(f"  {unit} {line}: {reason}" for line, reason in problems[:50])
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
    def section(self) -> str:
        return section_of(self.name)

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
    opened = (gzip.open(path, "rt", newline="", encoding="utf-8") if path.suffix == ".gz"
              else path.open(newline="", encoding="utf-8"))
    with opened as handle:
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


def read_codebook_sav(path: Path | str) -> list[VariableSpec]:
    """Every variable of an SPSS .sav file's metadata (labels, value labels, user-missing values), in file order.

    Only the dictionary is read, never the data rows, so a full PISA file (hundreds of MB) loads in a moment.
    pyreadstat (and the data-frame library it needs) is imported here only: nothing else pays for it.
    """
    import pyreadstat

    path = Path(path)
    try:
        _, meta = pyreadstat.read_sav(str(path), metadataonly=True, user_missing=True)
    except (pyreadstat.ReadstatError, pyreadstat.PyreadstatError) as exc:
        raise CodebookFormatError(path, [(1, f"not a readable SPSS .sav file ({exc})")]) from exc
    problems: list[tuple[int, str]] = []
    specs: list[VariableSpec] = []
    for number, name in enumerate(meta.column_names, start=1):
        try:
            specs.append(_spec_from_sav_metadata(meta, name))
        except ValueError as exc:
            problems.append((number, f"{name}: {exc}"))
    if not specs and not problems:
        problems.append((1, "the file defines no variable"))
    if problems:
        raise CodebookFormatError(path, problems, unit="variable")
    return specs


def _spec_from_sav_metadata(meta, name: str) -> VariableSpec:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise ValueError(f"variable name {name!r} is not a valid identifier")
    is_text = meta.readstat_variable_types[name] == "string"
    if is_text:
        format_spss = f"A{meta.variable_storage_width[name]}"
    else:
        numeric = SPSS_NUMERIC_FORMAT.match(meta.original_variable_types.get(name) or "")
        if numeric is None:
            raise ValueError(f"format {meta.original_variable_types.get(name)!r} is not an SPSS numeric format")
        format_spss = f"F{numeric['width']}" + (f".{numeric['decimals']}" if numeric["decimals"] else ".0")
    value_labels = {
        (str(value) if is_text else float(value)): str(label)
        for value, label in meta.variable_value_labels.get(name, {}).items()
    }
    na_values: list = []
    na_range = None
    # SPSS keeps up to three discrete missing codes, or one range plus one code; a code comes back as lo == hi.
    for missing in meta.missing_ranges.get(name, []):
        low, high = missing["lo"], missing["hi"]
        if low == high:
            na_values.append(str(low) if is_text else float(low))
        elif is_text:
            raise ValueError("a text variable cannot have a range of missing values")
        elif na_range is not None:
            raise ValueError("more than one range of missing values")
        else:
            na_range = (float(low), float(high))
    label = (meta.column_names_to_labels.get(name) or "").strip()
    return VariableSpec(name=name, label=label, format_spss=format_spss, value_labels=value_labels,
                        na_values=tuple(na_values), na_range=na_range)


def read_codebook(path: Path | str) -> list[VariableSpec]:
    """A codebook file of either supported layout, chosen by its suffix: .sav (SPSS) or anything else (CSV)."""
    path = Path(path)
    if path.suffix.lower() == ".sav":
        return read_codebook_sav(path)
    return read_codebook_csv(path)

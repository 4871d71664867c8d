"""Turning stored PISA values into what they mean: a label, or "missing" with the reason why.

Two entry points:
- `decode(name, raw)` for showing a value (API, dashboard): the label of the code, or the missing reason.
- `analysis_value(spec, raw)` for ingestion's analysis columns: a float, or None for *any* kind of missing, so a
  missing code such as 99 or 99999997 can never enter an average.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

from codebook.catalogue import VariableSpec
from codebook.selectors import missing_code_labels, variable_spec_map


class MissingReason:
    VALID_SKIP = "valid_skip"
    NOT_APPLICABLE = "not_applicable"
    INVALID = "invalid"
    NO_RESPONSE = "no_response"
    SYSTEM_MISSING = "system_missing"


# What source databases and CSV exports write for "no value at all" (compared upper-cased, stripped).
SYSTEM_MISSING_TEXTS = frozenset({"", "NA", "N/A", "NAN", "NULL", "NONE"})

# The codebook's labels of missing codes, letters only, lower-cased: "Valid Skip" -> "validskip".
_REASONS_BY_LABEL = {
    "validskip": MissingReason.VALID_SKIP,
    "notapplicable": MissingReason.NOT_APPLICABLE,
    "invalid": MissingReason.INVALID,
    "noresponse": MissingReason.NO_RESPONSE,
    "systemmissing": MissingReason.SYSTEM_MISSING,
}
# PISA's convention when a missing code has no (recognisable) label: its last digit says why (5, 95, 9995, ...).
_REASONS_BY_LAST_DIGIT = {
    "5": MissingReason.VALID_SKIP,
    "7": MissingReason.NOT_APPLICABLE,
    "8": MissingReason.INVALID,
    "9": MissingReason.NO_RESPONSE,
}
_NOT_LETTERS = re.compile(r"[^a-z]")


class UnknownVariable(KeyError):
    """`decode` was given a name the codebook does not have."""


class NotANumber(ValueError):
    """A numeric variable's raw value is text that is neither a number nor a system-missing marker (e.g. "abc")."""

    def __init__(self, name: str, raw) -> None:
        self.name, self.raw = name, raw
        super().__init__(f"{name}: {raw!r} is not a number")


@dataclass(frozen=True)
class Decoded:
    value: float | str | None  # the code (float for numeric variables), None when missing
    label: str | None  # the code's label (for a missing code: its label, e.g. "No Response"), None if unlabelled
    missing_reason: str | None  # one of MissingReason, None when the value is valid

    @property
    def is_missing(self) -> bool:
        return self.missing_reason is not None


def decode(name: str, raw) -> Decoded:
    """Decode one raw value of the variable `name` with the current codebook (staff-edited labels included).

    A text that is not a number, for a numeric variable, decodes as missing (invalid) rather than raising: this is for
    display. Raises UnknownVariable for a name the codebook does not have.
    """
    spec = variable_spec_map().get(name)
    if spec is None:
        raise UnknownVariable(name)
    return decode_with_spec(spec, raw, reason_labels=missing_code_labels().get(name))


def decode_with_spec(spec: VariableSpec, raw, reason_labels: dict | None = None) -> Decoded:
    """`decode` for a VariableSpec at hand (no codebook lookup). The reason a code is missing is read from
    `reason_labels` (code -> label as imported) when given, else from the spec's own labels."""
    if _is_system_missing(raw):
        return Decoded(value=None, label=None, missing_reason=MissingReason.SYSTEM_MISSING)
    if spec.is_text:
        code = str(raw).strip()
    else:
        try:
            code = _as_float(spec.name, raw)
        except NotANumber:
            return Decoded(value=None, label=None, missing_reason=MissingReason.INVALID)
    label = spec.value_labels.get(code)
    if spec.is_missing(code):
        reason_label = (reason_labels or {}).get(code, label)
        return Decoded(value=None, label=label, missing_reason=missing_reason_of(code, reason_label))
    return Decoded(value=code, label=label, missing_reason=None)


def missing_reason_of(code: float | str, label: str | None) -> str:
    """Why a user-missing code is missing: from its label ("Not Applicable"), else from PISA's last-digit
    convention, else "invalid" (a code declared missing without saying why)."""
    reason = _REASONS_BY_LABEL.get(_NOT_LETTERS.sub("", (label or "").lower()))
    if reason:
        return reason
    digits = value_digits(code)
    return _REASONS_BY_LAST_DIGIT.get(digits[-1:], MissingReason.INVALID)


def value_digits(code: float | str) -> str:
    if isinstance(code, float) and code.is_integer():
        return str(int(code))
    return str(code)


def analysis_value(spec: VariableSpec, raw) -> float | None:
    """The value that goes into an analysis column: a float, or None for every kind of missing (user-missing codes,
    empty, None, NaN, "NA").

    Raises NotANumber for text that is not a number (the caller quarantines the row rather than guessing), and
    TypeError for a text variable, which has no analysis value. Fast enough to call per cell: no codebook lookup.
    """
    if spec.is_text:
        raise TypeError(f"{spec.name} is a text variable: it has no analysis value")
    if raw is None:
        return None
    value = raw if type(raw) is float else _as_float_or_missing(spec.name, raw)
    if value is None or math.isnan(value):
        return None
    if value in spec.na_values:
        return None
    if spec.na_range is not None and spec.na_range[0] <= value <= spec.na_range[1]:
        return None
    return value


def _as_float_or_missing(name: str, raw) -> float | None:
    if _is_system_missing(raw):
        return None
    return _as_float(name, raw)


def _as_float(name: str, raw) -> float:
    if isinstance(raw, bool):
        raise NotANumber(name, raw)
    if isinstance(raw, (int, float, Decimal)):
        return float(raw)
    try:
        return float(str(raw).strip())
    except ValueError:
        raise NotANumber(name, raw) from None


def _is_system_missing(raw) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float):
        return math.isnan(raw)
    if isinstance(raw, str):
        return raw.strip().upper() in SYSTEM_MISSING_TEXTS
    return False

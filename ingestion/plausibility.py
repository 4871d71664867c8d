"""Plausibility rules: values a row may hold and still be a PISA response. Checked at the door, each a quarantine
reason, so that one absurd weight or score can neither freeze nor skew a country's figures.

Every rule, its bound and its source are in `RULES` and in the table of docs/plausibility.md (a test keeps the two
the same). `RULES_VERSION` changes whenever a rule or a bound does: a source whose stored rows were checked under
another version has them checked again at its next sync (`ingestion.pipeline.source_students_recheck`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# The final weight is the number of 15-year-olds a student stands for. PISA trims weights (at four times the
# median of their stratum, Technical Report ch. 8); the largest W_FSTUWT of the 612,004 students of 2018 is in
# the low thousands (the shared sample's: 1,082). A bound two orders of magnitude above that refuses only the absurd.
FINAL_WEIGHT_MAX = 100_000.0
# Fay's BRR (k = 0.5) makes each replicate 0.5 or 1.5 times the final weight before the replicate's own
# non-response adjustment; the shared sample's ratios lie in [0.26, 2.25].
REPLICATE_TO_FINAL_MAX = 4.0
# The PISA scale: OECD mean 500, standard deviation 100. Five standard deviations either way; the shared sample's
# plausible values lie in [141, 785].
PLAUSIBLE_VALUE_RANGE = (0.0, 1000.0)
# PISA's derived indices (ESCS, BELONG and 65 more: the codebook's continuous variables of SPSS format F7.4) are
# standardised to OECD mean 0 and standard deviation 1. Ten standard deviations either way; the sample's: +-5.4.
INDEX_FORMAT = "F7.4"
INDEX_RANGE = (-10.0, 10.0)
# TMINS is minutes of learning per week: a week has 10,080 minutes.
BOUNDED_VARIABLES = {"TMINS": (0.0, 7 * 24 * 60.0)}


@dataclass(frozen=True)
class Rule:
    code: str
    applies_to: str
    requirement: str
    source: str


RULES = (
    Rule("final-weight", "W_FSTUWT",
         f"finite, > 0 and at most {FINAL_WEIGHT_MAX:,.0f}",
         "PISA 2018 Technical Report ch. 8 (weights are trimmed; the largest is in the low thousands)"),
    Rule("replicate-weights", "W_FSTURWT1..W_FSTURWT80",
         f"finite, >= 0 and at most {REPLICATE_TO_FINAL_MAX:g} x W_FSTUWT",
         "Fay's BRR with k = 0.5 (METHODS.md): a replicate is 0.5 or 1.5 x the final weight before adjustment"),
    Rule("plausible-values", "PV1..PV10 of READ, MATH, SCIE",
         f"finite, within [{PLAUSIBLE_VALUE_RANGE[0]:g}, {PLAUSIBLE_VALUE_RANGE[1]:g}]",
         "the PISA scale (OECD mean 500, SD 100): five standard deviations either way"),
    Rule("derived-indices", f"the codebook's continuous variables of format {INDEX_FORMAT} (ESCS, BELONG, ...)",
         f"finite, within [{INDEX_RANGE[0]:g}, {INDEX_RANGE[1]:g}] unless a declared missing code",
         "PISA 2018 Technical Report ch. 16: indices standardised to OECD mean 0, SD 1; ten SDs either way"),
    Rule("bounded-variables", ", ".join(BOUNDED_VARIABLES),
         "; ".join(f"{name} within [{low:g}, {high:g}] unless a declared missing code"
                   for name, (low, high) in BOUNDED_VARIABLES.items()),
         "TMINS counts minutes per week (a week has 10,080)"),
)
RULES_VERSION = hashlib.blake2b(repr(RULES).encode(), digest_size=6).hexdigest()


def value_bounds(name: str, kind: str, format_spss: str) -> tuple[float, float] | None:
    """The range a non-missing value of this codebook variable must lie in, or None when no rule bounds it."""
    if name in BOUNDED_VARIABLES:
        return BOUNDED_VARIABLES[name]
    if kind == "continuous" and format_spss == INDEX_FORMAT:
        return INDEX_RANGE
    return None


def _shown(value: float) -> str:
    return f"{value:.6g}"


def weight_problems(weights: np.ndarray) -> dict[int, list[str]]:
    """Rows (n x 81: W_FSTUWT then the 80 replicates) whose weights break a rule, with the reasons. NaN (NULL) is
    not judged here: a NULL weight has its own reason."""
    problems: dict[int, list[str]] = {}
    final = weights[:, 0]
    replicates = weights[:, 1:]
    with np.errstate(invalid="ignore"):
        bad_final = ~np.isnan(final) & ~((final > 0) & (final <= FINAL_WEIGHT_MAX))
        limit = REPLICATE_TO_FINAL_MAX * np.where(bad_final, np.inf, final)[:, None]
        bad_replicates = ~np.isnan(replicates) & ~((replicates >= 0) & (replicates <= limit))
    for row in np.flatnonzero(bad_final):
        problems.setdefault(int(row), []).append(
            f"W_FSTUWT: {_shown(final[row])} is not a plausible final weight (must be finite, > 0 and at most "
            f"{FINAL_WEIGHT_MAX:,.0f})")
    for row in np.flatnonzero(bad_replicates.any(axis=1)):
        columns = np.flatnonzero(bad_replicates[row])
        first = int(columns[0])
        problems.setdefault(int(row), []).append(
            f"W_FSTURWT1..80: {len(columns)} replicate weight(s) implausible, e.g. W_FSTURWT{first + 1} = "
            f"{_shown(replicates[row, first])} (each must be finite, >= 0 and at most {REPLICATE_TO_FINAL_MAX:g} x "
            f"W_FSTUWT)")
    return problems


def plausible_value_problems(domain: str, values: np.ndarray) -> dict[int, str]:
    """Rows (n x 10) holding a plausible value of `domain` outside the PISA scale's range, with the reason."""
    low, high = PLAUSIBLE_VALUE_RANGE
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(values) & ~((values >= low) & (values <= high))
    reasons = {}
    for row in np.flatnonzero(bad.any(axis=1)):
        m = int(np.flatnonzero(bad[row])[0])
        reasons[int(row)] = (f"PV{m + 1}{domain}: {_shown(values[row, m])} is outside the PISA scale's plausible "
                             f"range [{low:g}, {high:g}]")
    return reasons


def bounded_problems(names, values: np.ndarray, low: np.ndarray, high: np.ndarray,
                     is_missing_code: np.ndarray) -> list[tuple[int, str]]:
    """(row, reason) for cells of `values` (rows x the bounded variables `names`) outside their [low, high] that are
    not a declared missing code."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(values) & ~is_missing_code & ~((values >= low) & (values <= high))
    return [(int(row), f"{names[k]}: {_shown(values[row, k])} is outside its plausible range "
                       f"[{low[k]:g}, {high[k]:g}]") for row, k in zip(*np.nonzero(bad))]

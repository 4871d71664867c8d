"""How a PISA response is laid out in the warehouse.

A source row has 1,118 PISA variables. PostgreSQL allows 1,600 columns and ~8 KB per row, and 1,118 `float8` columns
would need ~9 KB, so the warehouse keeps each student as:

- **raw**: every one of the 1,118 values, losslessly, as the tab-separated line of PostgreSQL's COPY text format
  (`\\N` for NULL, the source's own spelling otherwise: `NA` stays `NA`), in codebook order. One text value (~4 KB,
  kept out of line and uncompressed: pglz would cost as much CPU as the rest of a load, see migration 0003) instead of
  1,118 columns; a single variable is `split_part(raw, E'\\t', position)`.
- **analysis columns**: the ~120 values the metrics read on every refresh (final and 80 replicate weights, 30 plausible
  values, gender, ESCS, TMINS, DURECEC, BELONG, and IMMIG, the breakdown analysts ask for most) as nullable `float8`,
  with every PISA missing code already NULL, so a 99 can never enter an average.
- **analysis_packed** (students only): the school id and the analysis columns again, as one `bytea` of big-endian
  float8 (NULL as NaN) in the order of `PACKED_COLUMNS`, a column PostgreSQL generates from them (migration 0012).
  Reading a country's students for an open analysis is then one value per row instead of 118: several times faster
  (bench/analysis.py). Kept inline (STORAGE PLAIN): out of line, each read would be a TOAST lookup.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from django.conf import settings

from codebook.catalogue import VariableSpec, read_codebook_csv

KEY_VARIABLES = ("CNT", "CNTSCHID", "CNTSTUID")
REPLICATE_WEIGHTS = tuple(f"W_FSTURWT{g}" for g in range(1, 81))
WEIGHTS = ("W_FSTUWT", *REPLICATE_WEIGHTS)
SCORE_DOMAINS = ("READ", "MATH", "SCIE")
PLAUSIBLE_VALUES = tuple(f"PV{m}{domain}" for domain in SCORE_DOMAINS for m in range(1, 11))
COVARIATES = ("ST004D01T", "ESCS", "TMINS", "DURECEC", "BELONG", "IMMIG")
# Variables kept as typed, NULL-for-missing columns for the metrics (in this order).
ANALYSIS_VARIABLES = (*WEIGHTS, *PLAUSIBLE_VALUES, *COVARIATES)


def analysis_column(variable: str) -> str:
    return variable.lower()


ANALYSIS_COLUMNS = tuple(analysis_column(v) for v in ANALYSIS_VARIABLES)
PACKED_COLUMNS = ("cntschid", *ANALYSIS_COLUMNS)


@lru_cache(maxsize=1)
def _specs_from_file(path: str) -> tuple[VariableSpec, ...]:
    return tuple(read_codebook_csv(path))


def pisa_variables() -> Sequence[VariableSpec]:
    """The 1,118 variables in codebook order: the order of the raw line's fields. From the codebook in the database
    (labels as staff edited them), or from the codebook file while the database has none. The same object is returned
    until the codebook changes: callers may cache what they derive from it by identity."""
    from codebook.selectors import variable_specs

    return variable_specs() or _specs_from_file(str(settings.PISA_CODEBOOK_PATH))


# The escapes PostgreSQL's COPY TO writes in text format; any other backslashed character stands for itself.
_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_COPY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def raw_field_value(field: str) -> str | None:
    """One field of a raw line as the source held it: None for `\\N`, the text unescaped otherwise."""
    if field == "\\N":
        return None
    if "\\" not in field:
        return field
    return _COPY_ESCAPE.sub(lambda match: _COPY_ESCAPES.get(match[1], match[1]), field)


def raw_values(raw: str) -> dict[str, str | None]:
    """Every variable of a raw line by name, in codebook order, with the source's own spelling (`NA` stays `NA`)."""
    return {spec.name: raw_field_value(field) for spec, field in zip(pisa_variables(), raw.split("\t"))}

"""From source lines to warehouse rows: parse, validate, decode missing codes, find duplicates. Vectorised.

Fast paths: a small batch (a poll's few rows) becomes one NumPy array of byte strings converted to float in a single
`astype` call; a large one (a backfill's) is parsed by Arrow's C++ CSV reader into typed columns (categorical
variables as integers, the others as floats). Every check is then one array operation over the whole batch and
the columns it is about, using a `Plan` of the codebook (labelled and missing codes as a dense lookup table, missing
ranges, column positions) built once per codebook. Nothing loops over the 1,118 variables per batch in Python, so a
poll that finds 3 new rows costs about a millisecond here, and a backfill batch of 1,000 rows about 50 (Arrow ~25,
the checks ~8, hashing the rows ~7). A row that fails any check is set aside with every reason found; the rest of the
batch loads.
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
import pyarrow as pa
import pyarrow.csv as arrow_csv

from codebook.catalogue import Kind, VariableSpec
from ingestion import plausibility
from ingestion.layout import ANALYSIS_VARIABLES, SCORE_DOMAINS, WEIGHTS

KEY_VARIABLES = ("CNTSTUID", "CNTSCHID")
# NULL in any of these makes a row unusable: it is quarantined rather than loaded.
REQUIRED_VARIABLES = frozenset((*KEY_VARIABLES, *WEIGHTS))
# COPY's NULL, the course's text-style sources' missing value, and an empty cell (system-missing in PISA files).
NULL_MARKERS = (b"\\N", b"NA", b"")
BIGINT_LIMIT = 2.0**63
# (column, code) pairs are checked in one np.isin over keys column * CODE_SPACE + code (exact in float64).
CODE_SPACE = 1e9
# Fast path for that check: when every code of every categorical variable is an integer below this (PISA's are 0-999),
# membership is one lookup in a dense table instead of a binary search per cell.
DENSE_CODE_LIMIT = 4096


@dataclass(frozen=True)
class Plan:
    """What validation and decoding need from the codebook, as arrays. Built once per codebook (cached)."""

    names: tuple[str, ...]
    numeric: np.ndarray  # positions (in the variables) of numeric variables
    numeric_names: tuple[str, ...]
    categorical: np.ndarray  # positions within `numeric` of categorical variables
    allowed_keys: np.ndarray  # sorted column * CODE_SPACE + code for every labelled code
    # The fast path's table: accepted_table[i, code] says whether `code` is labelled or declared missing for the i-th
    # categorical variable, for codes 0 .. width - 2; the last column (False) catches every code outside that span,
    # which the slow check then judges. None when some labelled code is not a small integer.
    accepted_table: np.ndarray | None
    missing_low: np.ndarray  # per numeric variable: user-missing range (NaN when none)
    missing_high: np.ndarray
    missing_values: dict[int, np.ndarray]  # numeric position -> its discrete user-missing codes
    required: np.ndarray  # positions within `numeric` that must not be NULL
    analysis: np.ndarray  # positions within `numeric` of ANALYSIS_VARIABLES, in that order
    # The missing codes of the analysis variables alone: they are the only cells whose missing codes become NULL.
    analysis_missing_low: np.ndarray
    analysis_missing_high: np.ndarray
    analysis_missing_values: tuple[tuple[int, np.ndarray], ...]  # (position within `analysis`, codes)
    plausible_values: tuple[tuple[str, np.ndarray], ...]  # domain -> positions within `numeric` of PV1..PV10
    weights: np.ndarray  # positions within `numeric` of W_FSTUWT, W_FSTURWT1..80
    # Variables a plausibility rule bounds (ingestion/plausibility.py): positions within `numeric`, their bounds, and
    # their missing codes (a 99 of an index is missing, not out of range).
    bounded: np.ndarray
    bounded_low: np.ndarray
    bounded_high: np.ndarray
    bounded_missing: tuple[np.ndarray, np.ndarray, tuple[tuple[int, np.ndarray], ...]]
    cnt: int  # position (in the variables) of CNT
    cntstuid: int  # positions within `numeric`
    cntschid: int


_plans: dict[int, tuple[Sequence[VariableSpec], Plan]] = {}


def plan_for(variables: Sequence[VariableSpec]) -> Plan:
    """The plan of a codebook, cached by the identity of its variables list (the codebook selectors hand out the same
    list until a label changes), so a batch does not even hash 1,118 specs."""
    cached = _plans.get(id(variables))
    if cached is not None and cached[0] is variables:
        return cached[1]
    plan = _build_plan(variables)
    _plans.clear()
    _plans[id(variables)] = (variables, plan)
    return plan


def _build_plan(variables: Sequence[VariableSpec]) -> Plan:
    names = tuple(spec.name for spec in variables)
    numeric = [i for i, spec in enumerate(variables) if not spec.is_text]
    numeric_names = tuple(names[i] for i in numeric)
    position = {name: k for k, name in enumerate(numeric_names)}
    categorical, keys = [], []
    low, high = np.full(len(numeric), np.nan), np.full(len(numeric), np.nan)
    discrete = []
    for k, i in enumerate(numeric):
        spec = variables[i]
        if spec.na_range is not None:
            low[k], high[k] = spec.na_range
        if spec.na_values:
            discrete.append((k, np.array(spec.na_values, dtype=np.float64)))
        if spec.kind == Kind.CATEGORICAL:
            categorical.append(k)
            keys.extend(k * CODE_SPACE + code for code in spec.value_labels)
    allowed_keys = np.unique(np.array(keys, dtype=np.float64))
    analysis = np.array([position[name] for name in ANALYSIS_VARIABLES])
    discrete_by_position = dict(discrete)
    bounds = {k: plausibility.value_bounds(variables[i].name, variables[i].kind, variables[i].format_spss)
              for k, i in enumerate(numeric)}
    bounded = np.array([k for k, bound in bounds.items() if bound is not None], dtype=np.int64)
    return Plan(
        names=names,
        numeric=np.array(numeric),
        numeric_names=numeric_names,
        categorical=np.array(categorical, dtype=np.int64),
        allowed_keys=allowed_keys,
        accepted_table=_accepted_code_table(allowed_keys, categorical, low, high, discrete_by_position),
        missing_low=low,
        missing_high=high,
        missing_values=discrete_by_position,
        required=np.array(sorted(position[name] for name in REQUIRED_VARIABLES)),
        analysis=analysis,
        analysis_missing_low=low[analysis],
        analysis_missing_high=high[analysis],
        analysis_missing_values=tuple((j, discrete_by_position[int(k)]) for j, k in enumerate(analysis)
                                      if int(k) in discrete_by_position),
        plausible_values=tuple((domain, np.array([position[f"PV{m}{domain}"] for m in range(1, 11)]))
                               for domain in SCORE_DOMAINS),
        weights=np.array([position[name] for name in WEIGHTS]),
        bounded=bounded,
        bounded_low=np.array([bounds[int(k)][0] for k in bounded]),
        bounded_high=np.array([bounds[int(k)][1] for k in bounded]),
        bounded_missing=(low[bounded], high[bounded],
                         tuple((j, discrete_by_position[int(k)]) for j, k in enumerate(bounded)
                               if int(k) in discrete_by_position)),
        cnt=names.index("CNT"),
        cntstuid=position["CNTSTUID"],
        cntschid=position["CNTSCHID"],
    )


def _accepted_code_table(allowed_keys: np.ndarray, categorical: Sequence[int], low: np.ndarray, high: np.ndarray,
                         discrete: dict[int, np.ndarray]) -> np.ndarray | None:
    """Plan.accepted_table, or None when some labelled code is not a small integer."""
    numeric_positions, codes = np.divmod(allowed_keys, CODE_SPACE)
    if len(codes) == 0 or codes.min() < 0 or codes.max() >= DENSE_CODE_LIMIT or np.any(codes != np.round(codes)):
        return None
    row_of = {k: i for i, k in enumerate(categorical)}
    width = int(codes.max()) + 1
    table = np.zeros((len(categorical), width + 1), dtype=bool)
    table[[row_of[int(k)] for k in numeric_positions], codes.astype(np.int64)] = True
    span = np.arange(width, dtype=np.float64)
    for i, k in enumerate(categorical):  # missing codes in the span are accepted by the table too
        if not np.isnan(low[k]):
            table[i, :-1] |= (span >= low[k]) & (span <= high[k])
        if k in discrete:
            table[i, :-1] |= np.isin(span, discrete[k])
    return table


@dataclass
class ParsedBatch:
    """A batch of source rows, parsed. Row i of every array is line i."""

    row_ids: np.ndarray  # int64
    created_at: pd.Series  # datetime64[ns, UTC]
    raw: list[bytes]  # the 1,118 values, COPY text, codebook order, UTF-8 (what is not is replaced, as U+FFFD)
    raw_md5: list[str]
    numbers: np.ndarray  # rows x numeric variables, float64, NaN for NULL, 'NA' and text
    not_numbers: np.ndarray  # rows x numeric variables: True where a cell held text that is not a number
    cnt: np.ndarray  # CNT as str, None for NULL
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


# Two ways to turn text into numbers, by batch size. NumPy's `astype` over a byte-string array costs almost nothing
# per batch but ~0.2 us per value; Arrow's CSV reader is ~6x faster per value but costs a few ms per batch for 1,120
# columns. Polls bring a handful of rows, backfills thousands: each gets the cheaper one.
PANDAS_PARSER_MIN_ROWS = 300
# Arrow reads a large batch with every numeric variable typed up front (no type inference: categorical ones int32, the
# others float64); a batch where some numeric cell holds text (or a categorical one a non-integer) fails that as a
# whole and is read again by pandas, which finds the bad cells (rare).
ARROW_PARSER = True
_ARROW_PARSE = arrow_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, double_quote=False)
# One thread: a worker process is one unit of parallelism; threads would only fight the other workers for the cores.
_ARROW_READ_THREADS = False


def _not_a_number_message(plan: Plan, k: int, text: str) -> str:
    return f"{plan.numeric_names[k]}: {text[:40]!r} is not a number"


def _parse_small(lines: Sequence[bytes], plan: Plan, problems) -> tuple[np.ndarray, ...]:
    width = len(plan.names) + 2
    split = [line.split(b"\t") for line in lines]
    for row, parts in enumerate(split):
        if len(parts) != width:  # cannot happen with COPY output; guards hand-made lines
            problems[row].append(f"expected {width} fields, got {len(parts)}")
            split[row] = (parts + [b"\\N"] * width)[:width]
    fields = np.array(split, dtype=bytes).reshape(len(lines), width)
    cells = fields[:, 2:][:, plan.numeric]
    null = (cells == NULL_MARKERS[0]) | (cells == NULL_MARKERS[1]) | (cells == NULL_MARKERS[2])
    cells = np.where(null, b"nan", cells)
    not_numbers = np.zeros(cells.shape, dtype=bool)
    try:
        numbers = cells.astype(np.float64)
    except ValueError:  # some cell holds text: find it, column by column (rare)
        numbers = np.empty(cells.shape, dtype=np.float64)
        for k in range(cells.shape[1]):
            try:
                numbers[:, k] = cells[:, k].astype(np.float64)
            except ValueError:
                for row, cell in enumerate(cells[:, k]):
                    try:
                        numbers[row, k] = float(cell)
                    except ValueError:
                        numbers[row, k] = np.nan
                        not_numbers[row, k] = True
                        problems[row].append(_not_a_number_message(plan, k, cell.decode("utf-8", "replace")))
    cnt_field = fields[:, 2 + plan.cnt]
    cnt = np.array([None if v in NULL_MARKERS else v.decode("utf-8", "replace") for v in cnt_field], dtype=object)
    return fields[:, 0].astype(np.int64), fields[:, 1].astype(str), numbers, not_numbers, cnt


@dataclass(frozen=True)
class _ArrowRead:
    """How Arrow reads a large batch for one plan."""

    convert: arrow_csv.ConvertOptions
    numeric_columns: tuple[int, ...]  # the table's column of each numeric variable


def _arrow_read(plan: Plan) -> _ArrowRead:
    types = {name: pa.float64() for name in plan.numeric_names}
    if plan.accepted_table is not None:
        # Fast path: when every code of the codebook is a small integer, categorical variables are read as integers,
        # which Arrow parses faster than floats (and hands over as float64 all the same). A cell that is not an
        # integer (1.5, 1e40) fails the batch's read like text does, and pandas' fallback gives it its verdict.
        types.update({plan.numeric_names[k]: pa.int32() for k in plan.categorical})
    types.update({"__id": pa.int64(), "__created_at": pa.string()})
    types.update({name: pa.string() for name in plan.names if name not in types})
    convert = arrow_csv.ConvertOptions(column_types=types, null_values=[m.decode() for m in NULL_MARKERS],
                                       strings_can_be_null=True, quoted_strings_can_be_null=False)
    offset = 2  # __id, __created_at
    return _ArrowRead(convert=convert, numeric_columns=tuple(offset + int(position) for position in plan.numeric))


_arrow_reads: dict[int, tuple[Plan, _ArrowRead]] = {}


def _parse_arrow(lines: Sequence[bytes], plan: Plan, problems) -> tuple[np.ndarray, ...] | None:
    """The fast parser of large batches; None when some numeric cell is not a number (the caller falls back)."""
    cached = _arrow_reads.get(id(plan))
    if cached is None or cached[0] is not plan:
        _arrow_reads.clear()
        cached = _arrow_reads[id(plan)] = (plan, _arrow_read(plan))
    read = cached[1]
    data = b"\n".join(lines)
    try:
        table = arrow_csv.read_csv(
            pa.py_buffer(data),
            read_options=arrow_csv.ReadOptions(column_names=["__id", "__created_at", *plan.names],
                                               use_threads=_ARROW_READ_THREADS, block_size=len(data) + 1),
            parse_options=_ARROW_PARSE, convert_options=read.convert)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if table.num_rows != len(lines):
        return None
    # Filled variable by variable, each into contiguous memory, and handed on transposed (column-major): the same
    # array for every caller, at 60 % of the cost of writing each column across the rows of a row-major one.
    by_variable = np.empty((len(plan.numeric_names), len(lines)), dtype=np.float64)
    columns = table.columns
    for k, column in enumerate(read.numeric_columns):
        by_variable[k] = columns[column].to_numpy()  # NULL comes out as NaN
    numbers = by_variable.T
    cnt = np.array(table.column(2 + plan.cnt).to_pylist(), dtype=object)
    created = np.array(table.column(1).to_pylist(), dtype=object)
    return (table.column(0).to_numpy(), created.astype(str), numbers, np.zeros(numbers.shape, dtype=bool), cnt)


def _parse_large(lines: Sequence[bytes], plan: Plan, problems) -> tuple[np.ndarray, ...]:
    if ARROW_PARSER:
        parsed = _parse_arrow(lines, plan, problems)
        if parsed is not None:
            return parsed
    return _parse_pandas(lines, plan, problems)


def _parse_pandas(lines: Sequence[bytes], plan: Plan, problems) -> tuple[np.ndarray, ...]:
    names = ["__id", "__created_at", *plan.names]
    frame = pd.read_csv(
        io.BytesIO(b"\n".join(lines)), sep="\t", header=None, names=names, quoting=csv.QUOTE_NONE,
        na_values=[marker.decode() for marker in NULL_MARKERS], keep_default_na=False, low_memory=False,
        dtype={"__created_at": str, "CNT": str}, encoding="utf-8", encoding_errors="replace",
    )
    numeric = frame[list(plan.numeric_names)]
    not_numbers = np.zeros(numeric.shape, dtype=bool)
    text_columns = [k for k, dtype in enumerate(numeric.dtypes) if not pd.api.types.is_numeric_dtype(dtype)]
    for k in text_columns:  # a column pandas could not read as numbers holds text somewhere (rare)
        column = numeric.iloc[:, k]
        coerced = pd.to_numeric(column, errors="coerce")
        bad = (coerced.isna() & column.notna()).to_numpy()
        not_numbers[:, k] = bad
        for row in np.flatnonzero(bad):
            problems[int(row)].append(_not_a_number_message(plan, k, str(column.iloc[row])))
        numeric = numeric.assign(**{plan.numeric_names[k]: coerced})
    numbers = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    cnt = frame["CNT"].astype(object).where(frame["CNT"].notna(), None).to_numpy()
    return frame["__id"].to_numpy(dtype=np.int64), frame["__created_at"].to_numpy(dtype=str), numbers, \
        not_numbers, cnt


def stored_raw(values: bytes) -> bytes:
    """The 1,118 values of a source line (after its id and created_at) as the warehouse stores them in `raw`: the same
    bytes, with whatever is not UTF-8 replaced by U+FFFD. Fast path: raw stays bytes from the source to the binary
    COPY, and only a line with non-ASCII bytes pays for a check."""
    if values.isascii():
        return values
    try:
        values.decode("utf-8")
        return values
    except UnicodeDecodeError:
        return values.decode("utf-8", "replace").encode()


def line_digest(line: bytes) -> tuple[int, str]:
    """(row id, MD5 of the 1,118 values as stored) of one source line: what `raw_md5` holds for a loaded row."""
    row_id, _, rest = line.partition(b"\t")
    values = rest.split(b"\t", 1)[1] if b"\t" in rest else b""
    return int(row_id), hashlib.md5(stored_raw(values)).hexdigest()


def parse_lines(lines: Sequence[bytes], variables: Sequence[VariableSpec]) -> ParsedBatch:
    plan = plan_for(variables)
    problems: dict[int, list[str]] = defaultdict(list)
    parse = _parse_large if len(lines) >= PANDAS_PARSER_MIN_ROWS else _parse_small
    row_ids, created_text, numbers, not_numbers, cnt = parse(lines, plan, problems)
    raw = [stored_raw(line.split(b"\t", 2)[2]) for line in lines]
    return ParsedBatch(
        row_ids=row_ids,
        created_at=pd.to_datetime(pd.Series(created_text), utc=True, format="ISO8601", errors="coerce"),
        raw=raw, raw_md5=[hashlib.md5(text).hexdigest() for text in raw],
        numbers=numbers, not_numbers=not_numbers, cnt=cnt, problems=problems,
    )


def _missing_codes(values: np.ndarray, low: np.ndarray, high: np.ndarray,
                   discrete: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """Cells holding a user-missing code (95-99, 99999997, ...): `low`, `high` and `discrete` describe the columns of
    `values`, as Plan.analysis_missing_* do."""
    with np.errstate(invalid="ignore"):
        missing = (values >= low) & (values <= high)
    for k, codes in discrete:
        missing[:, k] |= np.isin(values[:, k], codes)
    return missing


def _categorical_not_accepted(codes: np.ndarray, plan: Plan) -> np.ndarray:
    """Cells (rows x categorical variables) that hold a value which is neither one of the variable's labelled codes
    nor one of its missing codes. NULL is accepted."""
    table = plan.accepted_table
    with np.errstate(invalid="ignore"):
        if table is not None:
            # Fast path: one gather from the dense table. A code beyond the table's span, and a negative one (a huge
            # number as unsigned), lands on the False last column; one that is not an integer (or NULL) fails the
            # comparison with its integer part.
            width = table.shape[1]
            integers = codes.astype(np.int32)
            index = np.minimum(integers.view(np.uint32), width - 1)
            index += np.arange(0, table.size, width, dtype=np.uint32)  # row i's offset
            accepted = table.ravel()[index] & (integers == codes)
        else:
            # Membership by binary search in the sorted allowed keys (np.isin would sort the whole batch first).
            keys = plan.categorical * CODE_SPACE + codes
            found = np.searchsorted(plan.allowed_keys, keys).clip(max=len(plan.allowed_keys) - 1)
            accepted = plan.allowed_keys[found] == keys
    suspects = ~(accepted | np.isnan(codes))
    if not suspects.any():
        return suspects
    # Slow path, for the few cells the table cannot judge: missing codes beyond its span.
    rows, columns = np.nonzero(suspects)
    positions = plan.categorical[columns]
    values = codes[rows, columns]
    with np.errstate(invalid="ignore"):
        declared = (values >= plan.missing_low[positions]) & (values <= plan.missing_high[positions])
    for k in np.unique(positions):
        missing_codes = plan.missing_values.get(int(k))
        if missing_codes is not None:
            of_k = positions == k
            declared[of_k] |= np.isin(values[of_k], missing_codes)
    suspects[rows[declared], columns[declared]] = False
    return suspects


def validate(batch: ParsedBatch, plan: Plan, *, country: str) -> np.ndarray:
    """Record every problem of every row in `batch.problems`; returns where the analysis variables hold user-missing
    codes (rows x ANALYSIS_VARIABLES). Each check reads only the columns it is about."""
    problems = batch.problems
    numbers = batch.numbers
    for row in np.flatnonzero(batch.created_at.isna().to_numpy()):
        problems[int(row)].append("created_at is NULL or not a timestamp")
    for row, cnt in enumerate(batch.cnt):
        if cnt is None:
            problems[row].append("key column CNT is NULL")
        elif cnt != country:
            problems[row].append(f"CNT {cnt!r} does not match the source's country {country}")
    # NULL where a value is required (text that is not a number was reported already, as such).
    required_null = np.isnan(numbers[:, plan.required]) & ~batch.not_numbers[:, plan.required]
    for row, k in zip(*np.nonzero(required_null)):
        name = plan.numeric_names[plan.required[k]]
        problems[int(row)].append(f"key column {name} is NULL" if name in KEY_VARIABLES
                                  else f"{name} is NULL: a response without weights cannot be analysed")
    # A key is a whole number within bigint: a CNTSTUID of 12.5 names no student, and both paths of the load must store
    # the same integer.
    for name, k in (("CNTSTUID", plan.cntstuid), ("CNTSCHID", plan.cntschid)):
        key = numbers[:, k]
        with np.errstate(invalid="ignore"):
            not_whole = ~np.isnan(key) & (key != np.floor(key))
            too_large = ~not_whole & (np.abs(key) >= BIGINT_LIMIT)
        for row in np.flatnonzero(not_whole):
            problems[int(row)].append(f"key column {name}: {float(key[row])!r} is not a whole number")
        for row in np.flatnonzero(too_large):
            problems[int(row)].append(f"key column {name}: {float(key[row])!r} is beyond the range of a key (bigint)")
    # A categorical value must be one of its variable's codes (labelled, or declared missing).
    codes = numbers[:, plan.categorical]
    for row, k in zip(*np.nonzero(_categorical_not_accepted(codes, plan))):
        name = plan.numeric_names[plan.categorical[k]]
        problems[int(row)].append(f"{name}: {codes[row, k]:g} is not a code of this variable")
    # A student has all ten plausible values of a domain or none (the estimators average over all ten).
    for domain, columns in plan.plausible_values:
        present = (~np.isnan(numbers[:, columns])).sum(axis=1)
        for row in np.flatnonzero((present > 0) & (present < len(columns))):
            problems[int(row)].append(f"PV1{domain}..PV10{domain}: only {present[row]} of 10 present")
    _check_plausibility(numbers, plan, problems)
    return _missing_codes(numbers[:, plan.analysis], plan.analysis_missing_low, plan.analysis_missing_high,
                          plan.analysis_missing_values)


def _check_plausibility(numbers: np.ndarray, plan: Plan, problems) -> None:
    """The rules of ingestion/plausibility.py: weights, plausible values, bounded indices."""
    for row, reasons in plausibility.weight_problems(numbers[:, plan.weights]).items():
        problems[row].extend(reasons)
    for domain, columns in plan.plausible_values:
        for row, reason in plausibility.plausible_value_problems(domain, numbers[:, columns]).items():
            problems[row].append(reason)
    if len(plan.bounded):
        values = numbers[:, plan.bounded]
        missing = _missing_codes(values, *plan.bounded_missing)
        names = [plan.numeric_names[int(k)] for k in plan.bounded]
        for row, reason in plausibility.bounded_problems(names, values, plan.bounded_low, plan.bounded_high, missing):
            problems[row].append(reason)


def _key_text(value: float) -> str:
    """A key as the quarantine shows it: 1002 for 1002.0, but 1002.5 as it is (not rounded into another student)."""
    if np.isnan(value):
        return ""
    return f"{value:.0f}" if value == np.floor(value) and abs(value) < BIGINT_LIMIT else repr(float(value))


def transform(lines: Sequence[bytes], variables: Sequence[VariableSpec], *, country: str) -> Transformed:
    plan = plan_for(variables)
    batch = parse_lines(lines, variables)
    missing = validate(batch, plan, country=country)

    ok = np.ones(len(batch.row_ids), dtype=bool)
    ok[list(batch.problems)] = False
    cntstuid_all = batch.numbers[:, plan.cntstuid]
    quarantined = [
        (int(batch.row_ids[i]), _key_text(cntstuid_all[i]), reasons, batch.raw[i].decode())
        for i, reasons in sorted(batch.problems.items())
    ]
    # Duplicate CNTSTUIDs inside the batch: the latest (created_at, id) wins, the others are recorded.
    order = np.lexsort((batch.row_ids, batch.created_at.to_numpy(dtype="int64", na_value=0), cntstuid_all))
    duplicates: list[Duplicate] = []
    latest_by_student: dict[int, int] = {}
    for i in order:  # ascending, so the last one seen per CNTSTUID is the latest
        if not ok[i]:
            continue
        student = int(cntstuid_all[i])
        if student in latest_by_student:
            earlier = latest_by_student[student]
            duplicates.append(Duplicate(student, int(batch.row_ids[i]), int(batch.row_ids[earlier])))
            ok[earlier] = False
        latest_by_student[student] = i
    good_index = np.flatnonzero(ok)

    analysis = batch.numbers[np.ix_(good_index, plan.analysis)]
    analysis[missing[good_index]] = np.nan  # a 99 never enters an average
    return Transformed(
        good=batch,
        good_index=good_index,
        quarantined=quarantined,
        duplicates=duplicates,
        cntstuid=cntstuid_all[good_index].astype(np.int64),
        cntschid=batch.numbers[good_index, plan.cntschid],
        analysis=analysis,
    )

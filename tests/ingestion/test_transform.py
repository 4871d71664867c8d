"""transform(): the same verdicts and values whichever parser a batch's size picks."""

import numpy as np
import pytest

from codebook.catalogue import read_codebook_csv
from ingestion import transform as transform_module
from ingestion.extract import escape_copy_text
from ingestion.transform import transform
from tests.conftest import codebook_csv_path
from tests.ingestion.factories import sample_records, typed_value


@pytest.fixture(scope="module")
def variables():
    return read_codebook_csv(codebook_csv_path())


def line(variables, row_id: int, overrides: dict) -> bytes:
    record = sample_records()[row_id % len(sample_records())]
    values = {spec.name: typed_value(spec, record.get(spec.name, "")) for spec in variables}
    values.update({"CNT": "ALB", "CNTSTUID": 1000 + row_id, **overrides})
    fields = [str(row_id), "2026-11-25 10:00:00+00", *(escape_copy_text(values[s.name]) for s in variables)]
    return "\t".join(fields).encode()


PARSERS = ["numpy parser (small batches)", "arrow parser (large batches)", "pandas parser (large, text in numbers)"]


def use_parser(monkeypatch, parser: str) -> None:
    monkeypatch.setattr(transform_module, "PANDAS_PARSER_MIN_ROWS", 10**9 if parser.startswith("numpy") else 0)
    monkeypatch.setattr(transform_module, "ARROW_PARSER", parser.startswith("arrow"))


@pytest.fixture(params=PARSERS)
def parser(request, monkeypatch):
    use_parser(monkeypatch, request.param)
    return request.param


def test_bad_rows_are_set_aside_with_their_reasons_and_good_rows_decoded(variables, parser):
    lines = [
        line(variables, 1, {}),
        line(variables, 2, {"ESCS": "abc"}),
        line(variables, 3, {"CNTSTUID": None}),
        line(variables, 4, {"CNT": "FRA"}),
        line(variables, 5, {"PV3READ": None}),
        line(variables, 6, {"ST004D01T": 3}),
        line(variables, 7, {"W_FSTURWT17": None}),
        line(variables, 8, {"ESCS": 99.0, "TMINS": 99999997, "ST004D01T": 9}),
        line(variables, 9, {"ESCS": "NA"}),
    ]
    result = transform(lines, variables, country="ALB")

    reasons = {row_id: problems for row_id, _, problems, _ in result.quarantined}
    assert reasons == {
        2: ["ESCS: 'abc' is not a number"],
        3: ["key column CNTSTUID is NULL"],
        4: ["CNT 'FRA' does not match the source's country ALB"],
        5: ["PV1READ..PV10READ: only 9 of 10 present"],
        6: ["ST004D01T: 3 is not a code of this variable"],
        7: ["W_FSTURWT17 is NULL: a response without weights cannot be analysed"],
    }
    assert list(result.good.row_ids[result.good_index]) == [1, 8, 9]
    from ingestion.layout import ANALYSIS_VARIABLES

    column = {name: j for j, name in enumerate(ANALYSIS_VARIABLES)}
    decoded = result.analysis[1]
    assert np.isnan(decoded[column["ESCS"]]) and np.isnan(decoded[column["TMINS"]])
    assert np.isnan(decoded[column["ST004D01T"]])  # 9 = no response: missing, never a 9 in an average
    assert np.isnan(result.analysis[2][column["ESCS"]])
    assert list(result.cntstuid) == [1001, 1008, 1009]


@pytest.mark.parametrize("parser", PARSERS[1:])
def test_every_parser_reads_the_same_numbers(variables, monkeypatch, parser):
    lines = [line(variables, i, {}) for i in range(1, 40)]
    use_parser(monkeypatch, PARSERS[0])
    small = transform(lines, variables, country="ALB")
    use_parser(monkeypatch, parser)
    large = transform(lines, variables, country="ALB")
    assert np.array_equal(small.good.numbers, large.good.numbers, equal_nan=True)
    assert np.array_equal(small.analysis, large.analysis, equal_nan=True)
    assert small.good.raw == large.good.raw
    assert list(small.good.row_ids) == list(large.good.row_ids)
    assert small.good.created_at.equals(large.good.created_at)


def test_a_batch_with_text_in_a_number_falls_back_from_arrow_and_still_quarantines_only_that_row(variables, monkeypatch):
    use_parser(monkeypatch, PARSERS[1])
    lines = [line(variables, i, {}) for i in range(1, 20)] + [line(variables, 20, {"ESCS": "abc"})]
    result = transform(lines, variables, country="ALB")
    assert [(row_id, reasons) for row_id, _, reasons, _ in result.quarantined] == [(20, ["ESCS: 'abc' is not a number"])]
    assert len(result.good_index) == 19


def _is_a_code_of(spec, value) -> bool:
    """The rule, written out: a categorical value is one of its labelled codes or of its declared missing codes."""
    if value in spec.value_labels or value in spec.na_values:
        return True
    return spec.na_range is not None and spec.na_range[0] <= value <= spec.na_range[1]


# ST003D02T is given missing codes beyond any labelled code (PISA's own are all below 1,000): the dense table cannot
# answer for them, the slow path must.
CODE_CASES = [("ST004D01T", value) for value in (1, 2, 3, 6, 7, 9, 1.5, -1, 0)] + [
    ("ST003D02T", value) for value in (12, 13, 96, 97, 7777, 7778, 9994, 9995, 9997, 9999, 10000, 1e10, 4294967297,
                                       -4294967295, float("inf"))]


@pytest.mark.parametrize("table", ["dense table", "no table (binary search)"])
def test_a_categorical_value_must_be_a_labelled_or_missing_code(variables, parser, table, monkeypatch):
    from dataclasses import replace

    variables = [replace(spec, na_range=(9995.0, 9999.0), na_values=(7777.0,)) if spec.name == "ST003D02T" else spec
                 for spec in variables]
    plan = transform_module.plan_for(variables)
    assert plan.accepted_table is not None  # PISA's codes are small integers: the fast path is the one in use
    if table.startswith("no table"):
        monkeypatch.setattr(transform_module, "plan_for", lambda _: replace(plan, accepted_table=None))
    lines = [line(variables, i, {name: value}) for i, (name, value) in enumerate(CODE_CASES, start=1)]
    result = transform(lines, variables, country="ALB")

    specs = {spec.name: spec for spec in variables}
    expected = {i: [f"{name}: {value:g} is not a code of this variable"]
                for i, (name, value) in enumerate(CODE_CASES, start=1) if not _is_a_code_of(specs[name], value)}
    assert {row_id: reasons for row_id, _, reasons, _ in result.quarantined} == expected
    assert set(expected) == {3, 7, 8, 9, 11, 12, 15, 16, 20, 21, 22, 23, 24}  # the rule, checked by hand


def test_a_clean_large_batch_is_read_by_arrow_without_falling_back(variables):
    # Categorical variables are read as integers: the sample's codes, missing codes and NULLs all pass that read.
    plan = transform_module.plan_for(variables)
    lines = [line(variables, i, {}) for i in range(1, 40)] + [line(variables, 40, {"ST004D01T": None, "ESCS": None})]
    assert transform_module._parse_arrow(lines, plan, {}) is not None


def test_a_large_batch_with_a_code_that_is_not_an_integer_still_gets_its_verdict(variables, monkeypatch):
    # Arrow reads categorical variables as integers: 1.5 fails that read, and the fallback must still judge the cell.
    use_parser(monkeypatch, PARSERS[1])
    lines = [line(variables, i, {}) for i in range(1, 20)] + [line(variables, 20, {"ST004D01T": 1.5})]
    result = transform(lines, variables, country="ALB")
    assert [(row_id, reasons) for row_id, _, reasons, _ in result.quarantined] == [
        (20, ["ST004D01T: 1.5 is not a code of this variable"])]
    assert len(result.good_index) == 19


def test_a_key_that_is_not_a_whole_number_is_quarantined(variables, parser):
    lines = [line(variables, 1, {}), line(variables, 2, {"CNTSTUID": 80012345.5}),
             line(variables, 3, {"CNTSCHID": 1e30}), line(variables, 4, {"CNTSTUID": "80012346.0"})]
    result = transform(lines, variables, country="ALB")
    reasons = {row_id: problems for row_id, _, problems, _ in result.quarantined}
    assert reasons == {2: ["key column CNTSTUID: 80012345.5 is not a whole number"],
                       3: ["key column CNTSCHID: 1e+30 is beyond the range of a key (bigint)"]}
    assert {row_id: cntstuid for row_id, cntstuid, _, _ in result.quarantined}[2] == "80012345.5"
    assert sorted(result.good.row_ids[result.good_index].tolist()) == [1, 4]  # 80012346.0 is the student 80012346
    assert 80012346 in result.cntstuid.tolist()


def test_raw_keeps_text_beyond_ascii_and_replaces_what_is_not_utf8(variables, parser):
    import hashlib

    stratum = next(k for k, spec in enumerate(variables) if spec.name == "STRATUM")
    good = line(variables, 1, {"STRATUM": "ALB0203 Zürich"})
    broken = line(variables, 2, {"STRATUM": "ALB0203 Zürich"}).replace("Zürich".encode(), b"Z\xfcrich")
    result = transform([good, broken], variables, country="ALB")
    raw = result.good.raw
    assert raw[0] == good.split(b"\t", 2)[2]  # valid UTF-8 is kept byte for byte
    assert raw[0].split(b"\t")[stratum] == "ALB0203 Zürich".encode()
    assert raw[1].split(b"\t")[stratum] == "ALB0203 Z\ufffdrich".encode()
    # The hash is that of the text as the warehouse stores it (what verification recomputes with md5(raw) in SQL).
    stored_text = line(variables, 2, {"STRATUM": "ALB0203 Zürich"}).split(b"\t", 2)[2].decode().replace(
        "Zürich", "Z\ufffdrich")
    assert result.good.raw_md5 == [hashlib.md5(good.split(b"\t", 2)[2]).hexdigest(),
                                   hashlib.md5(stored_text.encode()).hexdigest()]

"""transform(): the same verdicts and values whichever parser a batch's size picks."""

import numpy as np
import pytest

from codebook.catalogue import read_codebook_csv
from ingestion import transform as transform_module
from ingestion.extract import escape_copy_text
from ingestion.transform import transform
from tests.conftest import shared_path
from tests.ingestion.factories import sample_records, typed_value


@pytest.fixture(scope="module")
def variables():
    return read_codebook_csv(shared_path("pisa2018", "codebook.csv"))


def line(variables, row_id: int, overrides: dict) -> bytes:
    record = sample_records()[row_id % len(sample_records())]
    values = {spec.name: typed_value(spec, record.get(spec.name, "")) for spec in variables}
    values.update({"CNT": "ALB", "CNTSTUID": 1000 + row_id, **overrides})
    fields = [str(row_id), "2026-11-25 10:00:00+00", *(escape_copy_text(values[s.name]) for s in variables)]
    return "\t".join(fields).encode()


@pytest.fixture(params=["numpy parser (small batches)", "pandas parser (large batches)"])
def parser(request, monkeypatch):
    threshold = 10**9 if request.param.startswith("numpy") else 0
    monkeypatch.setattr(transform_module, "PANDAS_PARSER_MIN_ROWS", threshold)
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


def test_both_parsers_read_the_same_numbers(variables, monkeypatch):
    lines = [line(variables, i, {}) for i in range(1, 40)]
    monkeypatch.setattr(transform_module, "PANDAS_PARSER_MIN_ROWS", 10**9)
    small = transform(lines, variables, country="ALB")
    monkeypatch.setattr(transform_module, "PANDAS_PARSER_MIN_ROWS", 0)
    large = transform(lines, variables, country="ALB")
    assert np.array_equal(small.good.numbers, large.good.numbers, equal_nan=True)
    assert np.array_equal(small.analysis, large.analysis, equal_nan=True)
    assert small.good.raw == large.good.raw

"""Plausibility rules at the door: a row whose weights, scores or indices no PISA response can hold is quarantined
with its reason; the rest of its batch loads (ingestion/plausibility.py, docs/plausibility.md)."""

import re
from pathlib import Path

import pytest

from codebook.catalogue import read_codebook_csv
from ingestion import plausibility
from ingestion.transform import transform
from tests.conftest import codebook_csv_path
from tests.ingestion.test_transform import PARSERS, line, use_parser


@pytest.fixture(scope="module")
def variables():
    return read_codebook_csv(codebook_csv_path())


@pytest.fixture(params=PARSERS[:2])
def parser(request, monkeypatch):
    use_parser(monkeypatch, request.param)


def reasons_of(variables, overrides_by_row: dict[int, dict]) -> dict[int, list[str]]:
    lines = [line(variables, row, overrides) for row, overrides in overrides_by_row.items()]
    result = transform(lines, variables, country="ALB")
    return {row_id: reasons for row_id, _, reasons, _ in result.quarantined}


def test_the_shared_sample_breaks_no_rule(variables, parser):
    # Every record of the real-shaped sample (1,269 students of three countries) is a plausible response.
    lines = [line(variables, row, {}) for row in range(1269)]
    assert transform(lines, variables, country="ALB").quarantined == []


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"W_FSTUWT": -5}, r"W_FSTUWT: -5 is not a plausible final weight"),
    ({"W_FSTUWT": 0}, r"W_FSTUWT: 0 is not a plausible final weight"),
    ({"W_FSTUWT": 1e12}, r"W_FSTUWT: 1e\+12 is not a plausible final weight"),
    ({"W_FSTUWT": float("inf")}, r"W_FSTUWT: inf is not a plausible final weight"),
    ({"W_FSTURWT7": -1}, r"W_FSTURWT1..80: 1 replicate weight\(s\) implausible, e.g. W_FSTURWT7 = -1"),
    ({"W_FSTURWT3": 1e9, "W_FSTURWT9": 1e9}, r"2 replicate weight\(s\) implausible, e.g. W_FSTURWT3 = 1e\+09"),
    ({f"PV{m}MATH": 1e9 for m in range(1, 11)}, r"PV1MATH: 1e\+09 is outside the PISA scale's plausible range"),
    ({"PV4READ": -3}, r"PV4READ: -3 is outside"),
    ({"ESCS": 42.5}, r"ESCS: 42.5 is outside its plausible range \[-10, 10\]"),
    ({"BELONG": -11}, r"BELONG: -11 is outside its plausible range"),
    ({"TMINS": 20000}, r"TMINS: 20000 is outside its plausible range \[0, 10080\]"),
])
def test_an_implausible_value_quarantines_its_row_with_the_reason(variables, parser, overrides, expected):
    reasons = reasons_of(variables, {1: {}, 2: overrides, 3: {}})
    assert list(reasons) == [2]
    assert len(reasons[2]) == 1 and re.search(expected, reasons[2][0]), reasons[2]


def test_a_replicate_weight_of_zero_and_missing_codes_of_indices_are_plausible(variables, parser):
    # Replicate weights may be 0 (a replicate drops a school); 95-99 of an index and 99999997 of TMINS are missing.
    reasons = reasons_of(variables, {1: {"W_FSTURWT5": 0}, 2: {"ESCS": 99, "BELONG": 97, "TMINS": 99999997}})
    assert reasons == {}


def test_a_replicate_weight_is_judged_against_its_final_weight(variables, parser):
    record_weight = 10.0
    # The other 79 replicates equal the final weight, so that only W_FSTURWT1 is judged.
    weights = {"W_FSTUWT": record_weight, **{f"W_FSTURWT{g}": record_weight for g in range(2, 81)}}
    reasons = reasons_of(variables, {
        1: {**weights, "W_FSTURWT1": plausibility.REPLICATE_TO_FINAL_MAX * record_weight},
        2: {**weights, "W_FSTURWT1": plausibility.REPLICATE_TO_FINAL_MAX * record_weight * 1.01},
    })
    assert list(reasons) == [2]


def test_the_rules_are_bounded_indices_of_the_codebook(variables):
    bounded = [spec.name for spec in variables
               if plausibility.value_bounds(spec.name, spec.kind, spec.format_spss) is not None]
    assert {"ESCS", "BELONG", "TMINS", "HOMEPOS"} <= set(bounded)
    assert not {"W_FSTUWT", "PV1READ", "CNTSTUID", "ST004D01T"} & set(bounded)
    assert len(bounded) == 68  # the 67 indices of format F7.4, and TMINS


def test_every_rule_is_in_the_docs_table_with_its_bound_and_source():
    text = (Path(__file__).resolve().parents[2] / "docs" / "plausibility.md").read_text()
    rows = [cells for cells in (row.split("|")[1:-1] for row in text.splitlines() if row.startswith("| `"))]
    documented = {cells[0].strip().strip("`"): [c.strip() for c in cells[1:]] for cells in rows}
    assert set(documented) == {rule.code for rule in plausibility.RULES}
    for rule in plausibility.RULES:
        assert documented[rule.code] == [rule.applies_to, rule.requirement, rule.source]
    assert f"`{plausibility.RULES_VERSION}`" in text


# --- At the door of a real source, and when a rule changes ------------------------------------------------------

def test_a_hostile_row_is_quarantined_and_the_rest_of_the_batch_loads(source_db):
    from ingestion.models import QuarantinedRow, Student
    from ingestion.pipeline import source_sync

    col = source_db("COL")
    good = col.insert_students(5)
    [negative] = col.insert([col.student(w_fstuwt=-5)])
    [huge] = col.insert([col.student(w_fstuwt=1e12)])
    [scores] = col.insert([col.student(**{f"pv{m}math": 1e9 for m in range(1, 11)})])
    result = source_sync(source_id=col.source.pk)
    assert result.loaded == 5 and result.quarantined == 3
    assert set(Student.objects.filter(source=col.source).values_list("source_row_id", flat=True)) == set(good)
    reasons = dict(QuarantinedRow.objects.filter(source=col.source).values_list("source_row_id", "reasons"))
    assert set(reasons) == {negative, huge, scores}
    assert "W_FSTUWT: -5 is not a plausible final weight" in reasons[negative][0]
    assert "PV1MATH: 1e+09" in reasons[scores][0]


def test_a_rule_change_checks_the_stored_rows_again_in_both_directions(source_db, monkeypatch):
    from ingestion import pipeline
    from ingestion.models import QuarantinedRow, SourceState, Student
    from ingestion.pipeline import source_sync

    col = source_db("COL")
    light = col.insert_students(3, w_fstuwt=50.0, **{f"w_fsturwt{g}": 50.0 for g in range(1, 81)})
    heavy = col.insert_students(2, w_fstuwt=500.0, **{f"w_fsturwt{g}": 500.0 for g in range(1, 81)})
    source_sync(source_id=col.source.pk)
    assert Student.objects.filter(source=col.source).count() == 5
    assert SourceState.objects.get(source=col.source).rules_version == plausibility.RULES_VERSION

    # A stricter rule: the heavy students leave the warehouse for the quarantine, without any change in the source.
    monkeypatch.setattr(plausibility, "FINAL_WEIGHT_MAX", 100.0)
    monkeypatch.setattr(pipeline, "RULES_VERSION", "stricter")
    result = source_sync(source_id=col.source.pk)
    assert result.quarantined == 2 and result.removed == 2
    assert set(Student.objects.filter(source=col.source).values_list("source_row_id", flat=True)) == set(light)
    assert set(QuarantinedRow.objects.filter(source=col.source).values_list("source_row_id", flat=True)) == set(heavy)
    assert SourceState.objects.get(source=col.source).rules_version == "stricter"
    assert source_sync(source_id=col.source.pk).quarantined == 0  # checked once per rule change

    # The rule relaxed again: the quarantined rows are read from the source again and load.
    monkeypatch.undo()
    result = source_sync(source_id=col.source.pk)
    assert result.loaded == 2
    assert Student.objects.filter(source=col.source).count() == 5
    assert not QuarantinedRow.objects.filter(source=col.source).exists()

"""Bad rows are quarantined with every reason while the good rows of the same batch load."""

from ingestion.models import DuplicateStudent, QuarantinedRow, SourceState, Student
from ingestion.pipeline import source_sync


def reasons_of(source, row_id) -> list[str]:
    return QuarantinedRow.objects.get(source=source, source_row_id=row_id).reasons


def test_each_kind_of_bad_row_is_quarantined_with_its_reason(source_db):
    arg = source_db("ARG", style="text")  # a text source can hold anything in any column
    good = arg.insert_students(5)
    [text_in_number] = arg.insert([arg.student(ESCS="abc")])
    [out_of_range] = arg.insert([arg.student(ST004D01T=3)])
    [null_key] = arg.insert([arg.student(CNTSTUID=None)])
    [wrong_country] = arg.insert([arg.student(CNT="FRA")])

    result = source_sync(source_id=arg.source.pk)

    assert result.loaded == 5 and result.quarantined == 4
    assert set(Student.objects.filter(source=arg.source).values_list("source_row_id", flat=True)) == set(good)
    assert reasons_of(arg.source, text_in_number) == ["ESCS: 'abc' is not a number"]
    assert reasons_of(arg.source, out_of_range) == ["ST004D01T: 3 is not a code of this variable"]
    assert reasons_of(arg.source, null_key) == ["key column CNTSTUID is NULL"]
    assert reasons_of(arg.source, wrong_country) == ["CNT 'FRA' does not match the source's country ARG"]
    assert QuarantinedRow.objects.get(source=arg.source, source_row_id=null_key).raw.count("\t") == 1117
    assert SourceState.objects.get(source=arg.source).quarantined_count == 4


def test_a_row_with_several_problems_lists_them_all(source_db):
    arg = source_db("ARG", style="text")
    [row_id] = arg.insert([arg.student(ESCS="n/a", BELONG="high", ST004D01T=4)])
    source_sync(source_id=arg.source.pk)
    assert sorted(reasons_of(arg.source, row_id)) == sorted([
        "ESCS: 'n/a' is not a number", "BELONG: 'high' is not a number",
        "ST004D01T: 4 is not a code of this variable",
    ])


def test_a_quarantined_row_fixed_in_the_source_loads_and_leaves_quarantine(source_db):
    arg = source_db("ARG", style="text")
    [row_id] = arg.insert([arg.student(ESCS="abc")])
    source_sync(source_id=arg.source.pk)
    arg.execute("UPDATE responses SET escs = '0.5' WHERE id = :id", id=row_id)
    SourceState.objects.filter(source=arg.source).update(last_reconciled_at=None)
    source_sync(source_id=arg.source.pk)
    assert not QuarantinedRow.objects.filter(source=arg.source).exists()
    assert Student.objects.get(source=arg.source, source_row_id=row_id).escs == 0.5


def test_duplicate_cntstuid_keeps_the_latest_row_and_records_the_conflict(source_db):
    alb = source_db("ALB")
    [first] = alb.insert([alb.student(CNTSTUID=777, ESCS=0.1)])
    source_sync(source_id=alb.source.pk)
    [second] = alb.insert([alb.student(CNTSTUID=777, ESCS=0.9)])
    [third, fourth] = alb.insert([alb.student(CNTSTUID=888, ESCS=0.2), alb.student(CNTSTUID=888, ESCS=0.3)])
    source_sync(source_id=alb.source.pk)

    kept_777 = Student.objects.get(country="ALB", cntstuid=777)
    kept_888 = Student.objects.get(country="ALB", cntstuid=888)
    assert (kept_777.source_row_id, kept_777.escs) == (second, 0.9)
    assert (kept_888.source_row_id, kept_888.escs) == (fourth, 0.3)
    conflicts = set(DuplicateStudent.objects.values_list("cntstuid", "kept_row_id", "superseded_row_id"))
    assert conflicts == {(777, second, first), (888, fourth, third)}
    assert source_sync(source_id=alb.source.pk).loaded == 0  # superseded rows are not loaded again

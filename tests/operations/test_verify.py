"""`manage.py verify` finds every row the warehouse lost, kept too long or holds with other values."""

import pytest
from django.core.management import CommandError, call_command

from operations import verification
from ingestion.models import QuarantinedRow, Student
from ingestion.pipeline import source_sync
from operations.verification import source_verify, sources_to_verify, verify_sources


def verified(source_database):
    return source_verify(source=source_database.source)


@pytest.fixture(params=[3, verification.VERIFY_BATCH_ROWS], ids=["steps-of-3", "default-steps"])
def batch_rows(request, monkeypatch):
    """Every test runs with the default step and with tiny steps, so that problems fall across step boundaries."""
    monkeypatch.setattr(verification, "VERIFY_BATCH_ROWS", request.param)
    return request.param


def test_a_synced_source_with_quarantined_rows_and_duplicates_verifies_clean(source_db, batch_rows, capsys):
    arg = source_db("ARG", style="text")  # all text, 'NA' for missing: the lines must compare as the typed ones do
    good = arg.insert_students(12)
    bad = arg.insert([arg.student(ESCS="abc"), arg.student(ST004D01T=3), arg.student(CNTSTUID=None)])
    [superseded] = arg.insert([arg.student(CNTSTUID=4242)])
    [kept] = arg.insert([arg.student(CNTSTUID=4242)])
    alb = source_db("ALB")
    alb.insert_students(9)
    for source in (arg, alb):
        assert source_sync(source_id=source.source.pk).error == ""

    result = verified(arg)
    assert (result.source_rows, result.loaded, result.quarantined, result.superseded) == (
        len(good) + len(bad) + 2, len(good) + 1, len(bad), 1)
    assert (result.missing, result.extra, result.differing, result.duplicated, result.error) == (0, 0, 0, 0, "")
    assert verified(alb).loaded == 9 and verified(alb).ok
    assert Student.objects.get(country="ARG", cntstuid=4242).source_row_id == kept != superseded

    call_command("verify")
    out, err = capsys.readouterr()
    assert "ARG: 17 source rows: 13 loaded, 3 quarantined, 1 superseded; 0 missing, 0 extra" in out
    assert "total: 26 source rows" in out and "verified: the warehouse matches every source" in out
    assert "verify ALB: [" in err and "verify ARG: [" in err  # one progress line per source


def test_a_row_the_warehouse_lost_or_never_loaded_is_missing(source_db, batch_rows, capsys):
    alb = source_db("ALB")
    ids = alb.insert_students(10)
    source_sync(source_id=alb.source.pk)
    Student.objects.filter(source=alb.source, source_row_id=ids[4]).delete()
    [not_loaded_yet] = alb.insert_students(1)

    result = verified(alb)

    assert (result.missing, result.loaded, result.extra, result.differing) == (2, 9, 0, 0)
    assert result.examples["missing"] == [ids[4], not_loaded_yet]
    with pytest.raises(CommandError, match="differs from the sources: 2 missing, 0 extra, 0 differing"):
        call_command("verify", source=["alb"], settle=0)
    assert f"missing source row ids (first 2): {ids[4]}, {not_loaded_yet}" in capsys.readouterr().out


def test_a_row_deleted_from_the_source_but_kept_in_the_warehouse_is_extra(source_db, batch_rows):
    alb = source_db("ALB")
    ids = alb.insert_students(8)
    [bad] = alb.insert([alb.student(ST004D01T=3)])
    source_sync(source_id=alb.source.pk)
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=[ids[0], ids[-1], bad])

    result = verified(alb)

    assert (result.extra, result.loaded, result.missing, result.quarantined) == (3, 6, 0, 0)
    assert result.examples["extra"] == [ids[0], ids[-1], bad]
    source_sync(source_id=alb.source.pk)  # the pipeline removes them, and verify agrees
    assert verified(alb).ok


def test_a_row_changed_on_either_side_is_differing(source_db, batch_rows):
    arg = source_db("ARG", style="text")
    ids = arg.insert_students(6)
    [bad] = arg.insert([arg.student(ESCS="abc")])
    source_sync(source_id=arg.source.pk)
    arg.execute("UPDATE responses SET pv1math = '123.5' WHERE id = :id", id=ids[1])  # changed in the source
    Student.objects.filter(source=arg.source, source_row_id=ids[3]).update(raw="corrupted")  # in the warehouse
    arg.execute("UPDATE responses SET escs = 'still not a number' WHERE id = :id", id=bad)  # a quarantined row

    result = verified(arg)

    assert (result.differing, result.loaded, result.quarantined, result.missing, result.extra) == (3, 4, 0, 0, 0)
    assert result.examples["differing"] == [ids[1], ids[3], bad]


def test_a_superseded_duplicate_whose_student_is_gone_is_missing(source_db, batch_rows):
    alb = source_db("ALB")
    [earlier] = alb.insert([alb.student(CNTSTUID=5151)])
    [later] = alb.insert([alb.student(CNTSTUID=5151)])
    alb.insert_students(4)
    source_sync(source_id=alb.source.pk)
    assert verified(alb).superseded == 1
    Student.objects.filter(source=alb.source, source_row_id=later).delete()

    result = verified(alb)

    assert (result.missing, result.superseded) == (2, 0)
    assert result.examples["missing"] == [earlier, later]


def test_a_row_accounted_for_twice_is_duplicated(source_db, batch_rows):
    alb = source_db("ALB")
    ids = alb.insert_students(5)
    source_sync(source_id=alb.source.pk)
    student = Student.objects.get(source=alb.source, source_row_id=ids[2])
    QuarantinedRow.objects.create(source=alb.source, source_row_id=ids[2], reasons=["test"], raw=student.raw)

    result = verified(alb)

    assert (result.duplicated, result.loaded) == (1, 4) and result.examples["duplicated"] == [ids[2]]


def test_typed_text_and_sqlite_sources_of_the_same_students_all_verify_clean(source_db):
    typed, text, lite = source_db("ALB"), source_db("ARG", style="text"), source_db("AUS", dialect="sqlite")
    students = [typed.student() for _ in range(7)]
    typed.insert(students)
    text.insert([{**s, "CNT": "ARG"} for s in students])
    lite.insert([{**s, "CNT": "AUS"} for s in students])
    for source in (typed, text, lite):
        source_sync(source_id=source.source.pk)

    results = verify_sources(sources=sources_to_verify())

    assert [(r.code, r.loaded, r.ok) for r in results.sources] == [("ALB", 7, True), ("ARG", 7, True),
                                                                  ("AUS", 7, True)]
    assert results.ok and results.total.loaded == 21


def test_an_unreadable_source_fails_verification_with_its_error(source_db):
    alb = source_db("ALB")
    alb.insert_students(3)
    source_sync(source_id=alb.source.pk)
    alb.source.url = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    alb.source.save()

    result = verified(alb)

    assert not result.ok and "OperationalError" in result.error
    with pytest.raises(CommandError, match="1 source\\(s\\) could not be read: ALB"):
        call_command("verify")
    with pytest.raises(CommandError, match="unknown source\\(s\\): XYZ"):
        call_command("verify", source=["XYZ"])


def test_an_emptied_source_shows_every_loaded_row_as_extra(source_db):
    alb = source_db("ALB")
    ids = alb.insert_students(7)
    source_sync(source_id=alb.source.pk)
    alb.execute("TRUNCATE responses")

    result = verified(alb)

    assert (result.source_rows, result.extra, result.loaded) == (0, 7, 0)
    assert result.examples["extra"] == ids


def test_no_step_holds_more_than_the_batch_size_of_any_side(source_db, monkeypatch):
    """Flat memory on sources of any size: each step reads at most VERIFY_BATCH_ROWS source lines and warehouse rows,
    even where one side has rows the other lacks (an emptied source, a backlog not loaded yet)."""
    from ingestion.extract import SourceReader

    monkeypatch.setattr(verification, "VERIFY_BATCH_ROWS", 4)
    alb = source_db("ALB")
    loaded = alb.insert_students(10)
    source_sync(source_id=alb.source.pk)
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=loaded[:9])  # the warehouse holds 9 extra...
    alb.insert_students(11)  # ...and the source 11 missing, at higher ids
    steps: list[tuple[int, int]] = []
    lines_in_id_range = SourceReader.lines_in_id_range

    def counting(self, low, high):
        lines = lines_in_id_range(self, low, high)
        students = Student.objects.filter(source=alb.source, source_row_id__gte=low, source_row_id__lte=high).count()
        steps.append((len(lines), students))
        return lines

    monkeypatch.setattr(SourceReader, "lines_in_id_range", counting)
    result = verified(alb)

    assert (result.extra, result.missing, result.loaded) == (9, 11, 1)
    assert max(lines for lines, _ in steps) <= 4 and max(students for _, students in steps) <= 4
    assert sum(lines for lines, _ in steps) == 12 and sum(students for _, students in steps) == 10


def test_the_json_report_carries_the_counts_and_the_examples(source_db, capsys):
    import json

    alb = source_db("ALB")
    ids = alb.insert_students(4)
    source_sync(source_id=alb.source.pk)
    alb.execute("DELETE FROM responses WHERE id = :id", id=ids[0])

    with pytest.raises(CommandError):
        call_command("verify", "--json", "--settle", "0")

    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["total"]["extra"] == 1
    [only] = report["sources"]
    assert (only["code"], only["loaded"], only["extra"], only["examples"]) == ("ALB", 3, 1, {"extra": [ids[0]]})


def test_on_a_stack_still_being_fed_rows_in_flight_are_counted_apart_and_only_real_loss_fails(source_db, capsys):
    import threading

    alb = source_db("ALB")
    ids = alb.insert_students(8)
    source_sync(source_id=alb.source.pk)
    Student.objects.filter(source=alb.source, source_row_id=ids[2]).delete()  # really lost
    arriving = alb.insert_students(3)  # committed, not loaded yet: the pipeline loads them a moment later
    alb.execute("DELETE FROM responses WHERE id = :id", id=ids[5])  # deleted, not yet removed
    def sync_then_close():
        from django.db import connection

        source_sync(source_id=alb.source.pk)
        connection.close()  # this thread's own connection

    catching_up = threading.Timer(1.5, sync_then_close)
    catching_up.start()

    result = source_verify(source=alb.source, settle_seconds=6)
    catching_up.join()

    # The sync restores the lost row too (the id comparison sees it): what was lost at first is in flight as well.
    # A row lost for good is one the pipeline cannot restore, such as one whose source is unreadable: below.
    assert result.in_flight == 5 and result.problems == 0 and result.ok
    assert set(arriving) <= set(Student.objects.filter(source=alb.source).values_list("source_row_id", flat=True))

    Student.objects.filter(source=alb.source, source_row_id=ids[3]).delete()  # nothing will bring it back now
    with pytest.raises(CommandError, match="1 missing"):
        call_command("verify", source=["ALB"], settle=2)
    assert f"missing source row ids (first 1): {ids[3]}" in capsys.readouterr().out

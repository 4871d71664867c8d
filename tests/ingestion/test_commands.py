"""manage.py ingest and manage.py metrics, as an operator runs them."""

import pytest
from django.core.management import CommandError, call_command

from ingestion.models import Student
from metrics.models import CountryMetricsState


def test_ingest_loads_every_enabled_source_and_refreshes_their_metrics(source_db, capsys):
    alb, arg = source_db("ALB"), source_db("ARG")
    alb.insert_students(6)
    arg.insert_students(4)
    call_command("ingest")
    out = capsys.readouterr()
    assert "ALB: +6 loaded" in out.out and "ARG: +4 loaded" in out.out and "done: 10 loaded" in out.out
    assert "ALB: [" in out.err  # the progress line
    assert Student.objects.count() == 10
    assert set(CountryMetricsState.objects.values_list("country", flat=True)) == {"ALB", "ARG"}


def test_ingest_full_compares_everything_and_repairs_in_place(source_db, capsys):
    from ingestion.models import StudentChange

    alb = source_db("ALB")
    ids = alb.insert_students(5)
    call_command("ingest", source=["alb"])
    StudentChange.objects.all().delete()
    Student.objects.filter(source=alb.source, source_row_id=ids[0]).delete()  # lost
    Student.objects.filter(source=alb.source, source_row_id=ids[1]).update(raw_md5="0" * 32)  # damaged

    call_command("ingest", source=["ALB"], full=True, no_metrics=True)  # the refresh would fold the change log

    out = capsys.readouterr().out
    assert "compared in full" in out and "ALB: +2 loaded" in out
    assert set(Student.objects.filter(country="ALB").values_list("source_row_id", flat=True)) == set(ids)
    # Repaired in place: the damaged version left the sums, and the three intact students were never touched.
    assert sorted(StudentChange.objects.values_list("sign", flat=True)) == [-1, 1, 1]


def test_ingest_names_unknown_sources_and_fails_on_unreadable_ones(source_db):
    alb = source_db("ALB")
    with pytest.raises(CommandError, match="unknown source"):
        call_command("ingest", source=["XXX"])
    alb.source.url = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    alb.source.save()
    with pytest.raises(CommandError, match="could not be read"):
        call_command("ingest")


def test_metrics_rebuild_verify_reports_no_difference_after_incremental_updates(source_db, capsys):
    alb = source_db("ALB")
    ids = alb.insert_students(20)
    call_command("ingest")
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=ids[:4])
    alb.insert_students(7)
    call_command("ingest")
    call_command("metrics", "rebuild", verify=True)
    assert "ALB: matches a rebuild (23 students)" in capsys.readouterr().out


def test_metrics_rebuild_verify_fails_when_the_state_was_corrupted(source_db, capsys):
    from metrics.sufficient import CountryState

    alb = source_db("ALB")
    alb.insert_students(10)
    call_command("ingest")
    CountryMetricsState.objects.filter(country="ALB").update(state=CountryState.empty().to_bytes())
    with pytest.raises(CommandError, match="differ from a rebuild"):
        call_command("metrics", "rebuild", verify=True)

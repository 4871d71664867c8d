"""`manage.py simulate` and `manage.py simulator`, as an operator runs them."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading

import pytest
from django.core.management import CommandError, call_command
from sqlalchemy import MetaData, Table, create_engine, select

from ingestion.models import Source
from simulator.models import Injection, SimulatorControl
from simulator.runner import Simulation, SyntheticSupply
from simulator.services import shares_for, simulator_control_set, source_provision
from simulator.students import TEXT_MISSING, TextStyle
from tests.conftest import ROOT, subprocess_env


def source_rows(source: Source) -> list[dict]:
    engine = create_engine(source.url)
    table = Table(source.table_name, MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(select(table).order_by(table.c.id)).mappings()]
    engine.dispose()
    assert len(table.columns) == 1120
    return rows


def test_simulate_creates_registers_seeds_and_feeds_one_database_per_country(shared_settings, pg_url_template, db):
    call_command("simulate", "--countries", "ALB,DEU,COL", "--url-template", pg_url_template, "--rate", "1000",
                 "--seed-rows", "30", "--max-rows", "40")

    sources = {source.code: source for source in Source.objects.all()}
    assert set(sources) == {"ALB", "DEU", "COL"}
    assert sources["DEU"].name == "Germany" and sources["DEU"].enabled
    rows = {code: source_rows(source) for code, source in sources.items()}
    assert sum(len(country_rows) for country_rows in rows.values()) == 70
    for code, country_rows in rows.items():
        assert {row["cnt"] for row in country_rows} <= {code}
    assert SimulatorControl.objects.get().rows_per_second == 1000


def test_simulate_writes_text_style_sources_to_sqlite(shared_settings, sqlite_url_template, db):
    call_command("simulate", "--countries", "BRN", "--style", "text", "--url-template", sqlite_url_template,
                 "--seed-rows", "5", "--max-rows", "0")

    rows = source_rows(Source.objects.get(code="BRN"))
    assert len(rows) == 5
    pisa_values = [value for row in rows for column, value in row.items() if column not in {"id", "created_at"}]
    assert all(isinstance(value, str) for value in pisa_values)
    assert TEXT_MISSING in pisa_values


def test_simulate_refuses_unknown_countries_and_files_it_cannot_replay(shared_settings, tmp_path, db):
    with pytest.raises(CommandError, match="XYZ"):
        call_command("simulate", "--countries", "ALB,XYZ")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(CommandError, match=r"\.sav or \.csv"):
        call_command("simulate", "--from", str(notes))


def test_rate_pause_and_resume_write_the_control_row(db):
    call_command("simulator", "rate", "500")
    assert SimulatorControl.objects.get().rows_per_second == 500
    call_command("simulator", "pause")
    assert SimulatorControl.objects.get().paused
    call_command("simulator", "resume")
    assert not SimulatorControl.objects.get().paused
    with pytest.raises(CommandError, match="zero or more"):
        call_command("simulator", "rate", "-1")


def test_the_loop_inserts_nothing_while_paused_and_follows_the_rate_once_resumed(
    specs, make_factory, pg_url_template, db,
):
    handle = source_provision(code="AUT", name="Austria", url_template=pg_url_template, specs=specs, style="typed")
    supply = SyntheticSupply(factory=make_factory(), shares=shares_for(["AUT"], seed=1), seed=1)
    simulation = Simulation(handles={"AUT": handle}, provision=None, text_style=TextStyle(specs), supply=supply,
                            seed=1, say=lambda message: None)

    simulator_control_set(rows_per_second=1000, paused=True)
    assert simulation.run(stop=threading.Event(), duration=1.0) == 0
    simulator_control_set(paused=False)
    assert simulation.run(stop=threading.Event(), max_rows=25) == 25
    handle.dispose()


def test_inject_and_empty_commands_act_on_a_registered_source_and_log_it(shared_settings, pg_url_template, db):
    call_command("simulate", "--countries", "CRI", "--url-template", pg_url_template, "--seed-rows", "10",
                 "--max-rows", "0")

    call_command("simulator", "inject", "delete", "CRI", "--count", "3")
    call_command("simulator", "inject", "bad", "cri", "--count", "3")
    call_command("simulator", "empty", "CRI")

    kinds = list(Injection.objects.order_by("id").values_list("kind", flat=True))
    assert kinds == ["delete", "bad", "empty"]
    assert Injection.objects.get(kind="empty").details == {"rows_removed": 10 - 3 + 3}
    with pytest.raises(CommandError, match="no source"):
        call_command("simulator", "inject", "update", "NOPE")


def test_replaying_the_shared_csv_splits_it_into_france_italy_and_mexico(
    shared_settings, sample_path, pg_url_template, db,
):
    with sample_path.open(newline="") as handle:
        expected = {}
        for record in csv.DictReader(handle):
            expected.setdefault(record["CNT"], []).append(int(record["CNTSTUID"]))

    simulator_control_set(rows_per_second=2, paused=False)  # the feeding simulator's rate
    call_command("simulate", "--from", str(sample_path), "--url-template", pg_url_template, "--rate", "100000")

    control = SimulatorControl.objects.get()
    assert (control.rows_per_second, control.paused) == (2, False)  # a one-off replay leaves it alone
    replayed = {source.code: [row["cntstuid"] for row in source_rows(source)] for source in Source.objects.all()}
    assert set(replayed) == {"FRA", "ITA", "MEX"}
    assert replayed == expected


def test_replaying_a_small_sav_file_keeps_values_and_missing_codes(
    shared_settings, sample_path, specs, sqlite_url_template, tmp_path, db,
):
    pandas = pytest.importorskip("pandas")
    pyreadstat = pytest.importorskip("pyreadstat")
    with sample_path.open(newline="") as handle:
        records = [record for _, record in zip(range(12), csv.DictReader(handle))]
    frame = pandas.DataFrame({
        spec.name: [record[spec.name] if spec.is_text else float(record[spec.name] or "nan")
                    for record in records]
        for spec in specs
    })
    sav = tmp_path / "students.sav"
    pyreadstat.write_sav(frame, str(sav))

    call_command("simulate", "--from", str(sav), "--url-template", sqlite_url_template, "--rate", "100000")

    rows = [row for source in Source.objects.all() for row in source_rows(source)]
    by_student = {row["cntstuid"]: row for row in rows}
    assert sorted(by_student) == sorted(int(record["CNTSTUID"]) for record in records)
    for record in records:
        row = by_student[int(record["CNTSTUID"])]
        assert row["cnt"] == record["CNT"] and row["st004d01t"] == int(record["ST004D01T"])
        assert row["escs"] == (pytest.approx(float(record["ESCS"])) if record["ESCS"] else None)
        missing_coded = [spec.name for spec in specs if not spec.is_text and record[spec.name]
                         and spec.is_missing(float(record[spec.name]))]
        assert missing_coded and all(row[name.lower()] == float(record[name]) for name in missing_coded)


def run_simulate_process(tmp_path, *args: str, **env: str) -> subprocess.Popen:
    from django.conf import settings

    env = {"PISA_CODEBOOK_PATH": str(settings.PISA_CODEBOOK_PATH), "PISA_SHARED_DIR": str(settings.PISA_SHARED_DIR),
           **env}
    return subprocess.Popen(
        [sys.executable, "manage.py", "simulate", "--countries", "DNK", "--seed-rows", "3", "--rate", "5",
         "--url-template", f"sqlite:///{tmp_path}/src_{{code}}.db", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(**env),
    )


def wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    pytest.fail(f"{text!r} never printed:\n{''.join(lines)}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_running_simulator_stops_cleanly_on_a_signal(shared_settings, tmp_path, transactional_db, signum):
    process = run_simulate_process(tmp_path)
    wait_for_line(process, "Seeded 3 rows")
    os.kill(process.pid, signum)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Simulator stopped" in output and "Traceback" not in output


def test_a_disabled_simulator_says_so_and_idles_until_stopped(shared_settings, tmp_path, transactional_db):
    process = run_simulate_process(tmp_path, SIMULATOR_ENABLED="0")
    wait_for_line(process, "disabled")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in output
    assert not Source.objects.exists()


def test_under_honcho_a_simulator_that_cannot_start_says_why_and_idles(shared_settings, tmp_path, transactional_db):
    process = run_simulate_process(tmp_path, "--keep-alive", PISA_CODEBOOK_PATH=str(tmp_path / "absent.csv"))
    wait_for_line(process, "absent.csv")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in output

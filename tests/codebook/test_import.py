"""Importing a codebook: the shared CSV, SPSS .sav files, refusal of malformed files, and staff edits kept."""

from __future__ import annotations

import csv
import gzip
import json

import pandas as pd
import pyreadstat
import pytest
from django.core.management import CommandError, call_command

from codebook.catalogue import CodebookFormatError, Kind, Section
from codebook.models import ValueLabel, Variable
from codebook.services import codebook_load_file, codebook_load_if_empty, value_label_edit, variable_label_edit
from tests.codebook.conftest import COUNTRY, ESCS, GENDER, LEARNING_TIME, SMALL_CODEBOOK, csv_line


def codebook_state() -> list[tuple]:
    """Everything an import writes, to compare before and after."""
    variables = list(Variable.objects.order_by("name").values_list(
        "name", "position", "label", "label_edited", "section", "kind", "format_spss", "na_values", "na_range_low",
        "na_range_high"))
    labels = list(ValueLabel.objects.order_by("variable__name", "value").values_list(
        "variable__name", "value", "label", "label_edited", "is_missing"))
    return variables + labels


def test_the_shared_codebook_loads_every_variable_and_value_label(shared_codebook, shared_codebook_path):
    with gzip.open(shared_codebook_path, "rt", newline="", encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert Variable.objects.count() == len(lines) == 1118
    assert ValueLabel.objects.count() == sum(len(json.loads(line["value_labels"])) for line in lines)
    assert list(Variable.objects.order_by("position").values_list("name", flat=True)) == [
        line["variable"] for line in lines]
    assert shared_codebook.variables_added[:2] == ["CNTRYID", "CNT"]


def test_the_shared_codebook_sections_and_kinds_follow_pisa_naming(shared_codebook):
    sections = dict(Variable.objects.values_list("name", "section"))
    kinds = dict(Variable.objects.values_list("name", "kind"))
    assert sections["ST004D01T"] == Section.STUDENT and kinds["ST004D01T"] == Kind.CATEGORICAL
    assert sections["IC001Q01TA"] == Section.ICT_FAMILIARITY
    assert sections["PA001Q01TA"] == Section.PARENT
    assert sections["ESCS"] == Section.DERIVED and kinds["ESCS"] == Kind.CONTINUOUS
    assert sections["W_FSTURWT80"] == Section.WEIGHTS and kinds["W_FSTURWT80"] == Kind.WEIGHT
    assert sections["PV10SCIE"] == Section.PLAUSIBLE_VALUES and kinds["PV10SCIE"] == Kind.PLAUSIBLE_VALUE
    assert sections["CNT"] == Section.IDENTIFICATION and kinds["CNT"] == Kind.IDENTIFIER
    # 1 + 80 replicate weights; 10 plausible values in each of 9 domains and subscales
    assert Variable.objects.filter(kind=Kind.WEIGHT).count() == 81
    assert Variable.objects.filter(kind=Kind.PLAUSIBLE_VALUE).count() == 90


def test_a_second_import_of_the_same_file_changes_nothing(shared_codebook, shared_codebook_path):
    before = codebook_state()
    report = codebook_load_file(path=shared_codebook_path)
    assert (report.variables_added, report.variables_changed, report.variables_unchanged) == ([], [], 1118)
    assert (report.value_labels_added, report.value_labels_changed, report.value_labels_removed) == (0, 0, 0)
    assert not report.changed_anything
    assert codebook_state() == before


def test_missing_codes_are_flagged_on_value_labels(small_codebook):
    gender = {label.value: label for label in ValueLabel.objects.filter(variable__name="ST004D01T")}
    assert [value for value, label in sorted(gender.items()) if label.is_missing] == ["5", "7", "8", "9"]
    assert gender["1"].label == "Female" and not gender["1"].is_missing
    escs = Variable.objects.get(name="ESCS")
    assert (escs.na_range_low, escs.na_range_high) == (95, 99)


def write_sav(path, columns: dict, **metadata) -> None:
    pyreadstat.write_sav(pd.DataFrame(columns), str(path), **metadata)


def test_an_spss_file_gives_labels_value_labels_and_user_missing_values(db, tmp_path):
    path = tmp_path / "students.sav"
    write_sav(
        path,
        {"CNT": ["FRA", "ITA"], "ST004D01T": [1.0, 9.0], "ESCS": [0.25, 99.0], "REPEAT": [0.0, 7.0]},
        column_labels={"CNT": "Country code 3-character", "ST004D01T": "Student (Standardized) Gender",
                       "ESCS": "Index of economic, social and cultural status", "REPEAT": "Grade Repetition"},
        variable_value_labels={"CNT": {"FRA": "France", "ITA": "Italy"},
                               "ST004D01T": {1: "Female", 2: "Male", 9: "No Response"},
                               "REPEAT": {0: "Did not repeat a grade", 1: "Repeated a grade", 7: "Not Applicable"}},
        missing_ranges={"ST004D01T": [{"lo": 5, "hi": 9}], "ESCS": [{"lo": 95, "hi": 99}], "REPEAT": [5, 7]},
        variable_format={"CNT": "A3", "ST004D01T": "F1.0", "ESCS": "F7.4", "REPEAT": "F1.0"},
    )
    report = codebook_load_file(path=path)

    assert report.variables_added == ["CNT", "ST004D01T", "ESCS", "REPEAT"]
    gender = Variable.objects.get(name="ST004D01T")
    assert (gender.label, gender.format_spss, gender.na_range) == ("Student (Standardized) Gender", "F1.0", (5, 9))
    assert dict(gender.value_labels.values_list("value", "label")) == {"1": "Female", "2": "Male", "9": "No Response"}
    assert list(gender.value_labels.filter(is_missing=True).values_list("value", flat=True)) == ["9"]
    repeat = Variable.objects.get(name="REPEAT")
    assert (repeat.na_values, repeat.na_range) == ([5.0, 7.0], None)
    assert repeat.value_labels.get(value="7").is_missing
    country = Variable.objects.get(name="CNT")
    assert (country.format_spss, country.kind) == ("A3", Kind.IDENTIFIER)
    assert dict(country.value_labels.values_list("value", "label")) == {"FRA": "France", "ITA": "Italy"}
    assert Variable.objects.get(name="ESCS").kind == Kind.CONTINUOUS
    assert codebook_load_file(path=path).variables_unchanged == 4


def test_a_file_that_is_not_spss_is_refused(db, tmp_path):
    path = tmp_path / "codebook.sav"
    path.write_text("variable,label\n")
    with pytest.raises(CodebookFormatError, match="not a readable SPSS .sav file"):
        codebook_load_file(path=path)
    assert not Variable.objects.exists()


def test_a_malformed_file_is_refused_whole_with_every_bad_line(small_codebook, write_codebook_csv):
    before = codebook_state()
    relabelled = {**GENDER, "label": "Gender (new wording)"}
    path = write_codebook_csv([
        relabelled,                                                              # line 2: fine
        {"raw": {**csv_line(ESCS), "format_spss": "float"}},                         # line 3
        {"variable": "AGE", "label": "Age", "format_spss": "F5.2"},              # line 4: fine
        {"raw": {**csv_line(LEARNING_TIME), "value_labels": "{not json"}},           # line 5
        {**COUNTRY, "na_range": [9, 5]},                                         # line 6
        relabelled,                                                              # line 7: repeats line 2
    ], name="broken.csv")

    with pytest.raises(CodebookFormatError) as refused:
        codebook_load_file(path=path)

    assert [line for line, _ in refused.value.problems] == [3, 5, 6, 7]
    reasons = dict(refused.value.problems)
    assert "format_spss 'float'" in reasons[3]
    assert "value_labels is not valid JSON" in reasons[5]
    assert "na_range" in reasons[6]
    assert "already defined on line 2" in reasons[7]
    assert codebook_state() == before


def test_the_command_refuses_a_malformed_file_and_says_so(small_codebook, write_codebook_csv):
    before = codebook_state()
    path = write_codebook_csv([GENDER, {"raw": {**csv_line(ESCS), "variable": "2ESCS"}}], name="broken.csv")
    with pytest.raises(CommandError) as refused:
        call_command("load_codebook", str(path))
    assert "line 3: variable name '2ESCS' is not a valid identifier" in str(refused.value)
    assert "Nothing was changed." in str(refused.value)
    assert codebook_state() == before


def test_the_command_refuses_a_path_with_no_file(db, tmp_path):
    with pytest.raises(CommandError, match="no codebook file at"):
        call_command("load_codebook", str(tmp_path / "absent.csv"))


def test_the_command_shows_progress_and_what_it_did(db, write_codebook_csv, capsys):
    many = [{"variable": f"X{number:04d}", "label": f"Item {number}", "format_spss": "F3.0"} for number in range(450)]
    call_command("load_codebook", str(write_codebook_csv(many)))
    output = capsys.readouterr().out
    assert "200/450 variables" in output and "400/450 variables" in output and "450/450 variables" in output
    assert "variables: 450 added, 0 changed, 0 unchanged" in output


def test_a_reimport_updates_labels_nobody_edited(small_codebook, write_codebook_csv):
    renamed = {**GENDER, "label": "Gender", "value_labels": {**GENDER["value_labels"], "Girl": 1}}
    del renamed["value_labels"]["Female"]
    report = codebook_load_file(path=write_codebook_csv([COUNTRY, renamed, ESCS, LEARNING_TIME]))
    assert report.variables_changed == ["ST004D01T"]
    assert report.value_labels_changed == 1
    assert Variable.objects.get(name="ST004D01T").label == "Gender"
    assert ValueLabel.objects.get(variable__name="ST004D01T", value="1").label == "Girl"


def test_a_reimport_keeps_labels_staff_edited(small_codebook, write_codebook_csv, admin_user):
    gender = Variable.objects.get(name="ST004D01T")
    variable_label_edit(variable=gender, label="Sexe de l'élève", user=admin_user)
    value_label_edit(value_label=gender.value_labels.get(value="1"), label="Fille", user=admin_user)
    file_changed = {**GENDER, "label": "Gender (2019 wording)",
                    "value_labels": {**GENDER["value_labels"], "Female student": 1}}
    del file_changed["value_labels"]["Female"]
    path = write_codebook_csv([COUNTRY, file_changed, ESCS, LEARNING_TIME])

    report = codebook_load_file(path=path)

    assert sorted(report.edits_kept) == ["ST004D01T", "ST004D01T=1"]
    gender.refresh_from_db()
    girl = gender.value_labels.get(value="1")
    assert (gender.label, gender.label_edited, gender.imported_label) == (
        "Sexe de l'élève", True, "Gender (2019 wording)")
    assert (girl.label, girl.label_edited, girl.imported_label) == ("Fille", True, "Female student")
    assert "kept (use --overwrite-edits to replace them): ST004D01T" in report.summary()


def test_overwrite_edits_puts_the_files_labels_back(small_codebook, write_codebook_csv, admin_user, capsys):
    gender = Variable.objects.get(name="ST004D01T")
    variable_label_edit(variable=gender, label="Sexe", user=admin_user)
    value_label_edit(value_label=gender.value_labels.get(value="2"), label="Garçon", user=admin_user)

    call_command("load_codebook", str(write_codebook_csv(SMALL_CODEBOOK)), "--overwrite-edits")

    assert "staff edits: 0 kept, 2 overwritten" in capsys.readouterr().out
    gender.refresh_from_db()
    assert (gender.label, gender.label_edited) == ("Student (Standardized) Gender", False)
    assert gender.value_labels.get(value="2").label == "Male"


def test_value_labels_dropped_from_the_file_go_unless_staff_edited_them(small_codebook, write_codebook_csv,
                                                                         admin_user):
    value_label_edit(value_label=ValueLabel.objects.get(variable__name="CNT", value="ITA"), label="Italia",
                     user=admin_user)
    only_france = {**COUNTRY, "value_labels": {"France": "FRA"}}
    report = codebook_load_file(path=write_codebook_csv([only_france, GENDER, ESCS, LEARNING_TIME]))
    assert report.value_labels_removed == 1
    assert report.edits_kept == ["CNT=ITA"]
    assert dict(ValueLabel.objects.filter(variable__name="CNT").values_list("value", "label")) == {
        "FRA": "France", "ITA": "Italia"}


def test_variables_missing_from_a_file_are_kept_after_the_files_own(small_codebook, write_codebook_csv):
    report = codebook_load_file(path=write_codebook_csv([ESCS, GENDER]))
    assert sorted(report.variables_not_in_file) == ["CNT", "TMINS"]
    assert list(Variable.objects.order_by("position").values_list("name", flat=True)) == [
        "ESCS", "ST004D01T", "CNT", "TMINS"]


def test_the_stack_loads_the_codebook_only_when_it_is_empty(db, write_codebook_csv, tmp_path):
    path = write_codebook_csv(SMALL_CODEBOOK)
    assert codebook_load_if_empty(path=tmp_path / "absent.csv") is None
    assert codebook_load_if_empty(path=path).variables_added == ["CNT", "ST004D01T", "ESCS", "TMINS"]
    assert codebook_load_if_empty(path=path) is None


def test_bootstrap_loads_the_configured_codebook(db, write_codebook_csv, settings, capsys):
    settings.PISA_CODEBOOK_PATH = write_codebook_csv(SMALL_CODEBOOK)
    call_command("bootstrap")
    assert "variables: 4 added" in capsys.readouterr().out
    assert Variable.objects.count() == 4

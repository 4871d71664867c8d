"""Codebook fixtures: small codebook files written on the fly, and the shared PISA 2018 codebook."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from codebook.services import codebook_load_file
from tests.conftest import codebook_csv_path, codebook_editors_group

COLUMNS = ["variable", "label", "format_spss", "value_labels", "na_values", "na_range"]

# A few variables as PISA 2018 defines them (labels, codes and missing ranges from the OECD's codebook).
GENDER = {"variable": "ST004D01T", "label": "Student (Standardized) Gender", "format_spss": "F1.0",
          "value_labels": {"Female": 1, "Male": 2, "Valid Skip": 5, "Not Applicable": 7, "Invalid": 8,
                           "No Response": 9},
          "na_range": [5, 9]}
ESCS = {"variable": "ESCS", "label": "Index of economic, social and cultural status", "format_spss": "F7.4",
        "value_labels": {"Valid Skip": 95, "Not Applicable": 97, "Invalid": 98, "No Response": 99},
        "na_range": [95, 99]}
COUNTRY = {"variable": "CNT", "label": "Country code 3-character", "format_spss": "A3",
           "value_labels": {"France": "FRA", "Italy": "ITA", "Mexico": "MEX"}}
LEARNING_TIME = {"variable": "TMINS", "label": "Learning time (minutes per week) - in total", "format_spss": "F8.0",
                 "value_labels": {"Valid Skip": 99999995, "Not Applicable": 99999997, "Invalid": 99999998,
                                  "No Response": 99999999},
                 "na_range": [99999995, 99999999]}
SMALL_CODEBOOK = [COUNTRY, GENDER, ESCS, LEARNING_TIME]


def csv_line(variable: dict) -> dict[str, str]:
    return {
        "variable": variable["variable"],
        "label": variable["label"],
        "format_spss": variable["format_spss"],
        "value_labels": json.dumps(variable.get("value_labels", {})),
        "na_values": json.dumps(variable.get("na_values", [])),
        "na_range": json.dumps(variable.get("na_range", [])),
    }


@pytest.fixture
def write_codebook_csv(tmp_path):
    """write_codebook_csv([variable dicts], name=...) -> path of a codebook CSV in the shared file's layout.
    A dict of raw strings (already serialised columns) is written as it is, to make malformed lines."""

    def write(variables: list[dict], name: str = "codebook.csv") -> Path:
        path = tmp_path / name
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for variable in variables:
                writer.writerow(variable["raw"] if "raw" in variable else csv_line(variable))
        return path

    return write


@pytest.fixture
def small_codebook(db, write_codebook_csv, django_capture_on_commit_callbacks):
    """The four variables of SMALL_CODEBOOK, imported."""
    with django_capture_on_commit_callbacks(execute=True):
        return codebook_load_file(path=write_codebook_csv(SMALL_CODEBOOK))


@pytest.fixture
def shared_codebook_path() -> Path:
    return codebook_csv_path()


@pytest.fixture
def shared_codebook(db, shared_codebook_path, django_capture_on_commit_callbacks):
    """The shared PISA 2018 codebook (1,118 variables), imported."""
    with django_capture_on_commit_callbacks(execute=True):
        return codebook_load_file(path=shared_codebook_path)


@pytest.fixture
def editor(db, django_user_model):
    """A member of staff in the "Codebook editors" group (not a superuser)."""
    user = django_user_model.objects.create_user(username="editor", password="editor-password", is_staff=True)
    user.groups.add(codebook_editors_group())
    return user


@pytest.fixture
def editor_client(client, editor):
    client.force_login(editor)
    return client

"""Decoding stored values into labels or missing reasons, and analysis values that never let a missing code in."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from django.core.cache import cache

from codebook.catalogue import VariableSpec
from codebook.decoding import (
    Decoded, MissingReason, NotANumber, UnknownVariable, analysis_value, decode, decode_with_spec,
)
from codebook.models import ValueLabel, Variable
from codebook.selectors import country_names, labels_version, variable_spec_map, variable_specs
from codebook.services import labels_version_bump, value_label_edit, variable_label_edit


def test_gender_decodes_to_its_labels_and_9_to_no_response(shared_codebook):
    assert decode("ST004D01T", 1) == Decoded(value=1.0, label="Female", missing_reason=None)
    assert decode("ST004D01T", 2) == Decoded(value=2.0, label="Male", missing_reason=None)
    assert decode("ST004D01T", 9) == Decoded(value=None, label="No Response",
                                             missing_reason=MissingReason.NO_RESPONSE)


def test_learning_time_99999997_is_not_applicable(shared_codebook):
    decoded = decode("TMINS", 99999997)
    assert decoded.is_missing and decoded.missing_reason == MissingReason.NOT_APPLICABLE
    assert decode("TMINS", 1500) == Decoded(value=1500.0, label=None, missing_reason=None)


def test_every_escs_code_from_95_to_99_is_missing(shared_codebook):
    escs = variable_spec_map()["ESCS"]
    for code in (95, 96, 97, 98, 99, 95.5):
        assert decode("ESCS", code).is_missing, code
        assert analysis_value(escs, code) is None, code
    assert [decode("ESCS", code).missing_reason for code in (95, 97, 98, 99)] == [
        MissingReason.VALID_SKIP, MissingReason.NOT_APPLICABLE, MissingReason.INVALID, MissingReason.NO_RESPONSE]
    assert analysis_value(escs, -1.2345) == -1.2345
    assert analysis_value(escs, 94.9999) == 94.9999


def test_the_reason_comes_from_the_label_of_the_missing_code(small_codebook):
    assert [decode("ST004D01T", code).missing_reason for code in (5, 7, 8, 9)] == [
        MissingReason.VALID_SKIP, MissingReason.NOT_APPLICABLE, MissingReason.INVALID, MissingReason.NO_RESPONSE]


def test_the_reason_follows_the_imported_label_whatever_staff_renamed_it_to(small_codebook, admin_user,
                                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        value_label_edit(value_label=ValueLabel.objects.get(variable__name="ST004D01T", value="9"),
                         label="Not applicable", user=admin_user)
    assert decode("ST004D01T", 9) == Decoded(value=None, label="Not applicable",
                                             missing_reason=MissingReason.NO_RESPONSE)


def test_an_unlabelled_missing_code_falls_back_on_pisas_last_digit_convention():
    spec = VariableSpec(name="AGE", label="Age", format_spss="F5.2", na_values=(9997.0, 9999.0, 9996.0))
    assert decode_with_spec(spec, 9997).missing_reason == MissingReason.NOT_APPLICABLE
    assert decode_with_spec(spec, 9999).missing_reason == MissingReason.NO_RESPONSE
    assert decode_with_spec(spec, 9996).missing_reason == MissingReason.INVALID  # no convention for 6


@pytest.mark.parametrize("raw", [None, "", "  ", "NA", "na", "NaN", float("nan")])
def test_no_value_at_all_is_system_missing(small_codebook, raw):
    assert decode("ST004D01T", raw) == Decoded(value=None, label=None, missing_reason=MissingReason.SYSTEM_MISSING)
    assert analysis_value(variable_spec_map()["ST004D01T"], raw) is None


@pytest.mark.parametrize("raw", [2, 2.0, "2", " 2.0 ", Decimal("2")])
def test_a_code_decodes_the_same_whatever_type_the_source_stored_it_as(small_codebook, raw):
    assert decode("ST004D01T", raw) == Decoded(value=2.0, label="Male", missing_reason=None)
    assert analysis_value(variable_spec_map()["ST004D01T"], raw) == 2.0


def test_text_variables_decode_their_codes(small_codebook):
    assert decode("CNT", "MEX") == Decoded(value="MEX", label="Mexico", missing_reason=None)
    assert decode("CNT", "XYZ") == Decoded(value="XYZ", label=None, missing_reason=None)


def test_text_in_a_numeric_variable_is_invalid_for_display_and_an_error_for_analysis(small_codebook):
    assert decode("ESCS", "high") == Decoded(value=None, label=None, missing_reason=MissingReason.INVALID)
    with pytest.raises(NotANumber, match="ESCS: 'high' is not a number"):
        analysis_value(variable_spec_map()["ESCS"], "high")


def test_a_text_variable_has_no_analysis_value(small_codebook):
    with pytest.raises(TypeError):
        analysis_value(variable_spec_map()["CNT"], "FRA")


def test_an_unknown_variable_is_an_error(small_codebook):
    with pytest.raises(UnknownVariable):
        decode("NOT_A_PISA_VARIABLE", 1)


def test_no_missing_code_of_the_shared_codebook_survives_as_an_analysis_value(shared_codebook):
    """Every labelled code the codebook declares missing, in every numeric variable, becomes None."""
    checked = 0
    for spec in variable_specs():
        if spec.is_text:
            continue
        for code in spec.value_labels:
            if spec.is_missing(code):
                assert analysis_value(spec, code) is None, (spec.name, code)
                assert analysis_value(spec, str(int(code))) is None, (spec.name, code)
                checked += 1
    assert checked > 3000


def test_specs_come_back_in_codebook_order_with_missing_definitions(small_codebook):
    specs = variable_specs()
    assert [spec.name for spec in specs] == ["CNT", "ST004D01T", "ESCS", "TMINS"]
    gender = specs[1]
    assert (gender.na_range, gender.value_labels[1.0], gender.kind) == ((5.0, 9.0), "Female", "categorical")
    assert specs[0].value_labels == {"FRA": "France", "ITA": "Italy", "MEX": "Mexico"}


def test_country_names_come_from_the_codebook(shared_codebook):
    names = country_names()
    assert names["FRA"] == "France" and names["QCI"] == "B-S-J-Z (China)" and names["MEX"] == "Mexico"
    assert len(names) == ValueLabel.objects.filter(variable__name="CNT").count()


def test_a_staff_edit_reaches_decoding_and_country_names(small_codebook, admin_user,
                                                          django_capture_on_commit_callbacks):
    assert decode("ST004D01T", 1).label == "Female" and country_names()["ITA"] == "Italy"
    version = labels_version()
    with django_capture_on_commit_callbacks(execute=True):
        value_label_edit(value_label=ValueLabel.objects.get(variable__name="ST004D01T", value="1"), label="Fille",
                         user=admin_user)
        value_label_edit(value_label=ValueLabel.objects.get(variable__name="CNT", value="ITA"), label="Italia",
                         user=admin_user)
        variable_label_edit(variable=Variable.objects.get(name="ESCS"), label="ESCS index", user=admin_user)
    assert labels_version() > version
    assert decode("ST004D01T", 1).label == "Fille"
    assert country_names()["ITA"] == "Italia"
    assert variable_spec_map()["ESCS"].label == "ESCS index"


def test_the_labels_version_survives_a_redis_flush_without_repeating():
    """A process that cached specs under the old version must not mistake the restarted counter for it."""
    labels_version_bump()
    before_flush = labels_version()
    cache.clear()
    assert labels_version() > before_flush


def test_analysis_values_of_plausible_values_and_weights_are_plain_numbers(shared_codebook):
    specs = variable_spec_map()
    assert analysis_value(specs["PV1MATH"], "512.345") == 512.345
    assert analysis_value(specs["W_FSTUWT"], 12.5) == 12.5
    assert math.isclose(analysis_value(specs["W_FSTURWT80"], Decimal("3.25")), 3.25)

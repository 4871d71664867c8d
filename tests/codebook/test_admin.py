"""The admin for codebook editors: they find variables, edit labels (recorded), and can do nothing else."""

from __future__ import annotations

import pytest
from django.urls import reverse

from codebook.models import LabelEdit, ValueLabel, Variable
from tests.conftest import codebook_editors_group


def change_url(variable: Variable) -> str:
    return reverse("admin:codebook_variable_change", args=[variable.pk])


def change_form(variable: Variable, label: str | None = None, value_labels: dict[str, str] | None = None,
                **other_fields) -> dict:
    """The POST data of the variable's admin page, with the given labels changed (value -> new label)."""
    inline = list(variable.value_labels.order_by("numeric_value", "value"))
    data = {
        "label": variable.label if label is None else label,
        "value_labels-TOTAL_FORMS": str(len(inline)),
        "value_labels-INITIAL_FORMS": str(len(inline)),
        "value_labels-MIN_NUM_FORMS": "0",
        "value_labels-MAX_NUM_FORMS": "1000",
        "_save": "Save",
        **other_fields,
    }
    for index, value_label in enumerate(inline):
        data[f"value_labels-{index}-id"] = str(value_label.pk)
        data[f"value_labels-{index}-variable"] = str(variable.pk)
        data[f"value_labels-{index}-label"] = (value_labels or {}).get(value_label.value, value_label.label)
    return data


def test_the_editors_group_may_edit_labels_and_view_the_rest_of_the_codebook(db):
    group = codebook_editors_group()
    assert sorted(group.permissions.values_list("content_type__app_label", "codename")) == [
        ("codebook", "change_valuelabel"), ("codebook", "change_variable"), ("codebook", "view_labeledit"),
        ("codebook", "view_valuelabel"), ("codebook", "view_variable")]


def test_an_editor_finds_variables_by_name_or_label_and_filters_by_section_and_kind(small_codebook, editor_client):
    changelist = reverse("admin:codebook_variable_changelist")
    assert editor_client.get(changelist).status_code == 200
    by_label = editor_client.get(changelist, {"q": "gender"}).context["cl"].result_list
    assert [variable.name for variable in by_label] == ["ST004D01T"]
    by_name = editor_client.get(changelist, {"q": "tmin"}).context["cl"].result_list
    assert [variable.name for variable in by_name] == ["TMINS"]
    derived = editor_client.get(changelist, {"section__exact": "derived"}).context["cl"].result_list
    assert sorted(variable.name for variable in derived) == ["ESCS", "TMINS"]
    text = editor_client.get(changelist, {"kind__exact": "identifier"}).context["cl"].result_list
    assert [variable.name for variable in text] == ["CNT"]


def test_the_variable_page_shows_its_value_labels_inline(small_codebook, editor_client):
    page = editor_client.get(change_url(Variable.objects.get(name="ST004D01T")))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="Female"' in html and 'value="No Response"' in html


def test_an_editor_edits_labels_and_each_edit_is_recorded(small_codebook, editor, editor_client):
    gender = Variable.objects.get(name="ST004D01T")
    response = editor_client.post(change_url(gender), change_form(
        gender, label="Sexe de l'élève", value_labels={"1": "Fille", "2": "Garçon"}))
    assert response.status_code == 302, response.context and response.context["errors"]

    gender.refresh_from_db()
    assert (gender.label, gender.label_edited) == ("Sexe de l'élève", True)
    assert dict(gender.value_labels.filter(label_edited=True).values_list("value", "label")) == {
        "1": "Fille", "2": "Garçon"}
    edits = {(edit.value, edit.old_label, edit.new_label, edit.edited_by) for edit in LabelEdit.objects.all()}
    assert edits == {("", "Student (Standardized) Gender", "Sexe de l'élève", editor),
                     ("1", "Female", "Fille", editor), ("2", "Male", "Garçon", editor)}


def test_the_history_of_edits_is_visible_and_read_only(small_codebook, editor_client):
    gender = Variable.objects.get(name="ST004D01T")
    editor_client.post(change_url(gender), change_form(gender, value_labels={"1": "Fille"}))
    edit = LabelEdit.objects.get()

    history = editor_client.get(reverse("admin:codebook_labeledit_changelist"))
    assert history.status_code == 200 and "Fille" in history.content.decode()
    assert editor_client.post(reverse("admin:codebook_labeledit_change", args=[edit.pk]),
                              {"new_label": "Changed history"}).status_code == 403
    assert editor_client.post(reverse("admin:codebook_labeledit_delete", args=[edit.pk]),
                              {"post": "yes"}).status_code == 403
    assert LabelEdit.objects.get().new_label == "Fille"


def test_saving_without_a_change_records_nothing(small_codebook, editor_client):
    gender = Variable.objects.get(name="ST004D01T")
    assert editor_client.post(change_url(gender), change_form(gender)).status_code == 302
    assert not LabelEdit.objects.exists()


def test_an_empty_label_is_refused(small_codebook, editor_client):
    gender = Variable.objects.get(name="ST004D01T")
    response = editor_client.post(change_url(gender), change_form(gender, value_labels={"1": ""}))
    assert response.status_code == 200  # the form again, with its error
    assert ValueLabel.objects.get(variable=gender, value="1").label == "Female"
    assert not LabelEdit.objects.exists()


def test_an_editor_cannot_change_anything_but_labels(small_codebook, editor_client):
    escs = Variable.objects.get(name="ESCS")
    editor_client.post(change_url(escs), change_form(
        escs, label="ESCS", format_spss="A3", na_range_low="0", na_range_high="1", kind="text", name="HACKED"))
    escs.refresh_from_db()
    assert (escs.name, escs.label, escs.format_spss, escs.na_range, escs.kind) == (
        "ESCS", "ESCS", "F7.4", (95.0, 99.0), "continuous")


@pytest.mark.parametrize("url_name, args", [
    ("admin:auth_user_changelist", []),
    ("admin:auth_group_changelist", []),
    ("admin:codebook_variable_add", []),
    ("admin:auth_user_add", []),
])
def test_an_editor_cannot_reach_the_rest_of_the_admin(small_codebook, editor_client, url_name, args):
    assert editor_client.get(reverse(url_name, args=args)).status_code == 403


def test_an_editor_cannot_delete_variables(small_codebook, editor_client):
    escs = Variable.objects.get(name="ESCS")
    response = editor_client.post(reverse("admin:codebook_variable_delete", args=[escs.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert Variable.objects.filter(name="ESCS").exists()


def test_staff_outside_the_editors_group_cannot_edit_labels(small_codebook, client, django_user_model):
    client.force_login(django_user_model.objects.create_user(username="clerk", password="x", is_staff=True))
    gender = Variable.objects.get(name="ST004D01T")
    assert client.get(reverse("admin:codebook_variable_changelist")).status_code == 403
    assert client.post(change_url(gender), change_form(gender, label="Gender")).status_code == 403
    gender.refresh_from_db()
    assert gender.label == "Student (Standardized) Gender"


@pytest.mark.parametrize("extra_label", ["Non-binary", ""])
def test_an_extra_value_label_form_is_a_form_error_not_a_crash(small_codebook, editor_client, extra_label):
    # The page offers no "add another" (codes come from the codebook file), but a form can still be posted with one.
    gender = Variable.objects.get(name="ST004D01T")
    data = change_form(gender, value_labels={"1": "Fille"})
    extra = int(data["value_labels-TOTAL_FORMS"])
    data.update({"value_labels-TOTAL_FORMS": str(extra + 1), f"value_labels-{extra}-variable": str(gender.pk),
                 f"value_labels-{extra}-label": extra_label})
    count = ValueLabel.objects.filter(variable=gender).count()

    response = editor_client.post(change_url(gender), data)

    if extra_label:
        assert response.status_code == 200  # the form again, with its error
        assert "cannot be added here" in response.content.decode()
        assert ValueLabel.objects.get(variable=gender, value="1").label == "Female"  # nothing saved
    else:
        assert response.status_code == 302  # an empty extra form is no change: the edit is saved
        assert ValueLabel.objects.get(variable=gender, value="1").label == "Fille"
    assert ValueLabel.objects.filter(variable=gender).count() == count

"""Who may do what: anonymous users read the API and nothing else; a codebook editor changes labels and nothing
else; other staff cannot change labels; nobody writes through the API."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator

from codebook.models import LabelEdit, Variable
from ingestion.models import Source
from ingestion.services import source_register
from tests.codebook.conftest import small_codebook, write_codebook_csv  # noqa: F401  (fixtures)
from tests.codebook.test_admin import change_form, change_url
from tests.conftest import codebook_editors_group

SOURCE_URL = "postgresql://reader:pw-for-access-tests@db.example:5432/pisa_alb"
EDITABLE_ELSEWHERE = [model for model in admin.site._registry if model._meta.app_label != "codebook"]


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def editor(db, django_user_model):
    user = django_user_model.objects.create_user(username="editor", password="editor-password-4417", is_staff=True)
    user.groups.add(codebook_editors_group())
    return user


@pytest.fixture
def editor_client(editor, client):
    client.force_login(editor)
    return client


@pytest.fixture
def source(db):
    return source_register(code="ALB", name="Albania", url=SOURCE_URL)


# --- Anonymous -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", list(admin.site._registry), ids=lambda model: model._meta.label)
def test_anonymous_users_are_sent_to_the_login_for_every_admin_page(db, client, model):
    for url in (reverse("admin:index"), admin_url(model, "changelist"), admin_url(model, "add")):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(f"{reverse('admin:login')}?next="), url


def test_anonymous_users_cannot_post_to_the_admin(small_codebook, client):
    gender = Variable.objects.get(name="ST004D01T")
    response = client.post(change_url(gender), change_form(gender, label="Hacked"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    gender.refresh_from_db()
    assert gender.label == "Student (Standardized) Gender" and not LabelEdit.objects.exists()


def api_operations() -> list[tuple[str, str]]:
    """Every path of the OpenAPI schema, its path parameters filled with real values."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = [path.replace("{name}", "ESCS").replace("{code}", "ALB").replace("{source_row_id}", "1")
             for path in schema["paths"]]
    # metrics, countries, distribution, codebook, sources, health, the five Forage charts and the quarantine
    assert len(paths) >= 15
    return paths


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_nobody_writes_through_the_api(small_codebook, source, client, admin_client, method):
    """Anonymous or superuser, every API URL refuses every writing method; nothing changes. (Anonymous callers of
    the staff-only quarantine get its 401 first.)"""
    for path in api_operations():
        for who, http in (("anonymous", client), ("superuser", admin_client)):
            response = getattr(http, method)(path, {"label": "Hacked", "url": "sqlite://"},
                                              content_type="application/json")
            allowed = (401, 403, 405) if who == "anonymous" and "/quarantine/" in path else (403, 405)
            assert response.status_code in allowed, (who, method, path, response.status_code)
    assert Variable.objects.get(name="ESCS").label == "Index of economic, social and cultural status"
    assert Source.objects.get().url == SOURCE_URL and not LabelEdit.objects.exists()


# --- Codebook editors: labels, and nothing else --------------------------------------------------------------

def test_an_editor_changes_a_label(small_codebook, editor_client):
    """The positive control of the refusals below: the same client, logged in, may do this."""
    gender = Variable.objects.get(name="ST004D01T")
    assert editor_client.post(change_url(gender), change_form(gender, label="Gender")).status_code == 302
    assert Variable.objects.get(name="ST004D01T").label == "Gender"


@pytest.mark.parametrize("model", EDITABLE_ELSEWHERE, ids=lambda model: model._meta.label)
def test_an_editor_cannot_see_or_add_anything_outside_the_codebook(small_codebook, source, editor_client, model):
    assert editor_client.get(admin_url(model, "changelist")).status_code == 403
    assert editor_client.get(admin_url(model, "add")).status_code == 403


def test_an_editor_cannot_change_a_source(source, editor_client):
    assert editor_client.get(admin_url(Source, "change", source.pk)).status_code == 403
    response = editor_client.post(admin_url(Source, "change", source.pk), {
        "code": "ALB", "name": "Albania", "url": "postgresql://reader:***@collector.example/x",
        "table_name": "responses", "cursor_columns": "created_at,id", "enabled": "on", "poll_interval_seconds": "1"})
    assert response.status_code == 403
    assert Source.objects.get().url == SOURCE_URL


def test_an_editor_cannot_make_themself_a_superuser(editor, editor_client, django_user_model):
    response = editor_client.post(admin_url(django_user_model, "change", editor.pk), {
        "username": "editor", "is_staff": "on", "is_superuser": "on", "is_active": "on"})
    assert response.status_code == 403
    editor.refresh_from_db()
    assert not editor.is_superuser and not editor.user_permissions.exists()


def test_an_editors_post_without_the_csrf_token_is_refused(small_codebook, editor):
    client = Client(enforce_csrf_checks=True)
    client.force_login(editor)
    gender = Variable.objects.get(name="ST004D01T")
    assert client.post(change_url(gender), change_form(gender, label="Forged")).status_code == 403
    assert Variable.objects.get(name="ST004D01T").label == "Student (Standardized) Gender"


# --- Other users ---------------------------------------------------------------------------------------------

def test_staff_outside_the_group_see_an_empty_admin_and_cannot_edit_labels(small_codebook, source, client,
                                                                         django_user_model):
    client.force_login(django_user_model.objects.create_user(username="clerk", password="x", is_staff=True))
    assert client.get(reverse("admin:index")).context["app_list"] == []
    gender = Variable.objects.get(name="ST004D01T")
    assert client.get(change_url(gender)).status_code == 403
    assert client.post(change_url(gender), change_form(gender, label="Gender")).status_code == 403
    assert client.get(admin_url(Source, "changelist")).status_code == 403
    assert Variable.objects.get(name="ST004D01T").label == "Student (Standardized) Gender"


@pytest.mark.parametrize("flags", [{"is_staff": False}, {"is_active": False}], ids=["not staff", "inactive"])
def test_the_editors_group_alone_does_not_open_the_admin(small_codebook, client, django_user_model, flags):
    user = django_user_model.objects.create_user(username="someone", password="someone-password-4417",
                                                 **{"is_staff": True, **flags})
    user.groups.add(codebook_editors_group())
    client.login(username="someone", password="someone-password-4417")
    gender = Variable.objects.get(name="ST004D01T")
    response = client.post(change_url(gender), change_form(gender, label="Gender"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert Variable.objects.get(name="ST004D01T").label == "Student (Standardized) Gender"


def test_bootstrap_refuses_a_weak_admin_password(db, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "admin")
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_PASSWORD is too weak: .*too short"):
        call_command("bootstrap")
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username="admin").exists()


def test_a_strong_admin_password_from_the_environment_is_accepted(db, monkeypatch):
    from pisa_site.services import admin_user_ensure

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "correct-horse-battery-4417")
    try:
        login = admin_user_ensure()
    except ValidationError as exc:  # pragma: no cover - the failure message
        pytest.fail(f"refused: {exc.messages}")
    assert login.created and login.password == "correct-horse-battery-4417"

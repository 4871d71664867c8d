"""Schemathesis against the OpenAPI schema the app serves: every operation, positive and negative inputs, answered
in-process through the WSGI app (no network) while the warehouse and the metrics cache hold real data.

Per operation it checks: no 5xx, the status code is one the schema declares, the content type, headers and body
match the schema, input the schema rules out is refused with a 4xx, and no answer shows a source's password.
Seeded and bounded, so CI runs the same cases every time in well under a minute. docs/security.md says how to run
it alone or longer.
"""

from __future__ import annotations

import base64
import os
import re

import pytest
import schemathesis
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings

from ingestion.models import Source
from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh
from pisa_site.embedded import free_port
from pisa_site.wsgi import application
from tests.conftest import codebook_csv_path

COUNTRIES = {"ALB": 30, "ARG": 20, "FRA": 12}
UNREACHABLE_PASSWORD = "schema-run-s3cret"
# Every call is a superuser's (HTTP Basic), so the staff-only quarantine answers too; the public endpoints ignore it.
STAFF_USER, STAFF_PASSWORD = "schema-run-admin", "schema-run-admin-pw-9931"
STAFF_AUTHORIZATION = "Basic " + base64.b64encode(f"{STAFF_USER}:{STAFF_PASSWORD}".encode()).decode()
# Per operation and generation mode, in the fuzzing phase (the coverage phase adds its own boundary cases).
# SCHEMATHESIS_MAX_EXAMPLES=1000 for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES") or 50)
SEED = 20180
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "negative_data_rejection"]

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def published(source_db, django_capture_on_commit_callbacks, django_user_model):
    """The shared codebook, three countries' sources synced (each with a quarantined row) and their metrics
    published, and an unreachable source whose URL holds a password (so /api/v1/sources/ lists a failing source
    too)."""
    from codebook.services import codebook_load_file

    with django_capture_on_commit_callbacks(execute=True):
        codebook_load_file(path=codebook_csv_path())
    for code, students in COUNTRIES.items():
        source = source_db(code)
        source.insert_students(students)
        source.insert([source.student(ST004D01T=3)])  # not a code of the variable: quarantined
        source_sync(source_id=source.source.pk)
        country_metrics_refresh(country=code)
    dead = Source.objects.create(
        code="AUT", name="Austria (unreachable)",
        url=f"postgresql+psycopg2://reader:{UNREACHABLE_PASSWORD}@127.0.0.1:{free_port()}/pisa_aut")
    source_sync(source_id=dead.pk)
    django_user_model.objects.create_superuser(STAFF_USER, password=STAFF_PASSWORD)


@pytest.fixture
def api_schema(published):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "allow-x00": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })
    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, config=config)


@pytest.fixture(autouse=True)
def _pytest_9_node_id(request):
    """schemathesis 4.32's lazy loader reads and rewrites `node._nodeid`, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def no_source_password(ctx, response, case) -> None:
    """A custom check: whatever was asked, the answer (body or headers) never holds a source's password."""
    headers = " ".join(" ".join(values) for values in response.headers.values())
    if UNREACHABLE_PASSWORD.encode() in (response.content or b"") or UNREACHABLE_PASSWORD in headers:
        raise AssertionError("the response shows the password of a source's URL")


@schema.parametrize()
@settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_openapi_schema(case):
    # Schemathesis's WSGI transport asks for gzip but does not decode it; gzip is tested in test_compression.py.
    case.call_and_validate(headers={"Authorization": STAFF_AUTHORIZATION, "Accept-Encoding": "identity"},
                           additional_checks=[no_source_password])


def _routes(patterns, prefix: str = ""):
    for pattern in patterns:
        route = prefix + str(pattern.pattern).lstrip("^")
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route).removesuffix("$").replace("/?", "/")


def test_every_api_url_is_in_the_schema_the_run_covers():
    """A new endpoint under /api/ without a schema (a plain Django view, say) would escape the run: it fails here."""
    api = {route for route in _routes(get_resolver().url_patterns)
           if route.startswith("/api/") and route not in ("/api/schema/", "/api/docs/")}
    described = set(SchemaGenerator().get_schema(request=None, public=True)["paths"])
    assert api == described

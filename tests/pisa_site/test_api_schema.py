"""Schemathesis against the OpenAPI schema the app serves: every operation, positive and negative inputs, answered
in-process through the WSGI app (no network) while the warehouse and the metrics cache hold real data.

Per operation it checks: no 5xx, the status code is one the schema declares, the content type and body match the
schema, and input the schema rules out is refused with a 4xx. Seeded and bounded, so CI runs the same cases every
time in well under a minute. See README.md, "Security", for running it alone.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from ingestion.models import Source
from ingestion.pipeline import source_sync
from metrics.services import country_metrics_refresh
from pisa_site.embedded import _free_port
from pisa_site.wsgi import application
from tests.conftest import shared_path

COUNTRIES = {"ALB": 30, "ARG": 20, "FRA": 12}
UNREACHABLE_PASSWORD = "schema-run-s3cret"
MAX_EXAMPLES = 40  # per operation and generation mode, in the fuzzing phase (the coverage phase adds its own)
SEED = 20180
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "negative_data_rejection"]

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def published(source_db, django_capture_on_commit_callbacks):
    """The shared codebook, three countries' sources synced and their metrics published, and an unreachable source
    whose URL holds a password (so /api/v1/sources/ lists a failing source too)."""
    from codebook.services import codebook_load_file

    with django_capture_on_commit_callbacks(execute=True):
        codebook_load_file(path=shared_path("pisa2018", "codebook.csv"))
    for code, students in COUNTRIES.items():
        source = source_db(code)
        source.insert_students(students)
        source_sync(source_id=source.source.pk)
        country_metrics_refresh(country=code)
    dead = Source.objects.create(
        code="AUT", name="Austria (unreachable)",
        url=f"postgresql+psycopg2://reader:{UNREACHABLE_PASSWORD}@127.0.0.1:{_free_port()}/pisa_aut")
    source_sync(source_id=dead.pk)


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


@schema.parametrize()
@settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_openapi_schema(case):
    case.call_and_validate()

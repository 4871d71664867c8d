"""Log output never shows a password written in a URL, whichever process writes it (Django's or Celery's logging)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pisa_site.logs import text_passwords_hidden
from tests.conftest import ROOT, subprocess_env

PASSWORD = "s3cret-pw-9f2"


@pytest.mark.parametrize("text, shown", [
    (f"postgresql://reader:{PASSWORD}@db:5432/pisa_alb", "postgresql://reader:***@db:5432/pisa_alb"),
    (f"postgresql+psycopg2://reader:pass@{PASSWORD}@db/x", "postgresql+psycopg2://reader:***@db/x"),  # bare '@'
    (f"redis://:{PASSWORD}@redis:6379/1, redis://redis:6379/0", "redis://:***@redis:6379/1, redis://redis:6379/0"),
    (f"postgresql://reader@db/x?sslmode=require&password={PASSWORD}",
     "postgresql://reader@db/x?sslmode=require&password=***"),
    ("http://127.0.0.1:8000/api/v1/health/ by user@example.org",
     "http://127.0.0.1:8000/api/v1/health/ by user@example.org"),
    ("postgresql+psycopg2://reader:***@db/x", "postgresql+psycopg2://reader:***@db/x"),
])
def test_passwords_in_urls_are_hidden_and_nothing_else_changes(text, shown):
    assert text_passwords_hidden(text) == shown


LOG_A_PASSWORD = f"""
import logging
logger = logging.getLogger("ingestion.pipeline")
logger.warning("source at %s unavailable", "postgresql://reader:{PASSWORD}@db.example:5432/pisa_alb")
try:
    raise RuntimeError("could not connect to postgresql://reader:{PASSWORD}@db.example:5432/pisa_alb")
except RuntimeError:
    logger.exception("sync failed")
"""


def _run(setup: str) -> str:
    result = subprocess.run([sys.executable, "-c", setup + LOG_A_PASSWORD], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_the_web_process_logs_hide_url_passwords():
    """What gunicorn's and manage.py's processes log, through settings.LOGGING."""
    output = _run("import django; django.setup()\n")
    assert "source at postgresql://reader:***@db.example:5432/pisa_alb unavailable" in output
    assert "RuntimeError: could not connect to postgresql://reader:***@db.example" in output  # the traceback too
    assert PASSWORD not in output


def test_the_celery_worker_logs_hide_url_passwords():
    """A worker replaces Django's logging with its own handlers (app.log.setup, as `celery worker` calls it)."""
    output = _run("from pisa_site.celery import app\n"
                  "app.loader.import_default_modules()\n"
                  "app.log.setup(loglevel='INFO', colorize=False, hostname='logs@pytest')\n")
    assert "source at postgresql://reader:***@db.example:5432/pisa_alb unavailable" in output
    assert "RuntimeError: could not connect to postgresql://reader:***@db.example" in output
    assert PASSWORD not in output

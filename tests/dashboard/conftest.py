"""The live stack and a real headless Chromium for the dashboard's end-to-end tests.

One stack per module (gunicorn for the API and for its change stream, the ingestion and metrics Celery workers and beat, under honcho as `make run` starts
them), on the test database and the suite's Redis, fed by real source databases. The module's tests share it, so the
per-test flush of the metrics cache is turned off here: the stack's published metrics must survive between tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.db import connections

from pisa_site.embedded import free_port
from tests.conftest import ROOT, codebook_csv_path, subprocess_env

CHROMIUM = Path(os.environ.get("PISA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"]
ARTIFACTS = ROOT / "artifacts" / "dashboard"
STACK_STARTUP_SECONDS = 90
INITIAL_STUDENTS = 40
COUNTRIES = ("ALB", "ARG", "FRA")
ADMIN_USERNAME = "dashboard-admin"
ADMIN_PASSWORD = "dashboard-e2e-password"


@pytest.fixture(autouse=True)
def _clean_cache():
    """Overrides tests/conftest.py's flush of the metrics cache before each test (see the module docstring)."""
    yield


def chromium_or_fail() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does it when it is missing)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@dataclass
class LiveStack:
    url: str
    process: subprocess.Popen
    log_path: Path
    sources: dict = field(default_factory=dict)
    cnt_variable_id: int = 0
    # Every process of the stack once it is up: stopping waits for each, orphans included, so none keeps a
    # connection to the test database when pytest-django drops it.
    processes: list = field(default_factory=list)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_until(self, predicate, what: str, timeout: float = STACK_STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the stack exited ({self.process.returncode}) while waiting for {what}:\n"
                            f"{self.log_tail()}")
            if predicate():
                return
            time.sleep(0.25)
        pytest.fail(f"timed out waiting for {what}:\n{self.log_tail()}")

    def students_published(self) -> dict[str, int]:
        body = get_json(f"{self.url}/api/v1/countries/") or {"results": []}
        return {row["code"]: row["n_students"] for row in body["results"]}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        _, alive = psutil.wait_procs(self.processes, timeout=20)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def live_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.contrib.auth import get_user_model

    from codebook.models import Variable
    from codebook.services import codebook_load_file
    from tests.ingestion.factories import SourceDatabase

    chromium_or_fail()
    home = tmp_path_factory.mktemp("dashboard-stack")
    with django_db_blocker.unblock():
        codebook_load_file(path=codebook_csv_path())
        get_user_model().objects.create_superuser(ADMIN_USERNAME, "admin@example.org", ADMIN_PASSWORD)
        sources = {code: SourceDatabase(code) for code in COUNTRIES}
        for source in sources.values():
            source.insert_students(INITIAL_STUDENTS)
        cnt_variable_id = Variable.objects.get(name="CNT").pk

    port, stream_port = free_port(), free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = subprocess_env(PORT=str(port), STREAM_PORT=str(stream_port), PISA_HOME=str(home), DEBUG="1", WEB_WORKERS="1", INGEST_CONCURRENCY="3",
                         METRICS_CONCURRENCY="2", LOG_LEVEL="WARNING", PATH=f"{bin_dir}:{os.environ['PATH']}")
    log_path = home / "stack.log"
    with open(log_path, "wb") as log:
        # The Procfile's processes as `make run` starts them, less Flower, which the page does not use.
        process = subprocess.Popen(
            [f"{bin_dir}/honcho", "start", "--port", str(port), "web", "stream", "ingest", "metrics", "analysis",
             "watch", "beat"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = LiveStack(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, sources=sources,
                      cnt_variable_id=cnt_variable_id)
    try:
        stack.wait_until(lambda: get_json(f"{stack.url}/api/v1/health/") is not None, "the API")
        stack.wait_until(
            lambda: all(stack.students_published().get(code) == INITIAL_STUDENTS for code in COUNTRIES),
            f"{INITIAL_STUDENTS} students of each of {COUNTRIES} to be ingested and published")
        stack.processes = psutil.Process(process.pid).children(recursive=True)
        yield stack
    finally:
        stack.stop()
        with django_db_blocker.unblock():
            for source in sources.values():
                source.drop()
            # What pytest-django does after a transactional test: the next tests start from empty tables.
            call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def browser(live_stack):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API leaves an asyncio loop registered on this thread, which Django's guard against the ORM
    # in async code mistakes for async code. Nothing runs on that loop while a test touches the database (only the
    # test's own transaction does), so the guard is lifted while the browser is up.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium_or_fail()), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
            # With that loop registered, Django keeps a second connection per context: close it while it is still
            # reachable, or it would hold the test database open when pytest-django drops it.
            connections.close_all()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE")
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_stack, request):
    """A fresh laptop-sized tab. After the test: a screenshot in artifacts/, and no request left 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    requested: list[str] = []
    tab.on("request", lambda req: requested.append(req.url))
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    outside = [url for url in requested if not url.startswith(("http://127.0.0.1:", "data:", "blob:"))]
    assert outside == [], f"the page requested addresses outside this machine: {outside}"

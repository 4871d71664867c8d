"""Fixtures shared by every test: real PostgreSQL (pytest-django's test database), real Redis, real Celery workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PISA_SHARED_DIR") or ROOT.parent / "shared")


def shared_path(*parts: str) -> Path:
    """A file of the shared reference data. When it is not there the test is skipped, saying why, except under CI
    (CI=true), where a test whose data is missing fails: a CI machine without the data must not pass untested."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"shared reference data not found: {path} (set PISA_SHARED_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session", autouse=True)
def _empty_broker():
    """Tasks queued by an earlier, interrupted run must not be consumed by this run's workers."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    client.close()


@pytest.fixture(autouse=True)
def _clean_cache():
    """Each test starts with an empty metrics cache (the broker's database is left alone)."""
    from ingestion.apis import rendered_statuses_forget
    from metrics import cache

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    client.flushdb()
    cache.versions_forget()  # this process's snapshot of the metrics versions (metrics/cache.py) went with it
    rendered_statuses_forget()  # and its rendering of /api/v1/sources/ (ingestion/apis.py)
    yield
    client.close()


def wait_until(condition, timeout=60, interval=0.2) -> bool:
    """Poll `condition()` until it is true (True) or `timeout` seconds have passed (False): for real workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def codebook_editors_group():
    """The "Codebook editors" group, as its migration creates it. A transactional test elsewhere in the suite flushes
    the database, which takes the migration's group with it (permissions are recreated by the flush, groups not)."""
    import importlib

    from django.contrib.auth.models import Group, Permission

    migration = importlib.import_module("codebook.migrations.0002_codebook_editors_group")
    group, created = Group.objects.get_or_create(name=migration.EDITORS_GROUP)
    if not created:  # the migration's own group, untouched: what the tests of its permissions check
        return group
    group.permissions.set([
        Permission.objects.get(content_type__app_label="codebook", content_type__model=model,
                               codename=f"{action}_{model}")
        for model, action in migration.EDITOR_PERMISSIONS
    ])
    return group


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment a child process of the product needs to see what this test sees: the *test* database."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DATABASE_URL"] = (
        f"postgresql://{db['USER']}{':' + db['PASSWORD'] if db.get('PASSWORD') else ''}@{db['HOST']}:{db['PORT']}/"
        f"{db['NAME']}"
    )
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


class WorkerProcess:
    """A real `celery worker` process, consuming the given queues, against the test database and Redis.

    `env` overrides the child's environment (e.g. another broker in `CELERY_BROKER_URL`, which the readiness ping then
    uses too); `log` is a file for its output (default: the test's own)."""

    def __init__(self, queues: str, name: str, concurrency: int = 1, pool: str = "prefork", *,
                 env: dict[str, str] | None = None, log=None) -> None:
        self.name = f"{name}@pytest"
        self.env = subprocess_env(**(env or {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pisa_site", "worker", "--queues", queues, "--hostname",
             self.name, "--concurrency", str(concurrency), "--pool", pool, "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT if log else None,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        from pisa_site.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            if self._answers_ping(app):
                return
        raise TimeoutError(f"worker {self.name} did not answer within {timeout}s")

    def _answers_ping(self, app) -> bool:
        if self.env.get("CELERY_BROKER_URL", settings.CELERY_BROKER_URL) == settings.CELERY_BROKER_URL:
            return bool(app.control.ping(destination=[self.name], timeout=0.5))
        # Another broker: this process's app cannot reach it (Celery prefers CELERY_BROKER_URL from the environment
        # over any connection it is given), so ask with Celery's own command line, in the worker's environment.
        ping = subprocess.run([sys.executable, "-m", "celery", "-A", "pisa_site", "inspect", "ping", "--destination",
                               self.name, "--timeout", "1"], cwd=ROOT, env=self.env, capture_output=True)
        return ping.returncode == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def celery_worker_process(transactional_db):
    """Start real Celery workers on demand: `worker = celery_worker_process("ingestion,metrics")`."""
    started: list[WorkerProcess] = []

    def start(queues: str = "ingestion,metrics", name: str = "worker", **kwargs) -> WorkerProcess:
        worker = WorkerProcess(queues, f"{name}{len(started)}", **kwargs)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def source_db(transactional_db, tmp_path):
    """Create real source databases: `alb = source_db("ALB")`, `source_db("ARG", style="text")`."""
    created: list = []

    from tests.ingestion.factories import SourceDatabase

    shared_path("pisa2018", "codebook.csv")  # source tables are built from the codebook: skip, saying why, without it

    def make(code: str, **kwargs):
        source = SourceDatabase(code, tmp_path=tmp_path, **kwargs)
        created.append(source)
        return source

    yield make
    for source in created:
        source.drop()

"""Fixtures shared by every test: real PostgreSQL (pytest-django's test database), real Redis, real Celery workers."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

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


def codebook_csv_path() -> Path:
    """The codebook the tests decode with: the one the product ships (tests/codebook/test_shipped.py holds it equal to
    ../shared/pisa2018/codebook.csv, so a clone with nothing beside it tests the same statistics)."""
    return Path(settings.SHIPPED_CODEBOOK_PATH)


def country_means_path() -> Path:
    return Path(settings.SHIPPED_COUNTRY_MEANS_PATH)


GENERATED_SAMPLE_COUNTRIES = ("FRA", "ITA", "MEX")
GENERATED_SAMPLE_STUDENTS_PER_COUNTRY = 423  # the shared sample's size (1,269 students in three countries)


def students_sample_path() -> Path:
    """The students the statistics and ingestion tests are made of: the real-shaped sample of ../shared/ when it is
    there; otherwise (a clone with nothing beside it) students the simulator generates from the shipped codebook and
    country means, written once per test run in the sample's CSV format. Under CI=true the real sample is required
    (a missing one fails) unless PISA_TEST_SAMPLE=generated asks for the generated one."""
    real = SHARED / "pisa2018" / "students_sample.csv"
    wanted = os.environ.get("PISA_TEST_SAMPLE", "")
    if wanted not in ("", "generated"):
        pytest.fail(f"PISA_TEST_SAMPLE={wanted!r}: leave it unset (the shared sample when present) or say 'generated'")
    if wanted != "generated":
        if real.exists():
            return real
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared reference data not found: {real} (set PISA_SHARED_DIR, or PISA_TEST_SAMPLE=generated "
                        "to test on generated students)")
    return _generated_sample()


@functools.lru_cache(maxsize=1)
def _generated_sample() -> Path:
    import atexit
    import csv
    import shutil
    import tempfile

    from codebook.catalogue import read_codebook_csv
    from simulator.students import StudentFactory

    specs = read_codebook_csv(codebook_csv_path())
    factory = StudentFactory(seed=2018, specs=specs, sample_path=None, country_means_path=country_means_path())
    folder = Path(tempfile.mkdtemp(prefix="pisa-generated-sample-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "pisa2018" / "students_sample.csv"  # laid out as ../shared/ is, for PISA_SHARED_DIR
    path.parent.mkdir()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([spec.name for spec in specs])
        for country in GENERATED_SAMPLE_COUNTRIES:
            for row in factory.students(country, GENERATED_SAMPLE_STUDENTS_PER_COUNTRY):
                writer.writerow(["" if row[spec.name.lower()] is None else row[spec.name.lower()] for spec in specs])
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
    from pisa_site.compression import gzipped_forget

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    client.flushdb()
    cache.versions_forget()  # this process's snapshot of the metrics versions (metrics/cache.py) went with it
    rendered_statuses_forget()  # and its rendering of /api/v1/sources/ (ingestion/apis.py)
    gzipped_forget()  # and its gzipped answers (pisa_site/compression.py)
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


def warehouse_server() -> dict:
    """The test warehouse's server by TCP, as a URL names it: host, port, user, password. (Django's HOST may be the
    server's Unix socket directory instead: settings.DATABASE_SOCKET_DIR.)"""
    db, parts = settings.DATABASES["default"], urlsplit(settings.DATABASE_URL)
    return {"host": parts.hostname or "127.0.0.1", "port": str(parts.port or 5432), "user": db["USER"],
            "password": db.get("PASSWORD") or None}


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment a child process of the product needs to see what this test sees: the *test* database."""
    db, server = settings.DATABASES["default"], warehouse_server()
    env = dict(os.environ)
    env["DATABASE_URL"] = (
        f"postgresql://{server['user']}{':' + server['password'] if server['password'] else ''}@{server['host']}:"
        f"{server['port']}/{db['NAME']}"
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
def own_redis(tmp_path):
    """A redis-server of this test's own (the embedded one of a PISA_HOME under tmp_path), so that a test can stop and
    restart it without disturbing the rest of the suite."""
    from pisa_site.embedded import EmbeddedRedis

    home = tmp_path / "pisa-home"
    home.mkdir()
    server = EmbeddedRedis(home)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def source_db(transactional_db, tmp_path):
    """Create real source databases: `alb = source_db("ALB")`, `source_db("ARG", style="text")`."""
    created: list = []

    from tests.ingestion.factories import SourceDatabase

    def make(code: str, **kwargs):
        source = SourceDatabase(code, tmp_path=tmp_path, **kwargs)
        created.append(source)
        return source

    yield make
    for source in created:
        source.drop()

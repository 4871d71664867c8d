"""`make run`'s stack, for real: embedded services, migrations, gunicorn, Celery workers, beat and Flower come up,
answer, and one Ctrl-C stops every process they started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
from django.conf import settings

from pisa_site.embedded import EmbeddedServices, free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.stack
STARTUP_TIMEOUT = 120


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for_log(text: str, process: subprocess.Popen, log_path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if text in log_path.read_text():
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"{text!r} never appeared in the stack's log:\n{log_path.read_text()[-4000:]}")


def wait_for(url: str, process: subprocess.Popen, log_path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the stack exited early ({process.returncode}):\n{log_path.read_text()[-4000:]}")
        status = http_status(url)
        if status == 200:
            return status
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {STARTUP_TIMEOUT}s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture
def stack(tmp_path):
    home = tmp_path / "pisa-home"
    web_port, flower_port = free_port(), free_port()
    outside = {"DATABASE_URL", "DATABASE_SOCKET_DIR", "REDIS_URL", "CELERY_BROKER_URL"}
    env = {k: v for k, v in os.environ.items() if k not in outside}
    env.update(PISA_HOME=str(home), PORT=str(web_port), FLOWER_PORT=str(flower_port), DEBUG="1",
               DJANGO_SUPERUSER_PASSWORD="stack-test-password", INGEST_CONCURRENCY="1", METRICS_CONCURRENCY="1",
               WEB_WORKERS="1")
    # As in a new user's shell: the venv is not on PATH; `make run` must find its own programs.
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    log_path = tmp_path / "stack.log"
    with open(log_path, "wb") as log:
        # `make run` itself (the venv exists already); its own process group stands in for a terminal.
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield process, f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{flower_port}", log_path, home
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        EmbeddedServices(home).postgres.stop()
        EmbeddedServices(home).redis.stop()


def test_the_stack_comes_up_and_one_ctrl_c_stops_every_process(stack):
    process, web, flower, log_path, home = stack
    wait_for(f"{web}/api/v1/health/", process, log_path)
    assert http_status(f"{web}/admin/login/") == 200
    assert http_status(f"{web}/api/docs/") == 200
    assert http_status(f"{web}/api/schema/") == 200
    wait_for(f"{flower}/healthcheck", process, log_path)
    assert http_status(f"{flower}/") == 200

    output = log_path.read_text()
    assert "user admin  password stack-test-password" in output
    assert f"{web}/api/docs/" in output

    services = EmbeddedServices(home)
    launched = psutil.Process(process.pid).children(recursive=True)
    everything = [psutil.Process(process.pid), *launched,
                  psutil.Process(services.postgres.pid()), psutil.Process(services.redis.pid())]
    names = " ".join(p.name() for p in launched)
    for expected in ("honcho", "granian", "gunicorn", "celery", "simulate"):
        assert expected in names or any(expected in " ".join(p.cmdline()) for p in launched), expected
    if settings.PISA_CODEBOOK_PATH.exists():
        wait_for_log("Seeded", process, log_path)  # the 20 demo sources exist and responses flow

    os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    process.wait(timeout=60)
    gone, alive = psutil.wait_procs(everything, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"

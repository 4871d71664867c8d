"""docker-compose.yml only runs commands that exist in this project (there is no Docker engine to try it)."""

import base64
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from django.core.management import get_commands

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, spec in SERVICES.items() if spec.get("build") or spec.get("image") == "pisa-live:latest"]


def command_of(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else command


def test_the_deployment_has_every_role():
    assert {"postgres", "redis", "web", "worker", "beat", "flower"} <= set(SERVICES)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_restarts_and_long_running_ones_have_a_healthcheck(service):
    spec = SERVICES[service]
    assert "restart" in spec
    if spec["restart"] != "no":
        assert spec["healthcheck"]["test"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_commands_exist_in_the_project(service):
    command = command_of(service)
    program = command[0]
    if program == "python":
        assert command[1] == "manage.py"
        assert command[2] in get_commands(), f"{service}: no management command {command[2]!r}"
    elif program == "celery":
        assert command[1:3] == ["-A", "pisa_site"]
        assert command[3] in {"worker", "beat", "flower"}
        if command[3] == "worker":
            queues = command[command.index("--queues") + 1].split(",")
            from django.conf import settings

            assert set(queues) == {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    elif program == "gunicorn":
        assert command[1].endswith(".asgi") and "asgi" in command, f"{service}: gunicorn serves the stream's ASGI app"
        module = __import__(command[1], fromlist=["application"])
        assert callable(module.application)
    elif program == "granian":
        assert command[command.index("--interface") + 1] == "wsgi"
        module_name, _, name = next(arg for arg in command[1:] if arg.endswith(":application")).partition(":")
        assert callable(getattr(__import__(module_name, fromlist=[name]), name))
    else:
        pytest.fail(f"{service}: unexpected program {program}")


def test_the_image_is_built_from_this_repository():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile
    assert all(SERVICES[name].get("build") == "." or SERVICES[name].get("image") for name in APP_SERVICES)


def test_flower_requires_basic_auth_and_broker_never_evicts():
    assert any(arg.startswith("--basic-auth=") for arg in command_of("flower"))
    redis_command = command_of("redis")
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"


def test_env_example_names_every_variable_compose_needs():
    example = (ROOT / ".env.example").read_text()
    for variable in ("SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert f"{variable}=" in example


# --- Security: secrets required, HTTPS-only settings clean under `check --deploy`, Flower behind basic auth --------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?::(?P<kind>[-?])(?P<arg>[^}]*))?\}")


def env_example() -> dict[str, str]:
    """.env.example's KEY=VALUE lines, as compose reads .env (comments and blank lines aside)."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def filled_env() -> dict[str, str]:
    """.env.example with its empty secrets filled in as an operator is told to (strong random values)."""
    values = env_example()
    generated = {"SECRET_KEY": secrets.token_urlsafe(50), "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
                 "FLOWER_BASIC_AUTH": f"operator:{secrets.token_urlsafe(16)}",
                 "DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(16)}
    return {name: value or generated[name] for name, value in values.items()}


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ${X}, ${X:-default}, ${X:?error} (unset or empty), $$."""
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        current = env.get(match["name"], "")
        if match["kind"] == "?" and not current:
            raise LookupError(f"{match['name']}: {match['arg']}")
        if match["kind"] == "-" and not current:
            return match["arg"]
        return current

    return _VARIABLE.sub(substitute, value)


def container_env(service: str, env: dict[str, str]) -> dict[str, str]:
    """What the service's container sees: its env_file (.env), then its `environment`, substituted."""
    spec = SERVICES[service]
    container = dict(env) if spec.get("env_file") else {}
    container.update({name: str(value) for name, value in interpolate(spec.get("environment", {}), env).items()})
    return container


def test_the_secrets_env_example_leaves_empty_are_refused_until_set():
    """An operator who copies .env.example and forgets a secret gets a refusal naming it, not a default."""
    empty = {name for name, value in env_example().items() if not value}
    assert empty == {"SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "DJANGO_SUPERUSER_PASSWORD"}
    for name in empty - {"SECRET_KEY"}:  # SECRET_KEY: settings refuse to start (test_settings.py)
        env = {**filled_env(), name: ""}
        refused = []
        for service in SERVICES:
            try:
                interpolate({key: SERVICES[service].get(key) for key in ("command", "environment")}, env)
            except LookupError as exc:
                refused.append(str(exc))
        assert refused and all(message.startswith(name) for message in refused), (name, refused)


def test_check_deploy_reports_nothing_with_the_compose_environment(tmp_path):
    env = container_env("web", filled_env())
    assert env["DEBUG"] == "0"
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PISA_HOME": str(tmp_path), **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_would_say_so_for_a_plain_http_trial(tmp_path):
    """The same check on the settings .env.example's comment offers for a trial over HTTP: it does warn, so the
    test above is not passing for want of checks."""
    env = {**container_env("web", filled_env()), "SECURE_SSL_REDIRECT": "0", "SECURE_COOKIES": "0",
           "SECURE_HSTS_SECONDS": "0"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "PISA_HOME": str(tmp_path), **env},
                            capture_output=True, text=True)
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


@pytest.mark.parametrize("service", [name for name, spec in SERVICES.items() if spec.get("ports")])
def test_published_ports_are_on_the_hosts_loopback_only(service):
    """web is for the TLS proxy on the host, Flower's basic auth travels in clear text: neither faces the network
    unless the operator says so (WEB_PUBLISH / FLOWER_PUBLISH)."""
    for mapping in interpolate(SERVICES[service]["ports"], filled_env()):
        assert mapping.startswith("127.0.0.1:"), mapping


def test_the_web_healthcheck_asks_as_the_tls_proxy_would():
    """With SECURE_SSL_REDIRECT on, a plain-HTTP probe would get a redirect to https://127.0.0.1, which fails."""
    probe = " ".join(SERVICES["web"]["healthcheck"]["test"])
    assert "X-Forwarded-Proto': 'https'" in probe and "/api/v1/health/" in probe


@pytest.fixture
def flower_as_composed(tmp_path):
    """Flower started with compose's own command line (its --basic-auth from a filled-in .env) on a free port,
    against the test broker."""
    from pisa_site.embedded import free_port
    from tests.conftest import subprocess_env

    env = filled_env()
    port = free_port()
    command = [{"--address=0.0.0.0": "--address=127.0.0.1", "--port=5555": f"--port={port}"}.get(arg, arg)
               for arg in interpolate(command_of("flower"), env)]
    assert command[:4] == ["celery", "-A", "pisa_site", "flower"] and f"--port={port}" in command
    log = tmp_path / "flower.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, env=subprocess_env(),
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _status(f"{base}/healthcheck") != 200:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"Flower did not start:\n{log.read_text()[-2000:]}"
            time.sleep(0.3)
        yield base, env["FLOWER_BASIC_AUTH"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _status(url: str, credentials: str | None = None) -> int | None:
    request = urllib.request.Request(url)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_flower_as_composed_answers_401_without_its_credentials(flower_as_composed):
    base, credentials = flower_as_composed
    user, _, password = credentials.partition(":")
    for page in ("/", "/tasks", "/workers", "/api/workers", "/api/tasks"):
        assert _status(base + page) == 401, page
        assert _status(base + page, f"{user}:wrong-{password}") == 401, page
        assert _status(base + page, f"someone-else:{password}") == 401, page
    assert _status(base + "/", credentials) == 200
    assert _status(base + "/healthcheck") == 200  # what compose's healthcheck polls, without credentials

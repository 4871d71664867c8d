"""docker-compose.yml only runs commands that exist in this project (there is no Docker engine to try it)."""

import shlex
from pathlib import Path

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
            assert set(queues) == {"ingestion", "metrics"}
    elif program == "gunicorn":
        module, attribute = command[1].split(".wsgi")[0], "application"
        wsgi = __import__(f"{module}.wsgi", fromlist=[attribute])
        assert callable(getattr(wsgi, attribute))
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

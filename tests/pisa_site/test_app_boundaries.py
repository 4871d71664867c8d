"""The apps talk through public faces: no app imports another app's private name, and the app graph has no cycle.

Read from the source (ast), so that a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("ingestion", "metrics", "codebook", "dashboard", "simulator", "operations")
# The project: settings and shared plumbing (Redis client, locks, caches, the API's error shape) every app may use; it
# imports apps only to mount them (urls, the OpenAPI components, bootstrap).
PROJECT = "pisa_site"


def product_modules():
    for app in (*APPS, PROJECT):
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield app, path


def imports_of(path: Path):
    """(module, name) for every `from module import name` and (module, None) for every `import module`."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def cross_app_imports():
    for app, path in product_modules():
        for module, name in imports_of(path):
            target = module.split(".")[0]
            if target in (*APPS, PROJECT) and target != app:
                yield app, path.relative_to(ROOT), module, name


def test_no_app_imports_a_private_name_of_another():
    private = [f"{path}: from {module} import {name}" for _, path, module, name in cross_app_imports()
               if any(part.startswith("_") and not part.startswith("__") for part in module.split("."))
               or (name is not None and name.startswith("_"))]
    assert private == []


def test_the_app_graph_has_no_cycle():
    edges: dict[str, set[str]] = {app: set() for app in APPS}
    for app, _, module, _ in cross_app_imports():
        target = module.split(".")[0]
        if app in APPS and target in APPS:
            edges[app].add(target)

    def cycle_from(start, node, seen):
        for nxt in edges[node]:
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(start, nxt, seen)
                if found:
                    return [node, *found]
        return None

    cycles = [cycle for app in APPS if (cycle := cycle_from(app, app, {app}))]
    assert cycles == [], f"app import cycles: {cycles}"


def test_no_app_imports_another_apps_management_command():
    offenders = [f"{path}: {module}" for _, path, module, _ in cross_app_imports()
                 if ".management.commands." in module]
    assert offenders == []


def test_the_metrics_know_the_warehouse_only_by_its_public_face():
    used = sorted({module for app, _, module, _ in cross_app_imports()
                   if app == "metrics" and module.split(".")[0] == "ingestion"})
    assert used == ["ingestion.warehouse"]


def test_no_app_imports_the_operations():
    assert sorted({app for app, _, module, _ in cross_app_imports() if module.split(".")[0] == "operations"}) == []

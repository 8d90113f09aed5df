"""Imports run one way: koboldcluster (project glue) ← accounts ← servers ← generations ← stats
← benchmarks (which measure them all, and which nothing imports).

An app may import from the apps below it, never from one above: the rules of the lower apps
must not depend on the higher ones. Tests and migrations are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BASE = Path(__file__).resolve().parents[2]
LAYERS = ["koboldcluster", "accounts", "servers", "generations", "stats", "benchmarks"]


def _modules(package: str) -> list[Path]:
    return [
        path
        for path in (BASE / package).rglob("*.py")
        if "tests" not in path.parts and "migrations" not in path.parts
    ]


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_an_app_imports_only_from_the_apps_below_it(package):
    above = set(LAYERS[LAYERS.index(package) + 1 :])

    wrong = {
        str(path.relative_to(BASE)): sorted(imported_packages(path) & above)
        for path in _modules(package)
        if imported_packages(path) & above
    }

    assert wrong == {}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "upward.py"
    module.write_text("from generations.queue import job_pop\nimport servers.models\n")

    assert imported_packages(module) == {"generations", "servers"}

"""The domain imports no API face (issue 24): the faces are thin adapters over the use cases.

Each app's faces live in its `api/` package (`generations/api/original/`, `.../v2/`, ...);
the rest of the app (models, services, use cases, tasks, commands) is the domain. A domain
module that imports from `api/` would tie a use case to one API's shapes, so this walks
every domain module's imports (at any depth, including those inside functions) with `ast`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("generations", "servers", "accounts", "stats")
NOT_DOMAIN = {"api", "tests", "migrations"}


def domain_modules() -> Iterator[tuple[str, Path]]:
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if NOT_DOMAIN.isdisjoint(parts[1:]):
                yield ".".join(parts), path


def imported_modules(source: str) -> Iterator[str]:
    """Every module name an import statement names (`from a import b`: both `a` and `a.b`,
    since `b` may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def is_face(module: str) -> bool:
    parts = module.split(".")
    return len(parts) >= 2 and parts[0] in APPS and parts[1] == "api"


def face_imports(source: str) -> list[str]:
    return sorted({m for m in imported_modules(source) if is_face(m)})


def test_the_walk_sees_every_form_of_import():
    source = (
        "import generations.api.v2.views\n"
        "from generations.api import sse\n"
        "from generations import api\n"
        "def f():\n"
        "    from servers.api.original.views import server_or_404\n"
        "from generations.streaming import cut_at_stop\n"
        "from rest_framework import serializers\n"
    )
    assert face_imports(source) == [
        "generations.api",
        "generations.api.sse",
        "generations.api.v2.views",
        "servers.api.original.views",
        "servers.api.original.views.server_or_404",
    ]


def test_the_walk_finds_the_domain():
    found = {name for name, _ in domain_modules()}
    assert {"generations.streaming", "generations.canaries", "servers.services"} <= found
    assert not any(is_face(name) or ".tests." in name for name in found)


@pytest.mark.parametrize("module,path", list(domain_modules()), ids=lambda v: str(v))
def test_no_domain_module_imports_a_face(module, path):
    assert face_imports(path.read_text()) == [], f"{module} imports an API face"

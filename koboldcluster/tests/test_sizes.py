"""Modules under 400 lines and functions under 60 (issue 24), in the project's own code.

A module that outgrows the limit holds more than one responsibility, a function that does has
steps worth naming: split them by what they do rather than raise the limit. Tests and
migrations are not held to it. Lines are counted as `wc -l` does; a function's from its
first decorator to its last line.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Not the project's own code: tests, migrations, environments, caches, run-time files.
SKIPPED_DIRS = {"tests", "migrations", "__pycache__", "node_modules", "var"}
# Over the limit and not split yet. Both came with issue 27's cluster benchmark, merged while
# issue 24's split was under way and left to its author: split them and remove their rows.
ALLOWED_LONG_FUNCTIONS = {
    ("benchmarks/scripts/bench_cluster.py", "main"),
    ("benchmarks/scripts/cluster_hosts.py", "start_services"),
}


def own_modules() -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [
            name for name in subdirectories if name not in SKIPPED_DIRS and not name.startswith(".")
        ]
        for name in files:
            if name.endswith(".py") and not name.startswith("test_") and name != "conftest.py":
                yield Path(directory) / name


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_the_walk_finds_the_project_and_skips_tests():
    found = {str(path.relative_to(ROOT)) for path in own_modules()}
    assert {"generations/intake.py", "bridge/worker.py", "koboldcluster/settings.py"} <= found
    assert not any("/tests/" in name or "/migrations/" in name for name in found)


def test_a_long_function_is_seen_with_its_decorators():
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    source = f"@decorator\n@other\ndef long():\n{body}\nasync def short():\n    pass\n"
    assert long_functions(source) == [("long", 61)]
    assert long_functions(source, limit=61) == []


def test_no_module_is_over_400_lines():
    over = {
        str(path.relative_to(ROOT)): lines
        for path in own_modules()
        if (lines := path.read_text().count("\n")) > MAX_MODULE_LINES
    }
    assert over == {}


def test_no_function_is_over_60_lines():
    over = {
        (str(path.relative_to(ROOT)), name): lines
        for path in own_modules()
        for name, lines in long_functions(path.read_text())
    }
    assert {key: lines for key, lines in over.items() if key not in ALLOWED_LONG_FUNCTIONS} == {}
    # A row for a function split meanwhile is removed with it.
    assert over.keys() >= ALLOWED_LONG_FUNCTIONS

"""Every endpoint is declared once, in the route table (koboldcluster/routes.py, issue 24).

The URL patterns, the direct lane, holding, the waiting paths and the latency metrics all
derive from it; a route written anywhere else in the server's code fails here. Clients of the
API write its paths as any client does: the tests, the bridge (a separate program that
imports no Django), the benchmark commands and scripts (which drive the API as clients) and
the tests' real processes (koboldcluster/testing.py); docstrings
and comments are documentation.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from django.urls import get_resolver

from koboldcluster import direct, holding, metrics, routes
from koboldcluster.asgi import WAITING_PATHS

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = (
    "bridge/",
    "benchmarks/",  # the benchmark commands and their clients over real HTTP
    "koboldcluster/testing.py",  # starts real server processes for the tests and asks them
)


def route_strings() -> set[str]:
    """Each route as code would write it: with its leading slash, and without it where a
    slash is left (`models` is a word too), a parametrised one up to its parameter
    (`/generate/prompt/`); the table's prefixes too."""
    found = {*routes.API_PREFIXES, *routes.PAGE_PREFIXES, routes.KOBOLD_V1, routes.KOBOLD_ALIAS}
    for endpoint in routes.TABLE:
        if not endpoint.regex:
            found |= {endpoint.path, endpoint.url, endpoint.url.lstrip("/")}
    return {text for text in found if "/" in text and text.strip("/")}


def server_code() -> list[Path]:
    files = [*ROOT.glob("*/**/*.py"), *ROOT.glob("*/**/templates/**/*.html")]
    return [
        path
        for path in files
        if not path.relative_to(ROOT).as_posix().startswith((".", *CLIENTS))
        and "tests" not in path.parts
        and "migrations" not in path.parts
        and path != ROOT / "koboldcluster" / "routes.py"
    ]


def python_strings(source: str) -> list[tuple[int, str]]:
    """The string constants of a module but its docstrings (f-strings: each literal part)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


_LINKS = re.compile(r"""(?:href|src|action)="([^"{]*)""")


def template_strings(source: str) -> list[tuple[int, str]]:
    return [
        (source.count("\n", 0, match.start()) + 1, match.group(1))
        for match in _LINKS.finditer(source)
    ]


def test_no_route_is_written_outside_the_table():
    names = route_strings()
    found = []
    for path in server_code():
        source = path.read_text()
        strings = python_strings(source) if path.suffix == ".py" else template_strings(source)
        for line, text in strings:
            if text.split("?", 1)[0] in names:
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")

    assert not found, "routes written outside koboldcluster/routes.py:\n" + "\n".join(found)


def test_the_check_finds_a_route_written_elsewhere():
    source = 'PATHS = ("/generate/pop", f"/generate/prompt/{id}")\n"""/generate/pop docs"""\n'

    strings = [text for _, text in python_strings(source)]

    assert [text for text in strings if text in route_strings()] == [
        "/generate/pop",
        "/generate/prompt/",
    ]
    assert template_strings('<a href="/api/v2/workers">x</a>') == [(1, "/api/v2/workers")]


def test_the_url_patterns_are_the_table_in_its_order():
    patterns = get_resolver().url_patterns

    assert [str(pattern.pattern) for pattern in patterns] == [e.path for e in routes.TABLE]


def test_the_entry_holding_and_metrics_derive_from_the_table():
    assert {"/generate/pop", "/api/v2/generate/text/pop"} == holding.HELD_PATHS
    assert {
        "/api/v1/generate",
        "/api/latest/generate",
        "/v1/completions",
        "/v1/chat/completions",
        "/api/extra/generate/stream",
    } == WAITING_PATHS
    assert {route: api for route, (_, api) in metrics._TIMED.items()} == {
        "generate/pop": "original",
        "api/v2/generate/text/pop": "v2",
        "generate/submit": "original",
        "api/v2/generate/text/submit": "v2",
    }


def test_the_lane_takes_the_routes_the_table_gives_it():
    lane = {
        (e.lane.method, e.url): e.path for e in routes.TABLE if e.lane is not None
    }  # fmt: skip

    for (method, url), path in lane.items():
        asked = url + "8f3c4ad1-8a8c-4f4e-9a52-0c4c0e8a5a35" if url.endswith("/") else url
        found = direct.find(method, asked)
        assert found is not None and found[0].route == path, (method, url)
    assert direct.find("GET", "/generate/pop") is None
    assert direct.find("POST", "/api/v2/status/heartbeat") is None
    assert len(lane) == 10


def test_the_table_refuses_a_lane_get_without_its_parameter():
    bad = routes.Endpoint("generate/x", "v", routes.ORIGINAL, lane=routes.Lane("GET"))

    try:
        routes._check((bad,))
    except ValueError as error:
        assert "ends in its one parameter" in str(error)
    else:
        raise AssertionError("accepted")

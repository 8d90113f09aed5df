"""Check an API answer against the OpenAPI schema the cluster publishes at /api/schema.

The test suite runs every answer of the DRF test client through `check_response` (see the
root conftest.py), so the schema cannot drift from what the views answer: an undocumented
status code or a body that does not match its declared shape fails the test that got it.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import jsonschema

from koboldcluster import routes


@cache
def _schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


@cache
def _paths() -> list[tuple[re.Pattern[str], str]]:
    found = []
    for template in _schema()["paths"]:
        pattern = re.sub(r"\\\{[^/]+?\\\}", ".+", re.escape(template))
        found.append((re.compile(f"{pattern}\\Z"), template))
    # Literal segments beat parameters (workers/name/{name} before workers/{server_id}).
    found.sort(key=lambda item: (item[1].count("{"), -len(item[1])))
    return found


def _inline(node: Any, seen: tuple[str, ...] = ()) -> Any:
    """The schema with its $refs replaced by what they name, and OpenAPI's `nullable` made
    JSON Schema's null type."""
    if isinstance(node, list):
        return [_inline(item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return {}
        return _inline(_schema()["components"]["schemas"][name], (*seen, name))
    inlined = {key: _inline(value, seen) for key, value in node.items()}
    if inlined.pop("nullable", False):
        inlined = {"anyOf": [inlined, {"type": "null"}]}
    return inlined


def documented_response(path: str, method: str, status: int) -> dict[str, Any] | None:
    """The schema of the answer (None: not documented as JSON); AssertionError if the path,
    method or status code is not documented at all."""
    template = next((t for pattern, t in _paths() if pattern.match(path)), None)
    if template is None:
        raise AssertionError(f"{method} {path}: no such path in the OpenAPI schema")
    operation = _schema()["paths"][template].get(method.lower())
    assert operation is not None, f"{method} {template}: method not in the schema"
    responses = operation["responses"]
    answer = responses.get(str(status)) or responses.get("default")
    assert answer is not None, f"{method} {template}: status {status} not in the schema"
    content = answer.get("content", {}).get("application/json")
    return None if content is None else _inline(content["schema"])


def check_response(path: str, method: str, status: int, body: bytes, content_type: str) -> None:
    """Fail (AssertionError) when this answer is not what the schema says."""
    if routes.is_undocumented(path):
        return  # pages for people, the docs themselves, the operators' endpoints
    if status == 405 or method == "OPTIONS":
        return  # Django's and CORS' own answers, the same for every path
    # KoboldAI's `latest` is its `v1` again, documented once.
    path = path.replace(routes.KOBOLD_ALIAS, routes.KOBOLD_V1, 1)
    schema = documented_response(path, method, status)
    if schema is None or "json" not in content_type:
        return
    try:
        jsonschema.validate(json.loads(body), schema)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        raise AssertionError(
            f"{method} {path} {status}: the answer does not match the schema at "
            f"'{where}': {error.message}"
        ) from None

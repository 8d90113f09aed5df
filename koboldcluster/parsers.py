"""Request parsing and answer format for the API."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer

# No request of any API here nests deeper than a handful of levels; a body nested deeper is
# refused before anything walks it (serializers, JSON columns and logs all recurse).
MAX_JSON_DEPTH = 32


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class LenientJSONParser(JSONParser):
    """Parse every request body as JSON, whatever its Content-Type says.

    `curl -d '{...}'` sends `application/x-www-form-urlencoded` unless told otherwise; the
    original cluster read such bodies as JSON, so we do too. A body that is not JSON, or that
    nests more than MAX_JSON_DEPTH levels (Python's parser would run out of stack at about
    1000), is a 400.
    """

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            data = None
            too_deep = True
        else:
            too_deep = json_depth_exceeds(data)
        if too_deep:
            raise ParseError(f"JSON parse error - nested more than {MAX_JSON_DEPTH} levels deep.")
        return data


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Every API view renders JSON alone: answer it without reading the `Accept` header.

    Clients of these APIs send `application/json`, `*/*` or nothing; one asking for
    something else gets JSON rather than a 406, as from the AI Horde. Parsing the header
    was a twentieth of a status poll's CPU. A view with several renderers still negotiates.
    """

    def select_renderer(
        self, request: Any, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        if len(renderers) == 1:
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)

"""Request parsing for the API."""

from __future__ import annotations

from rest_framework.parsers import JSONParser


class LenientJSONParser(JSONParser):
    """Parse every request body as JSON, whatever its Content-Type says.

    `curl -d '{...}'` sends `application/x-www-form-urlencoded` unless told otherwise; the
    original cluster read such bodies as JSON, so we do too. A body that is not JSON is a 400.
    """

    media_type = "*/*"

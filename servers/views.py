"""The original API's server listing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from koboldcluster.api import parse_uuid
from koboldcluster.errors import NotFound
from servers.models import Server


def _server_body(server: Server) -> dict[str, Any]:
    return {
        "name": server.name,
        "id": str(server.id),
        "model": server.model,
        "max_length": server.max_length,
        "max_content_length": server.max_context_length,
        "tokens_generated": server.tokens_generated,
        "requests_fulfilled": server.requests_fulfilled,
        "latest_performance": server.latest_performance(),
    }


class ServerListView(APIView):
    def get(self, request: Request) -> Response:
        return Response([_server_body(s) for s in Server.objects.active().order_by("name")])


class ServerDetailView(APIView):
    def get(self, request: Request, server_id: str) -> Response:
        server_uuid = parse_uuid(server_id, rc="ServerNotFound", what="Server")
        server = Server.objects.filter(id=server_uuid).first()
        if server is None:
            raise NotFound(f"Server {server_id} is unknown.", rc="ServerNotFound")
        return Response(_server_body(server))


class ModelListView(APIView):
    def get(self, request: Request) -> Response:
        """Each model served by an active server, with how many servers run it."""
        counts = Counter(
            name
            for models in Server.objects.active().values_list("models", flat=True)
            for name in models
        )
        return Response(dict(sorted(counts.items())))

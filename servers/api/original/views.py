"""The original API's server listing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from koboldcluster.api import parse_uuid
from koboldcluster.errors import NotFound
from koboldcluster.openapi import error, many, shape
from servers.models import Server

ORIGINAL = ["Original cluster API"]
SERVER = shape(
    "Server",
    {
        "name": serializers.CharField(),
        "id": serializers.UUIDField(),
        "model": serializers.CharField(),
        "max_length": serializers.IntegerField(),
        "max_content_length": serializers.IntegerField(help_text="The context length."),
        "tokens_generated": serializers.IntegerField(),
        "requests_fulfilled": serializers.IntegerField(),
        "latest_performance": serializers.CharField(help_text="Seconds per token."),
    },
)


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
    throttle_scope = "read"

    @extend_schema(
        operation_id="servers",
        tags=ORIGINAL,
        summary="Servers that checked in within 5 minutes",
        responses={200: many(SERVER)},
    )
    def get(self, request: Request) -> Response:
        return Response([_server_body(s) for s in Server.objects.active().order_by("name")])


def server_or_404(server_id: str, *, rc: str) -> Server:
    """The server with this id (stale or not), with its owner; 404 `rc` when there is none."""
    uuid = parse_uuid(server_id, rc=rc, what="Server")
    server = Server.objects.select_related("owner").filter(id=uuid).first()
    if server is None:
        raise NotFound(f"Server {server_id} is unknown.", rc=rc)
    return server


class ServerDetailView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="server",
        tags=ORIGINAL,
        summary="One server, stale or not",
        responses={200: SERVER, 404: error("ServerNotFound")},
    )
    def get(self, request: Request, server_id: str) -> Response:
        return Response(_server_body(server_or_404(server_id, rc="ServerNotFound")))


class ModelListView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="models",
        tags=ORIGINAL,
        summary="Models served now: {model: active servers}",
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="{model: active servers}")
        },
    )
    def get(self, request: Request) -> Response:
        """Each model served by an active server, with how many servers run it."""
        counts = Counter(
            name
            for models in Server.objects.active().values_list("models", flat=True)
            for name in models
        )
        return Response(dict(sorted(counts.items())))

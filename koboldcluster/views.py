"""The AI Horde v2 status endpoints that describe the cluster itself."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from koboldcluster import __version__
from koboldcluster.openapi import shape


class HeartbeatView(APIView):
    # No throttle_scope: clients check it before anything else, and it costs nothing.

    @extend_schema(
        operation_id="horde_heartbeat",
        tags=["AI Horde v2: status"],
        summary="Is the cluster up?",
        responses={
            200: shape(
                "HordeHeartbeat",
                {
                    "message": serializers.CharField(help_text="OK"),
                    "version": serializers.CharField(help_text="The cluster's version."),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        return Response({"message": "OK", "version": __version__})


class ModesView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_status_modes",
        tags=["AI Horde v2: status"],
        summary="Cluster-wide modes (none is used here)",
        responses={
            200: shape(
                "HordeModes",
                {
                    "maintenance_mode": serializers.BooleanField(),
                    "invite_only_mode": serializers.BooleanField(),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        return Response({"maintenance_mode": False, "invite_only_mode": False})


class NewsView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_status_news",
        tags=["AI Horde v2: status"],
        summary="News (always empty)",
        responses={200: shape("HordeNews", {"news": serializers.CharField()}, many=True)},
    )
    def get(self, request: Request) -> Response:
        return Response([])

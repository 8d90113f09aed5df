"""The AI Horde v2 status family under /api/v2/status/: heartbeat, modes, news, the cluster's
load and the models served (research §2.7)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generations.selectors import ModelStats, model_stats, queue_load
from koboldcluster import __version__
from koboldcluster.api import validated
from koboldcluster.fields import InputSerializer
from koboldcluster.openapi import error, shape

WORKER_TYPES = ("image", "text", "interrogation")


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


PERFORMANCE_KEYS_IMAGE = (
    "queued_requests",
    "worker_count",
    "thread_count",
    "queued_megapixelsteps",
    "past_minute_megapixelsteps",
    "queued_forms",
    "interrogator_count",
    "interrogator_thread_count",
)


class PerformanceView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_status_performance",
        tags=["AI Horde v2: status"],
        summary="The cluster's load",
        responses={
            200: shape(
                "HordePerformance",
                {
                    "queued_text_requests": serializers.IntegerField(
                        help_text="Generation slots waiting plus jobs in flight."
                    ),
                    "queued_tokens": serializers.IntegerField(
                        help_text="Tokens still to generate for the waiting slots."
                    ),
                    "past_minute_tokens": serializers.IntegerField(),
                    "text_worker_count": serializers.IntegerField(),
                    "text_thread_count": serializers.IntegerField(),
                    **{
                        key: serializers.IntegerField(help_text="Images: 0.")
                        for key in PERFORMANCE_KEYS_IMAGE
                    },
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        load = queue_load()
        return Response(
            {
                "queued_text_requests": load.queued_requests,
                "queued_tokens": load.queued_tokens,
                "past_minute_tokens": load.past_minute_tokens,
                "text_worker_count": load.server_count,
                "text_thread_count": load.thread_count,
                **dict.fromkeys(PERFORMANCE_KEYS_IMAGE, 0),
            }
        )


def model_body(stats: ModelStats) -> dict[str, Any]:
    return {
        "name": stats.name,
        "count": stats.count,
        "performance": stats.performance,
        "queued": float(stats.queued),
        "jobs": float(stats.jobs),
        "eta": stats.eta,
        "type": "text",
    }


MODELS = shape(
    "HordeModel",
    {
        "name": serializers.CharField(),
        "count": serializers.IntegerField(help_text="Threads of active servers running it."),
        "performance": serializers.FloatField(help_text="Their mean speed, tokens per second."),
        "queued": serializers.FloatField(help_text="Tokens waiting for it."),
        "jobs": serializers.FloatField(help_text="Slots waiting plus jobs in flight for it."),
        "eta": serializers.IntegerField(help_text="Seconds to clear the queue; 10000: no server."),
        "type": serializers.CharField(),
    },
    many=True,
)


class ModelQuery(InputSerializer):
    # The AI Horde's default is image: text clients always ask for type=text.
    type = serializers.ChoiceField(WORKER_TYPES, default="image")
    min_count = serializers.IntegerField(required=False, min_value=0)
    max_count = serializers.IntegerField(required=False, min_value=0)
    model_state = serializers.ChoiceField(["known", "custom", "all"], default="all")


def model_query(request: Request, **defaults: str) -> dict[str, Any]:
    # An empty value (horde-sdk sends `type=`) means the default.
    given = {key: value for key, value in request.query_params.items() if value != ""}
    return validated(ModelQuery, {**defaults, **given})


def _models(query: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    # No model reference here: every model is a "custom" one, none is "known".
    if query["type"] != "text" or query["model_state"] == "known":
        return []
    found = []
    for stats in model_stats():
        if name is not None and stats.name != name:
            continue
        if "min_count" in query and stats.count < query["min_count"]:
            continue
        if "max_count" in query and stats.count > query["max_count"]:
            continue
        found.append(model_body(stats))
    return found


MODEL_PARAMETERS = [
    OpenApiParameter("type", str, description="text (the default, image, lists nothing)."),
    OpenApiParameter("min_count", int),
    OpenApiParameter("max_count", int),
    OpenApiParameter("model_state", str, description="all (default), custom; known: none."),
]


class ModelListView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_status_models",
        tags=["AI Horde v2: status"],
        summary="Models served now, with capacity and queue",
        parameters=MODEL_PARAMETERS,
        responses={200: MODELS, 400: error("An unknown type or model_state")},
    )
    def get(self, request: Request) -> Response:
        return Response(_models(model_query(request)))


class ModelDetailView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_status_model",
        tags=["AI Horde v2: status"],
        summary="One model (a list of at most one)",
        parameters=MODEL_PARAMETERS,
        responses={200: MODELS},
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(_models(model_query(request, type="text"), name))

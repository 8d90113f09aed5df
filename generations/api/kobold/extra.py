"""The rest of KoboldCpp's /api/extra/ that KoboldAI Lite and SillyTavern call on connect.

Lite calls `true_max_context_length`, `preloadstory` and `/sdapi/v1/sd-models` as soon as
`/api/extra/version` names a KoboldCpp version, and `perf` when its status label is clicked
(Lite's index.html, connect_custom_endpoint). Each answers as a KoboldCpp without a preloaded
story or an image model would, with the cluster's own figures where KoboldCpp has figures.
"""

from __future__ import annotations

import time

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from generations.api.kobold.views import KOBOLD, VALUE, KoboldView, largest_context
from generations.selectors import performance
from koboldcluster.openapi import shape

STARTED = time.time()


class TrueMaxContextLengthView(KoboldView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="kobold_true_max_context_length",
        tags=KOBOLD,
        summary="The largest context an active server takes (KoboldCpp's own size)",
        description="As /api/v1/config/max_context_length: the cluster's largest. A request "
        "asking for more is served with this much (the front of its prompt cut).",
        responses={200: VALUE},
    )
    def get(self, request: Request) -> Response:
        return Response({"value": largest_context()})


class PreloadStoryView(KoboldView):
    @extend_schema(
        operation_id="kobold_preloadstory",
        tags=KOBOLD,
        summary="No preloaded story",
        description="`{}`, as KoboldCpp answers without a preloaded story.",
        responses={200: shape("KoboldPreloadStory", {})},
    )
    def get(self, request: Request) -> Response:
        return Response({})


class SdModelsView(KoboldView):
    @extend_schema(
        operation_id="kobold_sd_models",
        tags=KOBOLD,
        summary="No image models",
        description="`[]`, as KoboldCpp answers without an image model: the cluster "
        "generates text only.",
        responses={200: {"type": "array", "items": {"type": "object"}}},
    )
    def get(self, request: Request) -> Response:
        return Response([])


PERF = shape(
    "KoboldPerf",
    {
        "last_process": serializers.FloatField(),
        "last_eval": serializers.FloatField(),
        "last_token_count": serializers.IntegerField(),
        "last_seed": serializers.IntegerField(),
        "total_gens": serializers.IntegerField(),
        "stop_reason": serializers.IntegerField(),
        "total_img_gens": serializers.IntegerField(),
        "queue": serializers.IntegerField(),
        "idle": serializers.IntegerField(),
        "hordeexitcounter": serializers.IntegerField(),
        "uptime": serializers.FloatField(),
        "idletime": serializers.FloatField(),
        "quiet": serializers.BooleanField(),
    },
)


class PerfView(KoboldView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="kobold_perf",
        tags=KOBOLD,
        summary="The cluster's load, in KoboldCpp's words",
        description="`queue`: generation slots waiting for a server; `idle`: 1 when no server "
        "is generating; `last_token_count` and `last_eval` (seconds per token): the latest "
        "delivered generation; `total_gens`: generations the active servers delivered; "
        "`uptime`: seconds this web process has run; `idletime`: seconds since the latest "
        "generation. Prompt processing time and seeds are not known to the cluster (0, -1).",
        responses={200: PERF},
    )
    def get(self, request: Request) -> Response:
        perf = performance()
        return Response(
            {
                "last_process": 0.0,
                "last_eval": round(perf.last_eval, 4),
                "last_token_count": perf.last_token_count,
                "last_seed": -1,
                "total_gens": perf.total_gens,
                "stop_reason": -1,
                "total_img_gens": 0,
                "queue": perf.queue,
                "idle": 0 if perf.busy else 1,
                "hordeexitcounter": 0,
                "uptime": round(time.time() - STARTED, 1),
                "idletime": round(perf.idle_seconds, 1),
                "quiet": False,
            }
        )

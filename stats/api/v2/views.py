"""The AI Horde's text statistics endpoints, over the rollups."""

from __future__ import annotations

from datetime import timedelta

from django.core.cache import cache
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from koboldcluster.openapi import shape
from stats.selectors import StatsReader

# The AI Horde caches these for 50 s; a client polling them costs one computation a while.
CACHE_SECONDS = 30
WINDOWS = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "month": timedelta(days=30),
    "total": None,
}


def _totals() -> dict:
    reader = StatsReader()
    answer = {}
    for name, span in WINDOWS.items():
        per_model = reader.window(reader.now - span if span else None)
        answer[name] = {
            "requests": sum(t.generations for t in per_model.values()),
            "tokens": sum(t.tokens for t in per_model.values()),
        }
    return answer


def _models() -> dict:
    reader = StatsReader()
    answer = {}
    for name in ("day", "month", "total"):
        span = WINDOWS[name]
        per_model = reader.window(reader.now - span if span else None)
        answer[name] = {
            model: t.generations for model, t in sorted(per_model.items()) if t.generations
        }
    return answer


class HordeTextStatsPeriodSerializer(serializers.Serializer):
    """Documentation only: one period of the totals."""

    requests = serializers.IntegerField(help_text="Generations delivered.")
    tokens = serializers.IntegerField(help_text="Their tokens.")


class TotalsView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_stats_text_totals",
        tags=["AI Horde v2: status"],
        summary="Generations and tokens in the last minute, hour, day, 30 days and in all",
        responses={
            200: shape(
                "HordeTextStatsTotals", {name: HordeTextStatsPeriodSerializer() for name in WINDOWS}
            ),
        },
    )
    def get(self, request: Request) -> Response:
        return Response(cache.get_or_set("stats:v2:totals", _totals, CACHE_SECONDS))


class ModelsView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_stats_text_models",
        tags=["AI Horde v2: status"],
        summary="Generations per model in the last day, 30 days and in all",
        responses={
            200: shape(
                "HordeTextStatsModels",
                {
                    name: serializers.DictField(child=serializers.IntegerField())
                    for name in ("day", "month", "total")
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        return Response(cache.get_or_set("stats:v2:models", _models, CACHE_SECONDS))

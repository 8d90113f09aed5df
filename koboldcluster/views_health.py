"""`/healthz` and `/readyz` for load balancers, orchestrators and the test suite.

No key, no rate limit: a probe must never be refused for asking too often, and each check is
a trivial query. CORS as on every API path.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from koboldcluster.health import readiness
from koboldcluster.openapi import shape

CHECKS = serializers.DictField(
    child=shape(
        "ReadinessCheck",
        {"ok": serializers.BooleanField(), "detail": serializers.CharField()},
    ),
    help_text="Each check by name: `database` (reachable), `migrations` (all applied).",
)


class ProbeView(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []


class HealthView(ProbeView):
    @extend_schema(
        operation_id="healthz",
        tags=["Operations"],
        summary="Is the process alive? (liveness; checks nothing else)",
        responses={200: shape("Health", {"status": serializers.CharField(help_text="ok")})},
    )
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyView(ProbeView):
    @extend_schema(
        operation_id="readyz",
        tags=["Operations"],
        summary="Can it serve? (readiness: database reachable, migrations applied)",
        responses={
            200: shape(
                "Ready", {"status": serializers.CharField(help_text="ready"), "checks": CHECKS}
            ),
            503: shape(
                "NotReady",
                {
                    "status": serializers.CharField(help_text="not ready"),
                    "failed": serializers.ListField(
                        child=serializers.CharField(), help_text="The names of the failed checks."
                    ),
                    "checks": CHECKS,
                },
            ),
        },
    )
    def get(self, request: Request) -> Response:
        ready, checks = readiness()
        if ready:
            return Response({"status": "ready", "checks": checks})
        failed = [name for name, result in checks.items() if not result["ok"]]
        return Response({"status": "not ready", "failed": failed, "checks": checks}, status=503)

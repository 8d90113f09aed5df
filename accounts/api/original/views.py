"""The original API's ledger views: tokens received and contributed per username."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import (
    tokens_by_username,
)

ORIGINAL = ["Original cluster API"]
ACCOUNTS = ["Accounts and API keys"]
TOKENS_BY_USER = OpenApiResponse(OpenApiTypes.OBJECT, description="{username: tokens}")


class UsageView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="usage",
        tags=ORIGINAL,
        summary="{username: tokens received}",
        responses={200: TOKENS_BY_USER},
    )
    def get(self, request: Request) -> Response:
        """Tokens each user has received from the cluster."""
        return Response(tokens_by_username("tokens_used"))


class ContributionsView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="contributions",
        tags=ORIGINAL,
        summary="{username: tokens their servers generated}",
        responses={200: TOKENS_BY_USER},
    )
    def get(self, request: Request) -> Response:
        """Tokens each user's servers have generated for others."""
        return Response(tokens_by_username("tokens_contributed"))

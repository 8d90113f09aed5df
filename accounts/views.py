"""The original API's ledger views."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import tokens_by_username


class UsageView(APIView):
    def get(self, request: Request) -> Response:
        """Tokens each user has received from the cluster."""
        return Response(tokens_by_username("tokens_used"))


class ContributionsView(APIView):
    def get(self, request: Request) -> Response:
        """Tokens each user's servers have generated for others."""
        return Response(tokens_by_username("tokens_contributed"))

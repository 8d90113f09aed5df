"""The AI Horde v2 worker and model endpoints, under /api/v2/ (research §2.5, §2.7).

`/api/v2/workers` and the original `/servers` list the same servers.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import HasApiKeyToChange, LenientApiKeyAuthentication, api_user
from accounts.models import User
from koboldcluster.api import validated
from koboldcluster.errors import NotFound
from koboldcluster.fields import InputSerializer, StrictBooleanField, StrictCharField
from koboldcluster.openapi import APIKEY_HEADER, APIKEY_HEADER_REQUIRED, error, many, shape
from servers.api.original.views import server_or_404
from servers.models import Server
from servers.services import server_delete, server_modify
from servers.trust import server_standing

WORKER_TYPES = ("image", "text", "interrogation")


def worker_body(server: Server, viewer: User | None) -> dict[str, Any]:
    """The AI Horde's worker object for a text worker; null fields are left out.

    The owner and moderators also see the owner's name, `paused` and the messages.
    """
    body: dict[str, Any] = {
        "type": "text",
        "name": server.name,
        "id": str(server.id),
        "online": server.is_active(),
        "requests_fulfilled": server.requests_fulfilled,
        "uncompleted_jobs": server.uncompleted_jobs,
        # Kudos are tokens: what the server generated is what it earned.
        "kudos_rewards": float(server.tokens_generated),
        "kudos_details": {"generated": float(server.tokens_generated), "uptime": 0},
        "performance": (
            f"{server.speed:.1f} tokens per second"
            if server.requests_fulfilled
            else "No requests fulfilled yet"
        ),
        "threads": server.threads,
        "uptime": server.uptime,
        "maintenance_mode": server.maintenance,
        "trusted": server.owner.trusted,
        "flagged": server.owner.flagged,
        "nsfw": server.nsfw,
        "models": server.models,
        # The AI Horde's "no team"; never the string "None", which breaks horde-sdk.
        "team": {"name": None, "id": None},
        "bridge_agent": server.bridge_agent or "unknown:0:unknown",
        "max_length": server.max_length,
        "max_context_length": server.max_context_length,
        "tokens_generated": server.tokens_generated,
        # Trust and quality (README): anyone sees a server's standing, never text or reasons
        # of ratings.
        "paused": server.paused,
        "paused_reason": server.paused_reason if server.paused else "",
        "success_rate": server_standing(server)["success_rate"],
    }
    if server.info:
        body["info"] = server.info
    if viewer is not None and (viewer.pk == server.owner_id or viewer.moderator):
        body["owner"] = server.owner.horde_name
        body["messages"] = []
    return body


WORKER = shape(
    "HordeWorker",
    {
        "type": serializers.ChoiceField(["text"]),
        "name": serializers.CharField(),
        "id": serializers.UUIDField(),
        "online": serializers.BooleanField(help_text="Checked in within the last 5 minutes."),
        "requests_fulfilled": serializers.IntegerField(),
        "uncompleted_jobs": serializers.IntegerField(help_text="Jobs it failed or dropped."),
        "kudos_rewards": serializers.FloatField(
            help_text="Tokens it generated (kudos are tokens)."
        ),
        "kudos_details": serializers.DictField(help_text="{generated: tokens, uptime: 0}"),
        "performance": serializers.CharField(help_text='e.g. "12.3 tokens per second".'),
        "threads": serializers.IntegerField(),
        "uptime": serializers.IntegerField(help_text="Seconds checked in and working."),
        "maintenance_mode": serializers.BooleanField(),
        "info": serializers.CharField(required=False),
        "trusted": serializers.BooleanField(help_text="Its owner is trusted."),
        "flagged": serializers.BooleanField(),
        "nsfw": serializers.BooleanField(),
        "models": serializers.ListField(child=serializers.CharField()),
        "team": serializers.DictField(help_text="{name: null, id: null}: no teams here."),
        "bridge_agent": serializers.CharField(),
        "max_length": serializers.IntegerField(),
        "max_context_length": serializers.IntegerField(),
        "tokens_generated": serializers.IntegerField(),
        "owner": serializers.CharField(required=False, help_text="Owner and moderators only."),
        "paused": serializers.BooleanField(
            help_text="Paused by the cluster's rules or an administrator: it gets only its "
            "owner's requests (README: Trust and quality)."
        ),
        "paused_reason": serializers.CharField(help_text='Why it is paused; "" when it is not.'),
        "success_rate": serializers.FloatField(
            allow_null=True,
            help_text="Share of its recent jobs (about the last 100) delivered rather than "
            "given back or timed out; null before its first.",
        ),
    },
)


class WorkerListView(APIView):
    throttle_scope = "read"
    # The AI Horde ignores an unknown key here (horde-sdk sends the anonymous one anyway).
    authentication_classes = [LenientApiKeyAuthentication]

    @extend_schema(
        operation_id="horde_workers",
        tags=["AI Horde v2: servers"],
        summary="The servers that checked in within the last 5 minutes",
        parameters=[
            APIKEY_HEADER,
            OpenApiParameter("type", str, description="text, image, interrogation or empty."),
            OpenApiParameter("name", str, description="Only this server (any letter case)."),
        ],
        responses={200: many(WORKER)},
    )
    def get(self, request: Request) -> Response:
        servers = Server.objects.active().select_related("owner").order_by("name")
        name = request.query_params.get("name")
        if name:
            servers = servers.filter(name__iexact=name)
        elif request.query_params.get("type") in ("image", "interrogation"):
            servers = servers.none()  # a text-only cluster
        viewer = api_user(request)
        return Response([worker_body(server, viewer) for server in servers])


def _server(server_id: str) -> Server:
    return server_or_404(server_id, rc="WorkerNotFound")


class WorkerDetailView(APIView):
    throttle_scope = "read"
    permission_classes = [HasApiKeyToChange]

    def get_authenticators(self) -> list:
        # Reading ignores an unknown key; changing or deleting needs a valid one (401).
        if getattr(self, "request", None) is not None and self.request.method == "GET":
            return [LenientApiKeyAuthentication()]
        return super().get_authenticators()

    class Input(InputSerializer):
        maintenance = StrictBooleanField(required=False)
        maintenance_msg = StrictCharField(max_length=1000, required=False, allow_blank=True)
        paused = StrictBooleanField(required=False, help_text="Moderators only.")
        info = StrictCharField(max_length=1000, required=False, allow_blank=True)
        name = StrictCharField(min_length=5, max_length=100, required=False)
        team = StrictCharField(required=False, allow_blank=True, help_text='Only "": no teams.')

    @extend_schema(
        operation_id="horde_worker",
        tags=["AI Horde v2: servers"],
        summary="One server, stale or not",
        parameters=[APIKEY_HEADER],
        responses={200: WORKER, 404: error("WorkerNotFound")},
    )
    def get(self, request: Request, server_id: str) -> Response:
        return Response(worker_body(_server(server_id), api_user(request)))

    @extend_schema(
        operation_id="horde_worker_modify",
        tags=["AI Horde v2: servers"],
        summary="Change a server (its owner or a moderator)",
        description="maintenance (with maintenance_msg, shown to its bridge), info, name; "
        "paused (moderators). Answers only the keys that changed.",
        parameters=[APIKEY_HEADER_REQUIRED],
        request=Input,
        responses={
            200: shape(
                "HordeWorkerModified",
                {
                    "maintenance": serializers.BooleanField(required=False),
                    "paused": serializers.BooleanField(required=False),
                    "info": serializers.CharField(required=False),
                    "name": serializers.CharField(required=False),
                    "team": serializers.CharField(required=False),
                },
            ),
            400: error("NoWorkerModSelected, WorkerNameAlreadyExists"),
            401: error("InvalidAPIKey"),
            403: error("NotOwner, NotModerator, AnonForbidden"),
            404: error("WorkerNotFound, TeamNotFound"),
        },
    )
    def put(self, request: Request, server_id: str) -> Response:
        data = validated(self.Input, request.data)
        actor = api_user(request)
        return Response(server_modify(server=_server(server_id), actor=actor, **data))

    @extend_schema(
        operation_id="horde_worker_delete",
        tags=["AI Horde v2: servers"],
        summary="Delete a server (its owner or a moderator)",
        parameters=[APIKEY_HEADER_REQUIRED],
        responses={
            200: shape(
                "HordeWorkerDeleted",
                {"deleted_id": serializers.UUIDField(), "deleted_name": serializers.CharField()},
            ),
            403: error("NotOwner, AnonForbidden"),
            404: error("WorkerNotFound"),
        },
    )
    def delete(self, request: Request, server_id: str) -> Response:
        actor = api_user(request)
        server = _server(server_id)
        server_delete(server=server, actor=actor)
        return Response({"deleted_id": str(server.id), "deleted_name": server.name})


class WorkerByNameView(APIView):
    throttle_scope = "read"
    authentication_classes = [LenientApiKeyAuthentication]

    @extend_schema(
        operation_id="horde_worker_by_name",
        tags=["AI Horde v2: servers"],
        summary="One server by name",
        parameters=[APIKEY_HEADER],
        responses={200: WORKER, 404: error("WorkerNotFound")},
    )
    def get(self, request: Request, name: str) -> Response:
        server = Server.objects.select_related("owner").filter(name=name).first()
        if server is None:
            raise NotFound(f"Server {name!r} is unknown.", rc="WorkerNotFound")
        return Response(worker_body(server, api_user(request)))

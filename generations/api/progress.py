"""Servers post a job's text so far while generating (both protocols): streams show it.

Thin views over `generations.progress.job_progress`; authenticated like the submit, and
answered by the direct lane like it (koboldcluster/direct.py): a streamed job posts up to 10
times a second and every job heartbeats, so the request stack's cost matters.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import HasApiKey, api_user
from generations.api.fields import GenerationField, server_credentials
from generations.api.original.views import ORIGINAL
from generations.progress import job_progress
from koboldcluster.api import validated
from koboldcluster.fields import InputSerializer, optional_text
from koboldcluster.openapi import APIKEY_HEADER_REQUIRED, error, shape
from servers.services import Credentials

DESCRIPTION = (
    "The whole text generated so far (not a delta), at most every 0.1 s while generating; "
    "the cluster keeps only the latest, never in the database, and streams it to the "
    "requester. The submit stays the record of the generation. Without `text`, a "
    "heartbeat: the server is still at work on the job (every few seconds while a job "
    "that is not streamed generates). A job that showed such signs of life and then none "
    "for KOBOLDCLUSTER_STALL_SECONDS is given back to the queue. 404 InvalidJobID or "
    "AbortedGen: the cluster no longer wants this job (stop generating it)."
)
TEXT_HELP = "The whole text so far; leave it out for a heartbeat."
RESPONSES = {
    200: shape("ProgressTaken", {"ok": serializers.BooleanField()}),
    400: error("ValidationError"),
    401: error("CredentialsRequired, InvalidCredentials, InvalidAPIKey"),
    403: error("WrongCredentials: the job is another account's server's"),
    404: error("InvalidJobID (unknown or expired), AbortedGen (no longer processing)"),
}


class ProgressView(APIView):
    throttle_scope = "worker"

    class Input(InputSerializer):
        id = serializers.UUIDField()
        password = optional_text(max_length=1024, trim_whitespace=False)
        text = GenerationField(max_length=1_000_000, required=False, help_text=TEXT_HELP)

    @extend_schema(
        operation_id="server_progress",
        tags=ORIGINAL,
        summary="A server posts the text generated so far",
        description=DESCRIPTION,
        request=Input,
        responses=RESPONSES,
    )
    def post(self, request: Request) -> Response:
        return Response(self.reply(validated(self.Input, request.data), request))

    @staticmethod
    def reply(data: dict[str, Any], request: Any) -> dict[str, Any]:
        """The answer to a valid request (this view's, and the direct lane's)."""
        credentials = server_credentials(request, data)
        job_progress(job_id=data["id"], credentials=credentials, text=data.get("text"))
        return {"ok": True}


class TextProgressView(APIView):
    throttle_scope = "worker"
    permission_classes = [HasApiKey]

    class Input(InputSerializer):
        id = serializers.UUIDField(help_text="A job id from the pop's `ids`.")
        text = GenerationField(max_length=1_000_000, required=False, help_text=TEXT_HELP)

    @extend_schema(
        operation_id="horde_text_progress",
        tags=["AI Horde v2: servers"],
        summary="A server posts the text generated so far (this cluster's extension)",
        description=DESCRIPTION,
        parameters=[APIKEY_HEADER_REQUIRED],
        request=Input,
        responses=RESPONSES,
    )
    def post(self, request: Request) -> Response:
        return Response(self.reply(validated(self.Input, request.data), request))

    @staticmethod
    def reply(data: dict[str, Any], request: Any) -> dict[str, Any]:
        """The answer to a valid request (this view's, and the direct lane's)."""
        credentials = Credentials(api_user=api_user(request))
        job_progress(job_id=data["id"], credentials=credentials, text=data.get("text"))
        return {"ok": True}

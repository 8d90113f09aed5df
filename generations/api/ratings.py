"""Rating a generation, through each face (generations/ratings.py has the rules).

- AI Horde v2: `POST /api/v2/generate/text/rate/<id>`, the id the async request answered,
  or an OpenAI face's `cmpl-…`/`chatcmpl-…` id (the key as `apikey` or `Authorization:
  Bearer`, as that face takes it);
- the original API: `POST /generate/rate/<id>` (the `apikey` header, or `username` and
  `password` as for the request);
- the KoboldAI face: `POST /api/extra/rate` with the `genkey` the generate request sent.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import BearerApiKeyAuthentication, api_user
from accounts.identity import anonymous_user, user_for_request
from accounts.models import User
from generations.api.kobold.views import KOBOLD, KoboldView
from generations.frontend import genkey_prompt
from generations.ratings import BAD, GOOD, REASON_MAX, generation_rate, request_id
from koboldcluster.api import validated
from koboldcluster.errors import NotFound
from koboldcluster.fields import InputSerializer, StrictCharField, StrictIntegerField, optional_text
from koboldcluster.openapi import error, shape


class RateInput(InputSerializer):
    rating = serializers.ChoiceField([GOOD, BAD])
    reason = optional_text(
        max_length=REASON_MAX,
        help_text="Why (optional): kept with the job for administrators only, deleted with "
        "the request.",
    )
    generation = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        help_text="Which generation (0-based, in the status' order); all not yet rated "
        "when left out.",
    )


RATED = shape(
    "Rated",
    {
        "rating": serializers.ChoiceField([GOOD, BAD]),
        "generations": serializers.ListField(
            child=serializers.IntegerField(), help_text="The generations rated."
        ),
    },
)
RESPONSES = {
    200: RATED,
    400: error("ValidationError, NotRateable: no generation (left) to rate"),
    401: error("InvalidAPIKey, CredentialsRequired, InvalidCredentials"),
    403: error("NotYourRequest: only its requester may rate it"),
    404: error("RequestNotFound: unknown or expired"),
}
DESCRIPTION = (
    "Say whether a generation of your request was good or bad, while the request lives. "
    "It counts in the record of the server that made it (README: Trust and quality). Only "
    "the requester may rate: the same key, or without one the same address."
)


def _rate(prompt_id: Any, user: User, data: dict[str, Any]) -> dict[str, Any]:
    rated = generation_rate(
        prompt_id=prompt_id,
        user=user,
        rating=data["rating"],
        reason=data.get("reason") or "",
        generation=data.get("generation"),
    )
    return {"rating": rated.rating, "generations": rated.generations}


class HordeRateView(APIView):
    throttle_scope = "status"
    authentication_classes = [BearerApiKeyAuthentication]

    @extend_schema(
        operation_id="horde_text_rate",
        tags=["AI Horde v2: generate"],
        summary="Rate a generation of your request",
        description=DESCRIPTION,
        request=RateInput,
        responses=RESPONSES,
    )
    def post(self, request: Request, prompt_id: str) -> Response:
        data = validated(RateInput, request.data)
        user = api_user(request) or anonymous_user()
        return Response(_rate(request_id(prompt_id), user, data))


class OriginalRateView(APIView):
    throttle_scope = "status"

    class Input(RateInput):
        username = optional_text(max_length=150)
        password = optional_text(max_length=1024, trim_whitespace=False)

    @extend_schema(
        operation_id="prompt_rate",
        tags=["Original cluster API"],
        summary="Rate a generation of your request",
        description=DESCRIPTION + " Send the `username` (and `password`) the request was "
        "sent with, or the same `apikey` header.",
        request=Input,
        responses=RESPONSES,
    )
    def post(self, request: Request, prompt_id: str) -> Response:
        data = validated(self.Input, request.data)
        user = user_for_request(
            username=data.get("username"), password=data.get("password"), api_user=api_user(request)
        )
        return Response(_rate(request_id(prompt_id), user, data))


class KoboldRateView(KoboldView):
    throttle_scope = "status"

    class Input(RateInput):
        genkey = StrictCharField(max_length=100)

    @extend_schema(
        operation_id="kobold_rate",
        tags=KOBOLD,
        summary="Rate your generation sent with this genkey",
        description=DESCRIPTION,
        request=Input,
        responses=RESPONSES,
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        user = api_user(request) or anonymous_user()
        prompt_id = genkey_prompt(user, data["genkey"])
        if prompt_id is None:
            raise NotFound(
                f"You have no live generation sent with genkey {data['genkey']!r}.",
                rc="RequestNotFound",
            )
        return Response(_rate(prompt_id, user, data))

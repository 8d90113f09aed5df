"""The AI Horde v2 account endpoints under /api/v2/: registration, API keys, user details and
kudos transfers."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.validators import UnicodeUsernameValidator
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import HasApiKey, LenientApiKeyAuthentication, api_user, apikey_header
from accounts.identity import user_by_password
from accounts.keys import account_register, apikey_issue, apikey_revoke
from accounts.ledger import kudos_transfer
from accounts.models import ApiKey, User
from accounts.selectors import (
    UserDetails,
    api_keys_of,
    user_details,
    users_page,
)
from koboldcluster.api import validated
from koboldcluster.errors import Forbidden, NotFound, Unauthorized
from koboldcluster.fields import InputSerializer, StrictCharField, StrictFloatField
from koboldcluster.openapi import (
    APIKEY_HEADER,
    APIKEY_HEADER_REQUIRED,
    KUDOS_ARE_TOKENS,
    error,
    many,
    shape,
)

ACCOUNTS = ["Accounts and API keys"]


class UsernameField(StrictCharField):
    """A new account's name: letters, digits and @.+-_ (no `#`, which separates the id)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=150, validators=[UnicodeUsernameValidator()], **kwargs)


class RegisterView(APIView):
    throttle_scope = "register"

    class Input(InputSerializer):
        username = UsernameField()

    @extend_schema(
        operation_id="register",
        tags=ACCOUNTS,
        summary="Register an account and get its first API key",
        request=Input,
        responses={
            201: shape(
                "Registered",
                {
                    "id": serializers.IntegerField(),
                    "username": serializers.CharField(help_text="alias#id"),
                    "apikey": serializers.CharField(help_text="Shown this once."),
                },
            ),
            400: error("UsernameTaken, ValidationError"),
            409: error("NameInUse: an unclaimed name's prompts are not over yet"),
        },
    )
    def post(self, request: Request) -> Response:
        """A new account and its first API key, shown this once."""
        data = validated(self.Input, request.data)
        user, key = account_register(username=data["username"])
        return Response({"id": user.pk, "username": user.horde_name, "apikey": key}, status=201)


def _key_owner(request: Request, data: dict[str, Any] | None = None) -> User:
    """The account whose keys are managed: by its key, or (to get a first key for an account
    a server's pop created) by `username` and `password` in the body."""
    user = api_user(request)
    if user is None and data and data.get("username"):
        user = user_by_password(username=data["username"], password=data.get("password"))
    if user is None:
        raise Unauthorized(
            "Send your API key in the 'apikey' header (or, for an account made by a server's "
            "first pop, 'username' and 'password' in the body).",
            rc="InvalidAPIKey",
        )
    if user.is_anonymous_user:
        raise Forbidden("The anonymous user has no API keys: register.", rc="AnonForbidden")
    return user


def _key_body(api_key: ApiKey) -> dict[str, Any]:
    return {
        "id": api_key.pk,
        "name": api_key.name,
        "created": api_key.created.isoformat(),
        "last_used": api_key.last_used.isoformat() if api_key.last_used else None,
        "revoked": api_key.revoked,
    }


API_KEY = shape(
    "ApiKey",
    {
        "id": serializers.IntegerField(),
        "name": serializers.CharField(),
        "created": serializers.DateTimeField(),
        "last_used": serializers.DateTimeField(allow_null=True),
        "revoked": serializers.BooleanField(),
        "apikey": serializers.CharField(required=False, help_text="Only when created."),
    },
)


class ApiKeyListView(APIView):
    class Input(InputSerializer):
        name = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
        username = StrictCharField(max_length=150, required=False)
        password = StrictCharField(max_length=1024, required=False, trim_whitespace=False)

    @property
    def throttle_scope(self) -> str | None:
        # Making keys is limited like registering; listing them is not.
        return "register" if self.request.method == "POST" else None

    @extend_schema(
        operation_id="apikeys",
        tags=ACCOUNTS,
        summary="Your working API keys (without the keys: only digests are kept)",
        parameters=[APIKEY_HEADER_REQUIRED],
        responses={
            200: many(API_KEY),
            401: error("InvalidAPIKey"),
            403: error("AnonForbidden: the anonymous user has no keys"),
        },
    )
    def get(self, request: Request) -> Response:
        """The caller's working keys, without the keys themselves (they are not stored)."""
        return Response([_key_body(k) for k in api_keys_of(_key_owner(request))])

    @extend_schema(
        operation_id="apikey_create",
        tags=ACCOUNTS,
        summary="A new API key, shown once",
        description="By your key, or (an account a server's first pop made) by username and "
        "password.",
        request=Input,
        responses={
            201: API_KEY,
            401: error("InvalidAPIKey, InvalidCredentials"),
            403: error("AnonForbidden: the anonymous user has no keys"),
        },
    )
    def post(self, request: Request) -> Response:
        """A new key for the caller, shown this once."""
        data = validated(self.Input, request.data)
        api_key, key = apikey_issue(user=_key_owner(request, data), name=data["name"])
        return Response({**_key_body(api_key), "apikey": key}, status=201)


class ApiKeyDetailView(APIView):
    @extend_schema(
        operation_id="apikey_revoke",
        tags=ACCOUNTS,
        summary="Revoke one of your API keys",
        parameters=[APIKEY_HEADER_REQUIRED],
        responses={
            200: API_KEY,
            400: error("LastApiKey"),
            401: error("InvalidAPIKey"),
            403: error("AnonForbidden: the anonymous user has no keys"),
            404: error("ApiKeyNotFound"),
        },
    )
    def delete(self, request: Request, key_id: int) -> Response:
        """Revoke one of the caller's keys; it stops working at once."""
        api_key = apikey_revoke(user=_key_owner(request), key_id=key_id)
        return Response(_key_body(api_key))


def _user_body(details: UserDetails) -> dict[str, Any]:
    """The AI Horde's user object (research §2.6); every count is a JSON integer."""
    user, totals = details.user, details.totals
    earned = totals.tokens_contributed - totals.tokens_used
    body: dict[str, Any] = {
        "username": user.horde_name,
        "id": user.pk,
        # The balance in tokens: what orders the queue.
        "kudos": totals.kudos,
        "kudos_details": {
            "accumulated": earned,
            "gifted": 0,
            "donated": 0,
            "admin": totals.kudos - earned,
            "received": 0,
            "recurring": 0,
            "awarded": 0,
            "styled": 0,
        },
        "usage": {"megapixelsteps": 0, "requests": totals.requests},
        "contributions": {"megapixelsteps": 0, "fulfillments": totals.fulfilments},
        "records": {
            "usage": {"megapixelsteps": 0, "tokens": totals.tokens_used},
            "contribution": {"megapixelsteps": 0, "tokens": totals.tokens_contributed},
            "fulfillment": {"image": 0, "text": totals.fulfilments, "interrogation": 0},
            "request": {"image": 0, "text": totals.requests, "interrogation": 0},
            "style": {"image": 0, "text": 0},
        },
        "concurrency": user.concurrency_limit(),
        "worker_invited": 0,
        "moderator": user.moderator,
        "trusted": user.trusted,
        "flagged": False,
        "service": False,
        "education": False,
        "customizer": False,
        "deleted": False,
        # No account here is tied to a real-world identity.
        "pseudonymous": not user.is_anonymous_user,
        "worker_count": details.server_count,
        "account_age": int((timezone.now() - user.date_joined).total_seconds()),
        "styles": [],
    }
    if details.privileged:
        body["worker_ids"] = [str(i) for i in details.server_ids]
        body["active_generations"] = {
            "text": [str(i) for i in details.active_prompt_ids],
            "image": [],
            "alchemy": [],
        }
        body["sharedkey_ids"] = []
    return body


_USER_ID = re.compile(r"[0-9]{1,18}\Z")


USER = shape(
    "HordeUser",
    {
        "username": serializers.CharField(help_text="alias#id"),
        "id": serializers.IntegerField(),
        "kudos": serializers.FloatField(help_text="The balance in tokens. " + KUDOS_ARE_TOKENS),
        "kudos_details": serializers.DictField(
            help_text="accumulated: tokens generated − received; admin: everything else "
            "(transfers and adjustments); the AI Horde's other parts are 0."
        ),
        "records": serializers.DictField(
            help_text="usage.tokens (received), contribution.tokens (generated), "
            "fulfillment.text (generations delivered), request.text (received)."
        ),
        "concurrency": serializers.IntegerField(help_text="Most waiting generations."),
        "worker_count": serializers.IntegerField(),
        "account_age": serializers.IntegerField(help_text="Seconds."),
        "trusted": serializers.BooleanField(),
        "moderator": serializers.BooleanField(),
        "worker_ids": serializers.ListField(
            child=serializers.UUIDField(), required=False, help_text="Own key or moderator."
        ),
        "active_generations": serializers.DictField(required=False, help_text="Own key only."),
    },
)


class UserListView(APIView):
    throttle_scope = "read"
    authentication_classes = [LenientApiKeyAuthentication]

    class Query(InputSerializer):
        # Bounded: a page number whose offset overflows a 64-bit integer would be a 500.
        page = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
        sort = serializers.ChoiceField(["kudos", "age"], default="kudos")

    @extend_schema(
        operation_id="horde_users",
        tags=["AI Horde v2: users"],
        summary="Users, 25 a page, by balance or by age",
        parameters=[Query],
        responses={200: many(USER)},
    )
    def get(self, request: Request) -> Response:
        given = {k: v for k, v in request.query_params.items() if v != ""}
        query = validated(self.Query, given)
        return Response(
            [_user_body(details) for details in users_page(page=query["page"], sort=query["sort"])]
        )


class UserDetailView(APIView):
    throttle_scope = "read"

    @extend_schema(
        operation_id="horde_user",
        tags=["AI Horde v2: users"],
        summary="A user's details",
        parameters=[APIKEY_HEADER],
        responses={200: USER, 401: error("InvalidAPIKey"), 404: error("UserNotFound")},
    )
    def get(self, request: Request, user_id: str) -> Response:
        """A user's public details; their own key or a moderator's also shows private ones."""
        user = User.objects.filter(pk=int(user_id)).first() if _USER_ID.match(user_id) else None
        if user is None:
            raise NotFound(f"User {user_id} is unknown.", rc="UserNotFound")
        viewer = api_user(request)
        privileged = viewer is not None and (viewer.pk == user.pk or viewer.moderator)
        return Response(_user_body(user_details(user, privileged=privileged)))


class FindUserView(APIView):
    throttle_scope = "read"
    # The AI Horde answers an unknown key here with 404 UserNotFound, not 401.
    authentication_classes = [LenientApiKeyAuthentication]

    @extend_schema(
        operation_id="horde_find_user",
        tags=["AI Horde v2: users"],
        summary="The user the apikey header names",
        parameters=[APIKEY_HEADER_REQUIRED],
        responses={200: USER, 401: error("No key"), 404: error("UserNotFound")},
    )
    def get(self, request: Request) -> Response:
        """The user the `apikey` header names, with their private details."""
        if apikey_header(request) is None:
            raise Unauthorized("Send your API key in the 'apikey' header.", rc="InvalidAPIKey")
        user = api_user(request)
        if user is None:
            raise NotFound("No user has this API key.", rc="UserNotFound")
        return Response(_user_body(user_details(user, privileged=True)))


class KudosTransferView(APIView):
    throttle_scope = "transfer"
    permission_classes = [HasApiKey]

    class Input(InputSerializer):
        username = StrictCharField(max_length=255, help_text="The recipient: alias#id.")
        amount = StrictFloatField(default=100, help_text="Whole tokens (a fraction is cut).")

    @extend_schema(
        operation_id="horde_kudos_transfer",
        tags=["AI Horde v2: users"],
        summary="Give some of your balance to another user",
        description="Moves tokens of balance (and so queue priority) to another account. "
        + KUDOS_ARE_TOKENS,
        parameters=[APIKEY_HEADER_REQUIRED],
        request=Input,
        responses={
            200: shape("HordeTransferred", {"transferred": serializers.IntegerField()}),
            400: error(
                "KudosTransferNotEnough, KudosTransferToSelf, KudosTransferFromAnon, "
                "KudosTransferToAnon, NegativeKudosTransfer, InvalidKudosTransferAmount, "
                "InvalidTargetUsername"
            ),
            401: error("InvalidAPIKey"),
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        sender = api_user(request)
        amount = int(data["amount"])
        kudos_transfer(sender=sender, recipient=data["username"], amount=amount)
        return Response({"transferred": amount})

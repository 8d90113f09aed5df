"""The `apikey` header, for every API view (DRF's DEFAULT_AUTHENTICATION_CLASSES)."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from accounts.keys import apikey_authenticate
from accounts.models import ApiKey, User


def apikey_header(request: Request) -> str | None:
    """The `apikey` header, or None when it is absent or empty."""
    return request.META.get("HTTP_APIKEY") or None


class ApiKeyAuthentication(BaseAuthentication):
    """`apikey: <key>` is that key's user; `apikey: 0000000000` is the anonymous user.

    Without the header there is no user (`request.user` is None) and the original API's
    `username`/`password` rules apply. An unknown or revoked key is a 401 `InvalidAPIKey`:
    a client with a mistyped key should hear so, not be served as someone else.
    """

    def authenticate(self, request: Request) -> tuple[User, ApiKey | None] | None:
        key = apikey_header(request)
        if key is None:
            return None
        found = apikey_authenticate(key=key)
        if found is None:
            raise AuthenticationFailed(
                "The API key in the 'apikey' header is unknown or revoked.", code="InvalidAPIKey"
            )
        return found

    def authenticate_header(self, request: Request) -> str:
        # Without a challenge DRF would turn the 401 into a 403.
        return "apikey"


class LenientApiKeyAuthentication(ApiKeyAuthentication):
    """For views that only read identity for rate limits: a bad key counts as no key."""

    lenient = True

    def authenticate(self, request: Request) -> tuple[User, ApiKey | None] | None:
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            return None


def api_user(request: Request) -> User | None:
    """The user an API key identified, if the request carried one."""
    user = request.user
    return user if isinstance(user, User) else None


class HasApiKey(BasePermission):
    """The view needs an API key (the anonymous key counts; the service decides what it may do).

    Without one DRF answers 401 `InvalidAPIKey` with this message, before the view runs.
    """

    message = "Send your API key in the 'apikey' header."

    def has_permission(self, request: Request, view: object) -> bool:
        # A method the view does not have is a 405 first, whoever asks.
        if not hasattr(view, request.method.lower()):
            return True
        return api_user(request) is not None


class HasApiKeyToChange(HasApiKey):
    """Reading needs no key; changing or deleting does."""

    def has_permission(self, request: Request, view: object) -> bool:
        return request.method in SAFE_METHODS or super().has_permission(request, view)


# What SillyTavern sends when no key is set (JavaScript's `"Bearer " + undefined`).
NO_BEARER_KEYS = ("", "undefined", "null")


def bearer_key(request: Request) -> str | None:
    """The key of `Authorization: Bearer <key>`, or None when absent or a placeholder."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or key.strip() in NO_BEARER_KEYS:
        return None
    return key.strip()


class BearerApiKeyAuthentication(ApiKeyAuthentication):
    """For the KoboldAI and OpenAI APIs: the `apikey` header or `Authorization: Bearer`.

    Front-ends send the key the user typed as a bearer token (KoboldAI Lite, SillyTavern,
    the OpenAI SDKs). No key, or SillyTavern's `Bearer undefined`, is the anonymous user
    (the view decides); an unknown key is a 401.
    """

    def authenticate(self, request: Request) -> tuple[User, ApiKey | None] | None:
        key = apikey_header(request) or bearer_key(request)
        if key is None:
            return None
        found = apikey_authenticate(key=key)
        if found is None:
            raise AuthenticationFailed(
                "The API key is unknown or revoked (sent as 'Authorization: Bearer <key>' or "
                "in the 'apikey' header).",
                code="InvalidAPIKey",
            )
        return found

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"

"""One error shape for the whole API: `{"message": "...", "rc": "StableCode"}`.

Services raise `ApiError` subclasses; DRF's exceptions and Django's own 404/500 are mapped to
the same shape, so no client ever sees an HTML page or a stack trace.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal the client can act on. Subclasses fix the HTTP status."""

    status_code = 400
    default_rc = "BadRequest"

    def __init__(
        self, message: str, *, rc: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc or self.default_rc
        # Seconds a client should wait before trying again (the Retry-After header).
        self.retry_after = retry_after
        # More response headers (e.g. a time-out's queue position and wait estimate).
        self.headers: dict[str, str] = {}


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status_code = 401
    default_rc = "InvalidCredentials"


class Forbidden(ApiError):
    status_code = 403
    default_rc = "Forbidden"


class NotFound(ApiError):
    status_code = 404
    default_rc = "NotFound"


class Conflict(ApiError):
    status_code = 409
    default_rc = "Conflict"


class TooManyRequests(ApiError):
    status_code = 429
    default_rc = "TooManyRequests"


def error_body(message: str, rc: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "rc": rc, **extra}


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, str]:
    """Turn DRF's nested error detail into `{"params.max_length": "text"}`."""
    if isinstance(detail, dict):
        flat: dict[str, str] = {}
        for key, value in detail.items():
            name = str(key) if key != "non_field_errors" else ""
            path = f"{prefix}.{name}" if prefix and name else (prefix or name)
            flat.update(flatten_errors(value, path))
        return flat
    if isinstance(detail, list):
        if detail and all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "body": " ".join(str(item) for item in detail)}
        flat = {}
        for index, item in enumerate(detail):
            if item:
                flat.update(flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    return {prefix or "body": str(detail)}


def validation_response(detail: Any) -> Response:
    errors = flatten_errors(detail)
    summary = "; ".join(f"{field}: {text}" for field, text in errors.items())
    message = f"Input payload validation failed: {summary}"
    return Response(error_body(message, "ValidationError", errors=errors), status=400)


_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "InvalidJSON",
    exceptions.UnsupportedMediaType: "UnsupportedMediaType",
    exceptions.MethodNotAllowed: "MethodNotAllowed",
    exceptions.NotAcceptable: "NotAcceptable",
    exceptions.NotAuthenticated: "InvalidAPIKey",
    exceptions.AuthenticationFailed: "InvalidAPIKey",
    exceptions.PermissionDenied: "Forbidden",
    exceptions.NotFound: "NotFound",
    exceptions.Throttled: "TooManyRequests",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error the API raises becomes `{"message", "rc"}`."""
    if isinstance(exc, ApiError):
        headers = dict(exc.headers)
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return Response(
            error_body(exc.message, exc.rc), status=exc.status_code, headers=headers or None
        )
    if isinstance(exc, exceptions.ValidationError):
        return validation_response(exc.detail)
    if isinstance(exc, RequestDataTooBig):  # Django would log it at ERROR with a traceback
        return Response(error_body(f"{exc} Send less.", "PayloadTooLarge"), status=413)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django logs it and handler500 answers with JSON
    rc = _DRF_CODES.get(type(exc), type(exc).__name__)
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
    return Response(error_body(str(exc.detail), rc), status=exc.status_code, headers=headers)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Not found.", "NotFound"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("Internal server error.", "InternalServerError"), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Bad request.", "BadRequest"), status=400)


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Forbidden.", "Forbidden"), status=403)

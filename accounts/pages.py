"""The registration page: a plain form that works without JavaScript."""

from __future__ import annotations

import math
from types import SimpleNamespace

from django import forms
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from accounts.keys import account_register
from koboldcluster.errors import ApiError
from koboldcluster.throttling import AddressRateThrottle


class RegistrationForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only. It is public.",
    )


def _seconds_to_wait(request: HttpRequest) -> int | None:
    """The API's registration limit per address, applied to the form as well."""
    throttle = AddressRateThrottle()
    if throttle.allow_request(request, SimpleNamespace(throttle_scope="register")):
        return None
    return max(1, math.ceil(throttle.wait() or 1))


@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST: the new account, with its API key shown this once."""
    if request.method == "GET":
        return render(request, "accounts/register.html", {"form": RegistrationForm()})
    form = RegistrationForm(request.POST)
    wait = _seconds_to_wait(request)
    if wait is not None:
        response = render(
            request, "accounts/register.html", {"form": form, "wait": wait}, status=429
        )
        response["Retry-After"] = str(wait)
        return response
    if form.is_valid():
        try:
            user, key = account_register(username=form.cleaned_data["username"])
        except ApiError as error:
            form.add_error("username", error.message)
        else:
            context = {"user": user, "key": key, "base": request.build_absolute_uri("/")[:-1]}
            response = render(request, "accounts/registered.html", context, status=201)
            # The key is in this page: no cache may keep it.
            response["Cache-Control"] = "no-store"
            return response
    return render(request, "accounts/register.html", {"form": form}, status=400)

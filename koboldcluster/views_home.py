"""`/`, the address `run.sh` prints: where to go from here, for people and for programs.

A stand-in until the status page gives `/` more to show.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from koboldcluster import __version__
from koboldcluster.errors import error_body

LINKS = [
    {"title": "API documentation", "href": "/api/", "what": "both APIs, in Swagger UI"},
    {"title": "Register", "href": "/register", "what": "get an API key"},
    {"title": "Servers", "href": "/servers", "what": "the servers at work now (JSON)"},
    {"title": "Models", "href": "/models", "what": "the models they serve (JSON)"},
]


def home(request: HttpRequest) -> HttpResponse:
    """HTML for browsers; JSON for a client that asks for it (`Accept: application/json`)."""
    if request.method not in ("GET", "HEAD"):
        message = f'Method "{request.method}" not allowed.'
        refusal = JsonResponse(error_body(message, "MethodNotAllowed"), status=405)
        refusal["Allow"] = "GET, HEAD"
        return refusal
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        return JsonResponse(
            {
                "name": "KoboldAI Cluster",
                "version": __version__,
                "links": {link["title"]: link["href"] for link in LINKS},
            }
        )
    return render(request, "koboldcluster/home.html", {"version": __version__, "links": LINKS})

"""The status page at `/`, its live part, and the README with its docs/ pages as a page."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import markdown
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_safe

from koboldcluster.throttling import throttled
from stats import charts
from stats.manual import manual_markdown
from stats.status import ClusterStatus, cluster_status

# How often the page fetches its live part.
REFRESH_SECONDS = 15
# However many people watch, the live part is computed at most this often (per process).
LIVE_CACHE_SECONDS = 5


def _refresh_seconds(request: HttpRequest) -> int:
    """`?refresh=N` (2 to 3600 seconds) for a wall display; otherwise REFRESH_SECONDS."""
    try:
        return min(max(int(request.GET.get("refresh", REFRESH_SECONDS)), 2), 3600)
    except ValueError:
        return REFRESH_SECONDS


def _refresh(request: HttpRequest) -> dict:
    seconds = _refresh_seconds(request)
    return {
        "refresh_seconds": seconds,
        "refresh_query": f"?refresh={seconds}" if seconds != REFRESH_SECONDS else "",
    }


def _context(request: HttpRequest, status: ClusterStatus) -> dict:
    return {
        "status": status,
        **_refresh(request),
        "charts": {
            "rate": mark_safe(charts.generations_per_minute(status.rate)),  # noqa: S308 (ours)
            "waits": mark_safe(charts.median_waits(status.waits)),  # noqa: S308
            "tokens": mark_safe(  # noqa: S308
                charts.bars("Tokens per model, last 24 h", status.tokens_per_model)
            )
            if status.tokens_per_model
            else "",
            "contributors": mark_safe(  # noqa: S308
                charts.bars("Top contributors (tokens generated)", status.top_contributors)
            )
            if status.top_contributors
            else "",
        },
    }


def _live_html(request: HttpRequest) -> str:
    """The page's changing part, rendered at most once per LIVE_CACHE_SECONDS, whatever the
    query (`?refresh=N` changes the page around it, not this part)."""
    key = "stats:live"
    html = cache.get(key)
    if html is None:
        html = render_to_string("stats/live.html", _context(request, cluster_status()), request)
        cache.set(key, html, LIVE_CACHE_SECONDS)
    return html


@require_safe
@throttled("info")
def status_page(request: HttpRequest) -> HttpResponse:
    """The whole page; its script then swaps in `/status/live` every REFRESH_SECONDS."""
    context = {"live": mark_safe(_live_html(request)), **_refresh(request)}  # noqa: S308
    return render(request, "stats/status.html", context)


@require_safe
@throttled("info")
def status_live(request: HttpRequest) -> HttpResponse:
    """The page's changing part alone, for the page's script to swap in without a reload."""
    response = HttpResponse(_live_html(request))
    response["Cache-Control"] = "no-store"
    return response


@lru_cache(maxsize=1)
def _readme_html() -> str:
    text = manual_markdown(Path(settings.BASE_DIR))
    return markdown.markdown(text, extensions=["toc", "fenced_code", "tables"])


@require_safe
@throttled("info")
def readme(request: HttpRequest) -> HttpResponse:
    """The project's README and its docs/ pages, so that links to their sections work from
    any cluster."""
    return render(request, "stats/readme.html", {"body": mark_safe(_readme_html())})  # noqa: S308

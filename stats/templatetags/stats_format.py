"""Numbers as people read them on the status page."""

from __future__ import annotations

from django import template

from generations.selectors import NO_ETA

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """`42 s`, `3 min`, `2 h 5 min`; `–` for none (no waits, or no server for the model)."""
    if seconds is None or seconds >= NO_ETA:
        return "–"
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


@register.filter
def count(value: int) -> str:
    """Thousands separated by a thin space: 12 345."""
    return f"{value:,}".replace(",", "\u2009")

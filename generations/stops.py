"""Stop sequences: where a text ends at the first of them, the one rule for every face and for
the text a dropped-out server leaves behind (generations/handover.py)."""

from __future__ import annotations

from collections.abc import Sequence


def cut_at_stop(text: str, stops: Sequence[str], *, keep: bool = False) -> tuple[str, bool]:
    """The text up to its first stop sequence, and whether one was found. OpenAI's answers
    end before it; with `keep`, the text ends after the stop that ends first, as KoboldAI
    keeps it."""
    stops = [s for s in stops if isinstance(s, str) and s]
    if keep:
        ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
        return (text[: min(ends)], True) if ends else (text, False)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)

"""Trusted servers only: how a request through the KoboldAI and OpenAI faces asks for them.

Those faces' bodies belong to KoboldCpp and OpenAI, so the ask is a header of the cluster's
own: `X-KoboldCluster-Trusted-Only: 1` (also `true`, `yes`; its absence, `0`, `false` or
`no` mean any server). The AI Horde v2 face has the Horde's `trusted_workers` field and the
original API a `trusted_workers` field of its body. Such a request is never handed to a
server of an untrusted owner, nor to a paused one (generations/matching.py).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter

from koboldcluster.errors import BadRequest

HEADER = "X-KoboldCluster-Trusted-Only"
_META = "HTTP_X_KOBOLDCLUSTER_TRUSTED_ONLY"
_YES, _NO = {"1", "true", "yes"}, {"", "0", "false", "no"}

TRUSTED_ONLY_HEADER = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="1: only servers of trusted accounts that are not paused may serve this "
    "request (README: Trust and quality).",
)


def trusted_only(request: Any) -> bool:
    """Whether the request asks for trusted servers only (400 for a value that is neither)."""
    value = request.META.get(_META, "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise BadRequest(f"The {HEADER} header must be 1 or 0.", rc="ValidationError")

"""Creates that are safe to retry: the `Idempotency-Key` header (issue 25).

A client whose create got no answer (a connection reset, a web worker killed) cannot know
whether its prompt was queued; retrying queued it twice, and both were served and charged.
With an `Idempotency-Key` header, a retry from the same caller (the same account, and for
callers without credentials the same client address: `generations.limits.prompt_client`)
gets the first prompt back as long as it lives: the original and v2 APIs answer its id
again, and the waiting faces (KoboldAI, OpenAI) wait for it or stream it again.

The key is stored on the prompt, unique per caller (a partial unique constraint), so two
retries at the same moment cannot both queue: the second INSERT fails and finds the first.
A first prompt that was cancelled, faulted or has expired releases its key: the retry
queues a new one. A key sent again with another prompt text or n is refused
(400 IdempotencyKeyReused) rather than answered with a prompt the client did not ask for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.utils import OpenApiParameter

from generations.models import Prompt
from koboldcluster.errors import BadRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# In the OpenAPI schema of every create.
IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    description="Optional: any printable ASCII (at most 255 characters, e.g. a UUID) naming "
    "this request. A retry with the same key from the same caller gets the first request "
    "back while it lives instead of queueing it again (README: When a volunteer drops out).",
)


def idempotency_key(request: Any) -> str:
    """The request's Idempotency-Key header ('' without one); 400 when it is not a short
    printable ASCII string. `request`: Django's or DRF's (both have META)."""
    key = request.META.get("HTTP_IDEMPOTENCY_KEY", "").strip()
    if len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise BadRequest(
            f"The {HEADER} header must be printable ASCII of at most {MAX_KEY_LENGTH} characters.",
            rc="ValidationError",
        )
    return key


def first_prompt(prompt: Prompt, now: datetime) -> Prompt | None:
    """The caller's live prompt created with `prompt`'s key, or None (then the key is free:
    a cancelled, faulted or expired holder gives it up)."""
    holder = (
        Prompt.objects.filter(
            user_id=prompt.user_id, client=prompt.client, idempotency_key=prompt.idempotency_key
        )
        .order_by()
        .first()
    )
    if holder is None:
        return None
    if holder.state != Prompt.State.LIVE or holder.expires_at <= now:
        Prompt.objects.filter(id=holder.id).update(idempotency_key="")
        return None
    # Not max_length: the waiting faces fit it to the servers online, which may change.
    if (holder.text, holder.n) != (prompt.text, prompt.n):
        raise BadRequest(
            f"This {HEADER} was sent before with another request; use a new key for a new request.",
            rc="IdempotencyKeyReused",
        )
    return holder

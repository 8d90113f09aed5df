"""Fit a front-end request to the servers that are active now (KoboldAI and OpenAI faces).

A real KoboldCpp never leaves a user waiting for a request it cannot serve as asked: it cuts
the context to its own size (keeping the end of the prompt) and the generation length within
it, and answers. The cluster's KoboldAI and OpenAI faces promise to look like one very large
KoboldCpp or OpenAI server, so a request that no active server could serve as asked is lowered
to what the best active server of its models offers (`fit`), and the bridge cuts the prompt
from the front to that context. A request that no active server could serve even then (a
model nobody serves, or no server at all) is refused at once (`fit_or_refuse`), after a short
grace when a server that could serve it may be reconnecting.

The original and AI Horde APIs keep their strict semantics: their clients read the limits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import User
from generations.intake import GenerationRequest
from generations.matching import PromptFacts, ServerProfile, could_serve
from generations.status import ActiveServer, active_servers, server_profiles
from koboldcluster.errors import ApiError
from servers.models import Server

# A server that checked in this recently but is not active now may be reconnecting (a
# bridge restarting, a laptop waking): a request for it waits the grace period.
RECENTLY_SEEN_SECONDS = 600
# How often the grace period looks for a server again.
GRACE_POLL_SECONDS = 0.25
# What a client is told to wait before trying again when no server is online.
NO_SERVER_RETRY_AFTER = 10
MODEL_NAMES_LISTED = 20
# Names the lengths a front-end request was served with (and, where lowered, what was asked).
LIMITS_HEADER = "X-KoboldCluster-Limits"


class ModelNotServed(ApiError):
    """Servers are online, but none of the request's models (OpenAI: model_not_found)."""

    status_code = 404
    default_rc = "ModelNotFound"

    def __init__(self, message: str, *, served: list[str]) -> None:
        super().__init__(message)
        self.served = served


class NoServerOnline(ApiError):
    status_code = 503
    default_rc = "NoServerAvailable"


@dataclass(frozen=True)
class Fit:
    """The lengths a request is served with, and what the client asked for."""

    max_length: int
    max_context_length: int
    asked_length: int
    asked_context: int
    # False when the client named no context (the OpenAI faces): the cluster's estimate then
    # only chooses the servers, and each job gets its server's whole context.
    context_named: bool = True

    @property
    def lowered(self) -> bool:
        return (self.max_length, self.max_context_length) != (
            self.asked_length,
            self.asked_context,
        )

    def header(self) -> str:
        """The limits applied, for the X-KoboldCluster-Limits response header."""
        parts = []
        limits = [("max_length", self.max_length, self.asked_length)]
        if self.context_named:
            limits.insert(0, ("max_context_length", self.max_context_length, self.asked_context))
        for name, value, asked in limits:
            parts.append(f"{name}={value}" + (f" (asked {asked})" if value != asked else ""))
        return ", ".join(parts)


def _facts(user_id: int, models: list[str], trusted: bool = False) -> PromptFacts:
    """The request as the matching rules see it, with lengths any server allows."""
    return PromptFacts(
        user_id=user_id,
        any_model=not models,
        models=tuple(models),
        max_length=1,
        max_context_length=1,
        trusted_workers=trusted,
    )


def able(
    user_id: int, models: list[str], servers: list[ActiveServer], trusted: bool = False
) -> list[ServerProfile]:
    """The servers that could serve the request at some lengths (`trusted`: only trusted
    ones, not paused)."""
    facts = _facts(user_id, models, trusted)
    return [s.profile for s in servers if could_serve(facts, s.profile, maintenance=s.owner_only)]


def fit(*, max_length: int, max_context_length: int, servers: list[ServerProfile]) -> Fit | None:
    """The request as asked when one of `servers` can serve it so; else lowered to the server
    that keeps the most context (then the most length); None when `servers` is empty."""
    if not servers:
        return None
    if any(
        s.max_length >= max_length and s.max_context_length >= max_context_length for s in servers
    ):
        return Fit(max_length, max_context_length, max_length, max_context_length)
    best = max(
        servers,
        key=lambda s: (
            min(max_context_length, s.max_context_length),
            min(max_length, s.max_length),
        ),
    )
    return Fit(
        min(max_length, best.max_length),
        min(max_context_length, best.max_context_length),
        max_length,
        max_context_length,
    )


def grace_seconds() -> float:
    return float(settings.KOBOLDCLUSTER["FRONTEND_GRACE_SECONDS"])


def worth_waiting(user_id: int, models: list[str], trusted: bool = False) -> bool:
    """Whether a server may come for this request soon: none is online at all (the cluster
    or its volunteers restarting), or one that could serve it checked in recently."""
    now = timezone.now()
    if not active_servers(now):
        return True
    recent = Server.objects.filter(
        last_check_in__gte=now - timedelta(seconds=RECENTLY_SEEN_SECONDS)
    ).select_related("owner")
    return bool(able(user_id, models, server_profiles(recent), trusted))


def refusal(models: list[str], requested: str, trusted: bool = False) -> ApiError:
    """Why nothing can serve the request now: no server online, or none of its models
    (`trusted`: among the trusted servers)."""
    online = active_servers()
    if trusted:
        online = [s for s in online if s.profile.trusted]
    served = sorted({name for s in online for name in s.profile.models})
    if not online:
        return NoServerOnline(
            f"No {'trusted ' if trusted else ''}server is online in this cluster right now; "
            "try again in a minute.",
            retry_after=NO_SERVER_RETRY_AFTER,
        )
    listed = ", ".join(served[:MODEL_NAMES_LISTED])
    if len(served) > MODEL_NAMES_LISTED:
        listed += f" and {len(served) - MODEL_NAMES_LISTED} more"
    name = requested or ", ".join(models)
    return ModelNotServed(
        f"The model '{name}' is not served by any {'trusted ' if trusted else ''}server "
        "online now. Served: "
        f"{listed or 'nothing'} (see /v1/models).",
        served=served,
    )


async def fit_or_refuse(
    *,
    user_id: int,
    models: list[str],
    max_length: int,
    max_context_length: int,
    requested: str,
    trusted: bool = False,
) -> Fit:
    """The lengths to serve the request with, or the refusal when no active server could
    serve it even lowered and none came within the grace period."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_seconds()
    fresh = False
    while True:
        servers = await sync_to_async(active_servers)(fresh=fresh)
        result = fit(
            max_length=max_length,
            max_context_length=max_context_length,
            servers=able(user_id, models, servers, trusted),
        )
        if result is not None:
            return result
        if loop.time() >= deadline or not await sync_to_async(worth_waiting)(
            user_id, models, trusted
        ):
            raise await sync_to_async(refusal)(models, requested, trusted)
        await asyncio.sleep(GRACE_POLL_SECONDS)
        fresh = True


async def fitted(
    user: User, request: GenerationRequest, *, requested: str = ""
) -> tuple[GenerationRequest, Fit]:
    """`request` with the lengths it can be served with now (`fit_or_refuse`)."""
    result = await fit_or_refuse(
        user_id=user.pk,
        models=request.models,
        max_length=request.max_length,
        max_context_length=request.max_context_length,
        requested=requested,
        trusted=request.trusted_workers,
    )
    lengths = {"max_length": result.max_length, "max_context_length": result.max_context_length}
    return replace(request, **lengths), replace(result, context_named=not request.whole_context)

"""Cluster-wide figures for the AI Horde's status endpoints: models served and queue load."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, F, Sum
from django.utils import timezone

from generations.models import Job, Prompt, PromptModel
from servers.models import Server

# What `eta` says when no server runs a model (the AI Horde's value).
NO_ETA = 10000


@dataclass(frozen=True)
class ModelStats:
    name: str
    count: int  # threads of active servers (not in maintenance) running it
    performance: float  # their mean measured speed, tokens per second
    queued: int  # tokens still to generate for waiting prompts naming it
    jobs: int  # slots waiting plus jobs in flight of those prompts
    eta: int  # seconds to clear `queued` at `count × performance`


def model_stats(*, now: datetime | None = None) -> list[ModelStats]:
    """Every model an active server runs, with its capacity and its queue.

    Prompts that accept any model count for none. Speeds come from the servers' moving
    averages: finished jobs are wiped with their prompts, so there is no job history to
    average.
    """
    now = now or timezone.now()
    threads: dict[str, int] = defaultdict(int)
    speeds: dict[str, list[float]] = defaultdict(list)
    running = Server.objects.active(now).filter(maintenance=False, paused=False)
    for models, server_threads, speed in running.values_list("models", "threads", "speed"):
        for name in models:
            threads[name] += server_threads
            if speed > 0:
                speeds[name].append(speed)
    names = sorted(threads)
    queued = {
        name: (tokens or 0, slots or 0)
        for name, tokens, slots in PromptModel.objects.filter(
            name__in=names, prompt__in=Prompt.objects.queued(now)
        )
        .values("name")
        .annotate(
            tokens=Sum(F("prompt__max_length") * F("prompt__waiting")),
            slots=Sum("prompt__waiting"),
        )
        .values_list("name", "tokens", "slots")
        .order_by()
    }
    in_flight = dict(
        PromptModel.objects.filter(
            name__in=names, prompt__jobs__state=Job.State.PROCESSING, prompt__expires_at__gt=now
        )
        .values_list("name")
        .annotate(Count("prompt__jobs"))
        .order_by()
    )
    stats = []
    for name in names:
        speed = sum(speeds[name]) / len(speeds[name]) if speeds[name] else 0.0
        tokens, slots = queued.get(name, (0, 0))
        rate = threads[name] * speed
        stats.append(
            ModelStats(
                name=name,
                count=threads[name],
                performance=round(speed, 2),
                queued=tokens,
                jobs=slots + in_flight.get(name, 0),
                eta=round(tokens / rate) if rate > 0 else NO_ETA,
            )
        )
    return stats


@dataclass(frozen=True)
class QueueLoad:
    queued_requests: int  # generation slots waiting plus jobs in flight
    queued_tokens: int  # tokens still to generate for the waiting slots
    past_minute_tokens: int  # tokens delivered in the last 60 seconds
    server_count: int  # active servers
    thread_count: int  # their threads


def queue_load(*, now: datetime | None = None) -> QueueLoad:
    """The whole queue in four aggregate queries (not a hot path: rate limited per address)."""
    now = now or timezone.now()
    waiting = Prompt.objects.queued(now).aggregate(
        slots=Sum("waiting"), tokens=Sum(F("max_length") * F("waiting"))
    )
    live_jobs = Job.objects.filter(prompt__expires_at__gt=now)
    in_flight = live_jobs.filter(state=Job.State.PROCESSING).count()
    delivered = live_jobs.filter(
        state=Job.State.DONE, finished__gte=now - timedelta(seconds=60)
    ).aggregate(tokens=Sum("tokens"))
    servers = Server.objects.active(now).aggregate(count=Count("id"), threads=Sum("threads"))
    return QueueLoad(
        queued_requests=(waiting["slots"] or 0) + in_flight,
        queued_tokens=waiting["tokens"] or 0,
        past_minute_tokens=delivered["tokens"] or 0,
        server_count=servers["count"] or 0,
        thread_count=servers["threads"] or 0,
    )


@dataclass(frozen=True)
class Performance:
    """KoboldCpp's /api/extra/perf figures, for the cluster as a whole."""

    queue: int  # generation slots waiting for a server
    busy: bool  # some server is generating
    last_token_count: int  # tokens of the latest delivered generation
    last_eval: float  # seconds per token of it
    total_gens: int  # generations the active servers delivered, ever
    idle_seconds: float  # since the latest generation was delivered


def performance(*, now: datetime | None = None) -> Performance:
    """Four small reads (rate limited per address, like the other read endpoints)."""
    now = now or timezone.now()
    waiting = Prompt.objects.queued(now).aggregate(slots=Sum("waiting"))["slots"] or 0
    live_jobs = Job.objects.filter(prompt__expires_at__gt=now)
    busy = live_jobs.filter(state=Job.State.PROCESSING).exists()
    last = (
        live_jobs.filter(state=Job.State.DONE, finished__isnull=False)
        .order_by("-finished")
        .values_list("tokens", "started", "finished")
        .first()
    )
    total = Server.objects.active(now).aggregate(gens=Sum("requests_fulfilled"))["gens"]
    tokens, eval_seconds, idle = 0, 0.0, 0.0
    if last is not None:
        tokens, started, finished = last
        eval_seconds = (finished - started).total_seconds() / max(tokens, 1)
        idle = (now - finished).total_seconds()
    return Performance(waiting, busy, tokens, eval_seconds, total or 0, idle)

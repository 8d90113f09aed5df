"""`/metrics`: Prometheus metrics, the in-process ones plus those read from the database.

Counters of what happened (prompts created, jobs popped, delivered, faulted, reaped, tokens)
are the rollups plus the live tail: exact cluster-wide whatever the number of processes or
machines, unchanged by restarts, at no cost to the hot paths. Gauges of the current state
(queue, servers, estimated waits) are read from the live tables at scrape time. Every
machine answers the same figures for these: scrape one, or take `max` over them.
Names follow the AI Horde exporter's (`horde_model_*`, `horde_performance_*`) where it has one.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Min
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from generations.models import Job, Prompt, PromptModel
from generations.selectors import model_stats, queue_load
from koboldcluster import metrics
from koboldcluster.throttling import throttled
from stats.selectors import StatsReader
from stats.tally import total


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


class ClusterCollector(Collector):
    """Reads the database at each scrape: about a dozen small queries."""

    def collect(self) -> Iterator:
        reader = StatsReader()
        yield from _counters(reader)
        yield from _model_gauges()
        yield from _queue_gauges(reader)


COUNTERS = {
    "jobs": ("koboldcluster_jobs_popped", "Jobs handed to servers."),
    "generations": ("koboldcluster_jobs_submitted", "Generations delivered by servers."),
    "faulted": ("koboldcluster_jobs_faulted", "Jobs their server gave up."),
    "abandoned": ("koboldcluster_jobs_reaped", "Jobs past their deadline, taken back."),
    "tokens": ("koboldcluster_tokens", "Tokens of the delivered generations."),
}


def _counters(reader: StatsReader) -> Iterator:
    per_model = reader.window(None)
    yield CounterMetricFamily(
        "koboldcluster_prompts_created",
        "Prompts (requests) created.",
        value=total(per_model).prompts,
    )
    for column, (name, help_text) in COUNTERS.items():
        family = CounterMetricFamily(name, help_text, labels=["model"])
        for model, tally in sorted(per_model.items()):
            if model or getattr(tally, column):
                family.add_metric([model], getattr(tally, column))
        yield family


MODEL_GAUGES = {
    "queued": ("horde_model_queued", "Tokens queued for waiting requests naming the model."),
    "jobs": ("horde_model_jobs", "Waiting slots plus jobs in flight of those requests."),
    "count": ("horde_model_workers_count", "Threads of active servers running the model."),
    "performance": ("horde_model_performance", "Their mean speed, tokens per second."),
    "eta": ("horde_model_eta_seconds", "Estimated seconds to clear the model's queue."),
}


def _model_gauges() -> Iterator:
    rows = model_stats()
    for field, (name, help_text) in MODEL_GAUGES.items():
        family = GaugeMetricFamily(name, help_text, labels=["model", "type"])
        for row in rows:
            family.add_metric([row.name, "text"], getattr(row, field))
        yield family
    yield _oldest_waiting({row.name for row in rows})


def _oldest_waiting(served: set[str]) -> GaugeMetricFamily:
    """Seconds the oldest waiting request of each model has waited (`any`: no model named).

    Only the models active servers run are labels of their own; a request may name any text,
    and such names would be series without end (and a client's words in Prometheus): their
    requests count under `other`."""
    now = timezone.now()
    family = GaugeMetricFamily(
        "koboldcluster_queue_oldest_wait_seconds",
        "Seconds the oldest request still waiting for a server has waited, per model.",
        labels=["model"],
    )
    queued = Prompt.objects.queued(now)
    per_model = (
        PromptModel.objects.filter(prompt__in=queued)
        .values_list("name")
        .annotate(Min("prompt__created"))
        .order_by()
    )
    oldest_of: dict[str, datetime] = {}
    for name, oldest in per_model:
        label = name if name in served else "other"
        oldest_of[label] = min(oldest, oldest_of.get(label, oldest))
    for label, oldest in sorted(oldest_of.items()):
        family.add_metric([label], (now - oldest).total_seconds())
    oldest_any = queued.filter(any_model=True).aggregate(m=Min("created"))["m"]
    if oldest_any is not None:
        family.add_metric(["any"], (now - oldest_any).total_seconds())
    return family


def _queue_gauges(reader: StatsReader) -> Iterator:
    load = queue_load()
    performance = {
        "queued_requests": ("Waiting slots plus jobs in flight.", load.queued_requests),
        "queued_tokens": ("Tokens queued for the waiting slots.", load.queued_tokens),
        "past_minute_tokens": ("Tokens delivered in the last 60 s.", load.past_minute_tokens),
        "worker_count": ("Servers online (checked in recently).", load.server_count),
        "thread_count": ("Their threads.", load.thread_count),
    }
    for name, (help_text, value) in performance.items():
        family = GaugeMetricFamily(f"horde_performance_{name}", help_text, labels=["type"])
        family.add_metric(["text"], value)
        yield family
    now = reader.now
    yield _gauge(
        "koboldcluster_prompts_waiting",
        "Requests with generations waiting for a server.",
        Prompt.objects.queued(now).count(),
    )
    yield _gauge(
        "koboldcluster_jobs_processing",
        "Jobs in flight on servers.",
        Job.objects.filter(state=Job.State.PROCESSING, prompt__expires_at__gt=now).count(),
    )
    hour = total(reader.series(now - timedelta(hours=1)))
    median = hour.median_wait()
    if median is not None:
        yield _gauge(
            "koboldcluster_first_job_wait_median_seconds",
            "Median seconds from a request to its first job, last hour (bucket estimate).",
            median,
        )


_database = CollectorRegistry(auto_describe=False)
_database.register(ClusterCollector())


def _authorized(request: HttpRequest) -> bool:
    token = settings.KOBOLDCLUSTER["METRICS_TOKEN"]
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@require_safe
@throttled("info")
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format; with KOBOLDCLUSTER_METRICS_TOKEN, only for its bearer."""
    if not _authorized(request):
        error = {"message": "/metrics needs 'Authorization: Bearer <token>'."}
        response = JsonResponse({**error, "rc": "InvalidMetricsToken"}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    body = generate_latest(metrics.registry()) + generate_latest(_database)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)

"""`manage.py stats_benchmark`: what the status page and /metrics cost on a busy cluster.

It runs in a throwaway test database (never the configured one) filled like a cluster that
has run for a while: 30 days of per-minute rollups and a year of per-day rows per model,
hundreds of servers and contributors, thousands of live prompts and jobs. Then it times the
page, its live part, /metrics and the AI Horde stats endpoint through Django's test client.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, setup_databases, teardown_databases
from django.utils import timezone

WAITS = [0, 1, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0]
PATHS = ("/", "/status/live", "/metrics", "/api/v2/stats/text/totals")


class Command(BaseCommand):
    help = "Time the status page and /metrics on a busy cluster (test database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--models", type=int, default=5)
        parser.add_argument("--servers", type=int, default=200)
        parser.add_argument("--prompts", type=int, default=2000, help="Live prompts.")
        parser.add_argument("--rounds", type=int, default=10)

    def handle(self, *args: Any, **options: Any) -> None:
        models, servers = options["models"], options["servers"]
        prompts, rounds = options["prompts"], options["rounds"]
        old_config = setup_databases(verbosity=0, interactive=False)
        try:
            started = time.perf_counter()
            self._fill([f"model-{i}" for i in range(models)], servers, prompts)
            self.stdout.write(
                f"{connection.vendor}: filled in {time.perf_counter() - started:.0f} s "
                f"({models} models, {servers} servers, {prompts} live prompts, 30 days of minutes)"
            )
            client = Client()
            for path in PATHS:
                self._measure(client, path, rounds)
        finally:
            teardown_databases(old_config, verbosity=0)

    def _measure(self, client: Client, path: str, rounds: int) -> None:
        cache.clear()
        cold = _get(client, path)
        # The live part and the AI Horde answer are cached a few seconds; measure them
        # computed again each time too, with the per-minute rollup cache warm.
        fresh = [_get(client, path, forget="stats:live:") for _ in range(rounds)]
        cached = [_get(client, path) for _ in range(rounds)]
        self.stdout.write(
            f"  {path:26} first {cold.cpu:6.1f} ms CPU ({cold.wall:6.1f} wall), "
            f"recomputed {_median(fresh, 'cpu'):6.1f} ms CPU ({_median(fresh, 'wall'):6.1f} wall, "
            f"{fresh[-1].queries} queries), cached {_median(cached, 'cpu'):5.1f} ms CPU, "
            f"{cold.size / 1024:5.1f} KiB"
        )

    def _fill(self, names: list[str], server_count: int, prompt_count: int) -> None:
        from accounts.models import Balance, LedgerEntry, User
        from generations.models import Job, Prompt, PromptModel
        from servers.models import Server
        from stats.models import DayRollup, MinuteRollup, RollupMark
        from stats.rollups import floor_minute

        now = timezone.now()
        mark = floor_minute(now - timedelta(minutes=1))
        for name in names:
            MinuteRollup.objects.bulk_create(
                (
                    MinuteRollup(minute=mark - timedelta(minutes=i), model=name, jobs=9,
                                 generations=8, tokens=800, faulted=1, waits=5,
                                 wait_seconds=60.0, wait_buckets=WAITS)
                    for i in range(1, 30 * 24 * 60)
                ),
                batch_size=2000,
            )  # fmt: skip
            DayRollup.objects.bulk_create(
                DayRollup(day=(now - timedelta(days=31 + i)).date(), model=name, generations=11520)
                for i in range(365)
            )
        RollupMark.objects.create(rolled_until=mark)
        users = User.objects.bulk_create(
            User(username=f"user-{i}-{uuid.uuid4().hex[:6]}") for i in range(server_count)
        )
        Balance.objects.bulk_create(
            Balance(user=user, tokens_contributed=1000 * i) for i, user in enumerate(users)
        )
        LedgerEntry.objects.bulk_create(
            LedgerEntry(user=user, kind=LedgerEntry.Kind.CONTRIBUTION, tokens=50,
                        job_id=uuid.uuid4(), created=now)
            for user in users[:50]
        )  # fmt: skip
        servers = Server.objects.bulk_create(
            Server(name=f"server-{i}", owner=user, models=[names[i % len(names)]], speed=20.0)
            for i, user in enumerate(users)
        )
        live = Prompt.objects.bulk_create(
            Prompt(user=users[i % len(users)], text="x" * 500, n=2, waiting=1 if i % 2 else 0,
                   max_length=200, max_context_length=2048, sort_key=-i, any_model=False,
                   models=[names[i % len(names)]], created=now - timedelta(seconds=i % 600),
                   expires_at=now + timedelta(minutes=10))
            for i in range(prompt_count)
        )  # fmt: skip
        PromptModel.objects.bulk_create(PromptModel(prompt=p, name=p.models[0]) for p in live)
        Job.objects.bulk_create(
            Job(prompt=p, server=servers[i % len(servers)], model=p.models[0],
                state=Job.State.DONE if i % 3 else Job.State.PROCESSING, text="y" * 400,
                tokens=100, started=p.created + timedelta(seconds=5),
                finished=p.created + timedelta(seconds=15) if i % 3 else None,
                deadline=now + timedelta(minutes=5))
            for i, p in enumerate(live)
        )  # fmt: skip


@dataclass(frozen=True)
class Sample:
    cpu: float  # milliseconds of this process's CPU (SQLite runs in it too)
    wall: float
    size: int
    queries: int


def _median(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(sample, field) for sample in samples)


def _get(client: Client, path: str, forget: str = "") -> Sample:
    if forget:
        cache.delete_many([f"{forget}15", "stats:v2:totals"])
    with CaptureQueriesContext(connection) as queries:
        cpu, wall = time.process_time(), time.perf_counter()
        response = client.get(path)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert response.status_code == 200, (path, response.status_code)
    return Sample(cpu * 1000, wall * 1000, len(response.content), len(queries.captured_queries))

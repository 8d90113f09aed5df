"""`manage.py benchmark`: the cost of pop, submit and status as the queue grows (DESIGN §7).

It runs in a throwaway test database (never the configured one), fills the queue with
synthetic waiting prompts, and times the hot-path services and the whole HTTP round trip.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test.utils import (
    CaptureQueriesContext,
    override_settings,
    setup_databases,
    teardown_databases,
)
from django.utils import timezone

# A sample per measured call: wall milliseconds and database queries.
Sample = tuple[float, int]
OPERATIONS = ("pop", "submit", "status", "status_v2", "v2_tail")


class Command(BaseCommand):
    help = "Measure pop, submit and status against queues of different sizes (test database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sizes", default="100,10000", help="Comma-separated queue sizes (waiting prompts)."
        )
        parser.add_argument("--rounds", type=int, default=200, help="Calls measured per size.")

    def handle(self, *args: Any, sizes: str, rounds: int, **options: Any) -> None:
        queue_sizes = [int(size) for size in sizes.split(",")]
        vendor = connection.vendor
        self.stdout.write(f"Benchmark on {vendor}: {rounds} rounds per queue size")
        old_config = setup_databases(verbosity=0, interactive=False)
        try:
            results = {size: self._measure(size, rounds) for size in queue_sizes}
            self._report(results, queue_sizes)
            self._report_round_trip(rounds)
        finally:
            teardown_databases(old_config, verbosity=0)

    def _measure(self, size: int, rounds: int) -> dict[str, list[Sample]]:
        from accounts.models import User
        from generations.models import Prompt
        from generations.services import job_pop, job_submit, prompt_status
        from servers.models import Server

        self._reset()
        owner = User.objects.create_user(f"owner-{uuid.uuid4().hex[:8]}", password="x")
        server = Server.objects.create(
            name=f"bench-{uuid.uuid4().hex[:8]}",
            owner=owner,
            models=["bench-model"],
            max_length=512,
            max_context_length=4096,
        )
        # Enough slots that every round finds work, however small the queue.
        self._fill_queue(size, slots=max(3, rounds // size + 1))
        self.stdout.write(f"  queue of {size} waiting prompts ready")
        samples: dict[str, list[Sample]] = {name: [] for name in OPERATIONS}
        tail = Prompt.objects.queued().order_by("sort_key", "-created").first()
        for _ in range(rounds):
            popped = _timed(samples["pop"], lambda: job_pop(server=server))
            job = popped.job
            _timed(samples["status"], lambda job=job: prompt_status(prompt_id=job.prompt_id))
            # The AI Horde's status adds the queue position, wait and possibility.
            _timed(
                samples["status_v2"],
                lambda job=job: prompt_status(prompt_id=job.prompt_id, outlook=True),
            )
            # …which for the last prompt of the queue reads the queue up to QUEUE_SCAN rows.
            _timed(samples["v2_tail"], lambda: prompt_status(prompt_id=tail.id, outlook=True))
            _timed(samples["submit"], lambda job=job: job_submit(job=job, text="x" * 64))
        return samples

    def _reset(self) -> None:
        from generations.models import Prompt

        Prompt.objects.all().delete()

    def _fill_queue(self, size: int, slots: int) -> None:
        """Waiting prompts like real traffic: most accept any model, some name models."""
        from accounts.models import User
        from generations.models import Prompt, PromptModel
        from generations.services import sort_key

        now = timezone.now()
        requester = User.objects.create(username=f"req-{uuid.uuid4().hex[:8]}")
        prompts, names = [], []
        for index in range(size):
            created = now - timedelta(seconds=index % 300)
            named = ["bench-model", "other-model"] if index % 3 == 0 else []
            prompt = Prompt(
                user=requester,
                text=f"benchmark prompt {index} " * 20,
                n=slots,
                waiting=slots,
                max_length=80 if index % 5 else 1024,
                max_context_length=2048,
                models=named,
                any_model=not named,
                sort_key=sort_key(index % 50, created),
                created=created,
                last_activity=created,
                expires_at=now + timedelta(hours=1),
            )
            prompts.append(prompt)
            names += [PromptModel(prompt=prompt, name=name) for name in named]
        Prompt.objects.bulk_create(prompts, batch_size=2000)
        PromptModel.objects.bulk_create(names, batch_size=2000)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")

    def _report(self, results: dict[int, dict[str, list[Sample]]], sizes: list[int]) -> None:
        self.stdout.write("")
        header = f"{'operation':<10}{'queue':>8}{'mean ms':>10}{'p50 ms':>9}{'p95 ms':>9}"
        self.stdout.write(header + f"{'queries':>9}")
        for name in OPERATIONS:
            for size in sizes:
                millis = [ms for ms, _ in results[size][name]]
                queries = max(q for _, q in results[size][name])
                self.stdout.write(
                    f"{name:<10}{size:>8}{statistics.mean(millis):>10.2f}"
                    f"{statistics.median(millis):>9.2f}{_p95(millis):>9.2f}{queries:>9}"
                )
        if len(sizes) > 1:
            small, large = sizes[0], sizes[-1]
            self.stdout.write("")
            for name in OPERATIONS:
                ratio = statistics.median(m for m, _ in results[large][name]) / statistics.median(
                    m for m, _ in results[small][name]
                )
                self.stdout.write(
                    f"{name}: median at {large} is {ratio:.2f}x the median at {small}"
                )

    def _report_round_trip(self, rounds: int) -> None:
        """CPU time of one generation through the HTTP API: prompt, pop, submit, status."""
        from rest_framework.test import APIClient

        self._reset()
        client = APIClient()
        server = {"username": "rt-owner", "password": "pw", "name": "rt-1", "model": "m"}
        client.post("/generate/pop", server, format="json")  # create the account once
        cpu = []
        # One client hammering the API is exactly what the rate limits refuse.
        limits_off = {**settings.KOBOLDCLUSTER, "RATE_LIMITS_ENABLED": False}
        with override_settings(KOBOLDCLUSTER=limits_off):
            for _ in range(rounds):
                cpu.append(self._round_trip(client, server))
            key = self._v2_key()
            cpu_v2 = [self._round_trip_v2(client, key) for _ in range(rounds)]
        self.stdout.write("")
        self.stdout.write(
            f"round trip (prompt, pop, submit, status over HTTP, in-process): "
            f"{statistics.median(cpu):.2f} ms CPU median, {_p95(cpu):.2f} ms p95"
        )
        self.stdout.write(
            f"the same through the AI Horde v2 API: "
            f"{statistics.median(cpu_v2):.2f} ms CPU median, {_p95(cpu_v2):.2f} ms p95"
        )

    def _v2_key(self) -> str:
        from accounts.keys import account_register

        return account_register(username=f"rt-{uuid.uuid4().hex[:8]}")[1]

    def _round_trip_v2(self, client: Any, key: str) -> float:
        """CPU milliseconds of one generation through the AI Horde v2 API."""
        start = time.process_time()
        asked = client.post(
            "/api/v2/generate/text/async", {"prompt": "Hello"}, format="json", HTTP_APIKEY=key
        ).json()
        job = client.post(
            "/api/v2/generate/text/pop",
            {"name": "rt-v2", "models": ["m"]},
            format="json",
            HTTP_APIKEY=key,
        ).json()
        client.post(
            "/api/v2/generate/text/submit",
            {"id": job["id"], "generation": "world"},
            format="json",
            HTTP_APIKEY=key,
        )
        client.get(f"/api/v2/generate/text/status/{asked['id']}")
        return (time.process_time() - start) * 1000

    def _round_trip(self, client: Any, server: dict[str, str]) -> float:
        """CPU milliseconds of one generation through the API."""
        start = time.process_time()
        prompt = client.post("/generate/prompt", {"prompt": "Hello"}, format="json").json()
        job = client.post("/generate/pop", server, format="json").json()
        body = {"id": job["id"], "password": "pw", "generation": "world"}
        client.post("/generate/submit", body, format="json")
        client.get(f"/generate/prompt/{prompt['id']}")
        return (time.process_time() - start) * 1000


def _timed(samples: list[Sample], call: Callable[[], Any]) -> Any:
    connection.queries_log.clear()  # the log is bounded; a full one only warns and slows down
    with CaptureQueriesContext(connection) as queries:
        start = time.perf_counter()
        result = call()
        elapsed = (time.perf_counter() - start) * 1000
    samples.append((elapsed, len(queries.captured_queries)))
    return result


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]

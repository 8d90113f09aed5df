"""`manage.py benchmark`: the server's CPU time and SQL statements per hot-path request.

It runs in a throwaway test database (never the configured one), fills the queue with
synthetic waiting prompts, and drives the API in-process as clients do (Django's test client:
the whole request, from parsing to the JSON answer), measuring each request's process CPU
time (not wall time) and the statements it sent. Rate limits are off, as for any load test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, connections
from django.test.utils import override_settings, setup_databases, teardown_databases
from django.utils import timezone

from benchmarks.through_http import HttpDriver
from benchmarks.through_http import measure as measure_http

# A sample per measured request: its CPU milliseconds (the statements each request sends are
# asserted by generations/tests/test_hot_path_queries.py).
Sample = float
OPERATIONS = (
    "create",
    "pop",
    "submit",
    "status",
    "status_v2",
    "idle_pop",
    "create_v2",
    "pop_v2",
    "submit_v2",
)
PASSWORD = "bench-password"


class Command(BaseCommand):
    help = "Measure CPU time and statements of create, pop, submit, status and idle pop."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sizes", default="100,10000", help="Comma-separated queue sizes (waiting prompts)."
        )
        parser.add_argument("--rounds", type=int, default=300, help="Requests measured per size.")
        parser.add_argument(
            "--repeat",
            type=int,
            default=1,
            help="Measure every size this many times, in turn; report each request's lowest "
            "median (the run least disturbed by anything else on the machine).",
        )
        parser.add_argument(
            "--http",
            action="store_true",
            help="Also send the original API's requests through the web server as ./run.sh "
            "starts it (scripts/web.sh), over one kept-alive HTTP connection, and report the "
            "web server's CPU per request (benchmarks/through_http.py).",
        )
        parser.add_argument(
            "--workers", default="1", help="Web processes (WEB_WORKERS) for --http."
        )

    def handle(
        self, *args: Any, sizes: str, rounds: int, repeat: int, http: bool, **options: Any
    ) -> None:
        queue_sizes = [int(size) for size in sizes.split(",")]
        self.stdout.write(
            f"Benchmark on {connection.vendor}: {rounds} rounds per queue size, {repeat} time(s)"
        )
        old_config = setup_databases(verbosity=0, interactive=False)
        # Connections as a web process keeps them (settings.py): persistent, without a health
        # check before each request. The same settings serve the sync thread's connection.
        connection.settings_dict["CONN_HEALTH_CHECKS"] = False
        limits_off = {**settings.KOBOLDCLUSTER, "RATE_LIMITS_ENABLED": False}
        self.web = None
        try:
            if http:
                self.web = _start_web(options["workers"])
            medians: dict[int, dict[str, float]] = {}
            through_http: dict[int, dict[str, float]] = {}
            with override_settings(KOBOLDCLUSTER=limits_off, DEBUG=False):
                for _ in range(repeat):
                    for size in queue_sizes:
                        samples, over_http = self._measure(size, rounds)
                        for name, values in samples.items():
                            median = statistics.median(values)
                            best = medians.setdefault(size, {}).get(name, median)
                            medians[size][name] = min(best, median)
                        for name, mean in over_http.items():
                            best = through_http.setdefault(size, {}).get(name, mean)
                            through_http[size][name] = min(best, mean)
            self._report(medians, queue_sizes)
            if through_http:
                self._report_http(medians, through_http, queue_sizes, options["workers"])
        finally:
            if self.web is not None:
                self.web.stop()
                shutil.rmtree(self.web.metrics_dir, ignore_errors=True)
            _Driver.close_connections()
            teardown_databases(old_config, verbosity=0)

    def _measure(self, size: int, rounds: int) -> tuple[dict[str, list[Sample]], dict[str, float]]:
        from accounts.keys import account_register
        from generations.models import Prompt

        Prompt.objects.all().delete()
        api = _Driver()
        tag = uuid.uuid4().hex[:8]
        client, key = account_register(username=f"client-{tag}")
        client.concurrency = 10**6
        client.save(update_fields=["concurrency"])
        _, server_key = account_register(username=f"v2-owner-{tag}")
        server = {
            "username": f"owner-{tag}",
            "password": PASSWORD,
            "name": f"bench-{tag}",
            "model": "bench-model",
            "max_length": 512,
            "max_content_length": 4096,
        }
        # Nothing in the queue fits its context: every pop of it is an idle one.
        idle = {**server, "name": f"idle-{tag}", "max_content_length": 100}
        v2_server = {"name": f"bench-v2-{tag}", "models": ["bench-model"], "max_length": 512}
        api.post("/generate/pop", server)  # create the account and the servers
        api.post("/generate/pop", idle)
        api.post("/api/v2/generate/text/pop", v2_server, server_key)
        self._fill_queue(size)
        self.stdout.write(f"  queue of {size} waiting prompts ready")
        samples: dict[str, list[Sample]] = {name: [] for name in OPERATIONS}
        ask = {"prompt": "Hello", "params": {"max_length": 80}}
        for _ in range(rounds):
            prompt_id = _timed(samples["create"], api.post, "/generate/prompt", ask, key)["id"]
            job_id = _timed(samples["pop"], api.post, "/generate/pop", server)["id"]
            result = {"id": job_id, "password": PASSWORD, "generation": "x" * 64}
            _timed(samples["submit"], api.post, "/generate/submit", result)
            _timed(samples["status"], api.get, f"/generate/prompt/{prompt_id}")
            _timed(samples["status_v2"], api.get, f"/api/v2/generate/text/status/{prompt_id}")
            _timed(samples["idle_pop"], api.post, "/generate/pop", idle)
            _timed(samples["create_v2"], api.post, "/api/v2/generate/text/async", ask, key)
            popped = _timed(
                samples["pop_v2"], api.post, "/api/v2/generate/text/pop", v2_server, server_key
            )
            result = {"id": popped["id"], "generation": "x" * 64}
            _timed(
                samples["submit_v2"], api.post, "/api/v2/generate/text/submit", result, server_key
            )
        over_http: dict[str, float] = {}
        if self.web is not None:
            driver = HttpDriver(self.web.url, self.web.pgid)
            try:
                over_http = measure_http(
                    driver, rounds, key=key, server=server, idle=idle, password=PASSWORD
                )
            finally:
                driver.close()
        return samples, over_http

    def _fill_queue(self, size: int) -> None:
        """Waiting prompts like real traffic: most accept any model, some name models."""
        from accounts.models import User
        from generations.intake import sort_key
        from generations.models import Prompt, PromptModel

        now = timezone.now()
        requester = User.objects.create(username=f"req-{uuid.uuid4().hex[:8]}")
        prompts, names = [], []
        for index in range(size):
            created = now - timedelta(seconds=index % 300)
            named = ["bench-model", "other-model"] if index % 3 == 0 else []
            prompt = Prompt(
                user=requester,
                text=f"benchmark prompt {index} " * 20,
                n=1000,
                waiting=1000,
                max_length=80 if index % 5 else 1024,
                max_context_length=2048,
                models=named,
                any_model=not named,
                # Behind the requests the benchmark makes: each pop takes the newest request,
                # with the whole queue waiting behind it.
                sort_key=sort_key(index % 50 - 10**6, created),
                created=created,
                last_activity=created,
                expires_at=now + timedelta(hours=1),
            )
            prompts.append(prompt)
            names += [PromptModel(prompt=prompt, name=name) for name in named]
        Prompt.objects.bulk_create(prompts, batch_size=2000)
        PromptModel.objects.bulk_create(names, batch_size=2000)
        # As a running cluster has them: fresh statistics (PostgreSQL's autovacuum), the
        # write-ahead log checkpointed (SQLite: the purge does it every minute).
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("ANALYZE")
            else:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _report(self, results: dict[int, dict[str, float]], sizes: list[int]) -> None:
        self.stdout.write("")
        head = f"{'request':<11}" + "".join(f"{f'CPU ms @{s}':>15}" for s in sizes)
        self.stdout.write(head + f"{'ratio':>8}")
        for name in OPERATIONS:
            medians = [results[size][name] for size in sizes]
            line = f"{name:<11}" + "".join(f"{m:>15.2f}" for m in medians)
            self.stdout.write(f"{line}{medians[-1] / medians[0]:>8.2f}")
        for api, parts in (("original", ("create", "pop", "submit")),
                           ("v2", ("create_v2", "pop_v2", "submit_v2"))):  # fmt: skip
            for size in sizes:
                total = sum(results[size][p] for p in parts)
                self.stdout.write(
                    f"one generation (create + pop + submit, {api} API) at {size}: "
                    f"{total:.2f} ms CPU"
                )

    def _report_http(
        self,
        in_process: dict[int, dict[str, float]],
        through_http: dict[int, dict[str, float]],
        sizes: list[int],
        workers: str,
    ) -> None:
        self.stdout.write("")
        self.stdout.write(
            f"Through HTTP (scripts/web.sh, {workers} worker(s), one kept-alive connection): "
            "the web server's CPU per request (mean over batches), next to the in-process median"
        )
        for size in sizes:
            self.stdout.write(f"{'request':<11}{f'HTTP @{size}':>15}{'in-process':>12}{'extra':>8}")
            for name in HTTP_OPERATIONS:
                http, inside = through_http[size][name], in_process[size][name]
                self.stdout.write(f"{name:<11}{http:>15.2f}{inside:>12.2f}{http - inside:>8.2f}")
            http = sum(through_http[size][p] for p in ("create", "pop", "submit"))
            inside = sum(in_process[size][p] for p in ("create", "pop", "submit"))
            self.stdout.write(
                f"one generation (create + pop + submit) through HTTP at {size}: {http:.2f} ms "
                f"CPU (in-process {inside:.2f} ms)"
            )


HTTP_OPERATIONS = ("create", "pop", "submit", "status", "idle_pop")


def _start_web(workers: str) -> Any:
    """The web server as ./run.sh starts it (its log level and all), on the benchmark's
    database, rate limits off."""
    from koboldcluster.testing import ClusterProcess

    # As ./run.sh sets it: the web processes keep their metrics in files (multiprocess mode).
    metrics = tempfile.mkdtemp(prefix="benchmark-metrics-")
    web = ClusterProcess(
        {"WEB_WORKERS": workers, "PROMETHEUS_MULTIPROC_DIR": metrics, "WEB_ACCESS_LOG": "off"}
    )
    web.metrics_dir = metrics
    web.start()
    return web


class _Driver:
    """Requests straight into the ASGI application that `./run.sh` serves (the web server hands it
    the same scope and body), on one event loop: everything but the HTTP parsing."""

    def __init__(self) -> None:
        from koboldcluster.asgi import application

        self.application = application
        self.loop = asyncio.new_event_loop()

    @staticmethod
    def close_connections() -> None:
        """Close the sync thread's database connections (the test database is dropped next)."""
        asyncio.run(sync_to_async(connections.close_all)())

    def post(self, path: str, body: dict[str, Any], apikey: str | None = None) -> Any:
        headers = [(b"content-type", b"application/json")]
        if apikey:
            headers.append((b"apikey", apikey.encode()))
        return self._answer("POST", path, headers, json.dumps(body).encode())

    def get(self, path: str) -> Any:
        return self._answer("GET", path, [], b"")

    def _answer(self, method: str, path: str, headers: list, body: bytes) -> Any:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 5001),
        }  # fmt: skip
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        scope["headers"] = headers
        sent: list[dict[str, Any]] = []
        bodies = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if bodies:
                return bodies.pop()
            await asyncio.Event().wait()  # the client stays connected until the answer
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.application(scope, receive, send))
        status = sent[0]["status"]
        content = b"".join(m.get("body", b"") for m in sent[1:])
        assert status in (200, 202), content
        return json.loads(content)


def _timed(samples: list[Sample], call: Callable[..., Any], *args: Any) -> Any:
    start = time.process_time()  # every thread of the process: the loop and the sync thread
    result = call(*args)
    samples.append((time.process_time() - start) * 1000)
    return result

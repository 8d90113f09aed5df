"""Real processes for end-to-end tests: the cluster served as run.sh serves it, and qcluster.

They run against the test database pytest-django created, so a test must use the
`transactional_db` fixture (rows committed, visible to other processes). Use the `cluster`
and `scheduler` fixtures from the root conftest.py rather than these classes directly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO

import requests
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """DATABASE_URL of the database pytest-django is testing against."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    user = settings.get("USER") or "postgres"
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings['NAME']}"


def wait_until(condition, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ClusterStartError(AssertionError):
    """The cluster did not become ready; the message has its output."""


class ManagedProcess:
    """A child process with its output captured to a temporary file for failure reports."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.process: subprocess.Popen | None = None
        # The process group of the last start; it outlives the leader if a child lingers.
        self.pgid: int | None = None
        self.log: IO[str] = tempfile.NamedTemporaryFile("w+", prefix="e2e-", suffix=".log")  # noqa: SIM115

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args,
            cwd=BASE_DIR,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() takes all its children
        )
        self.pgid = self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Stop the whole process group: `sig` first, SIGKILL after `timeout` seconds.

        Children left in the group after the leader exited (a web server's workers after its
        master crashed) are killed too.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.killpg(self.pgid, sig)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pgid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        with suppress(ProcessLookupError):  # nothing left: the usual case
            os.killpg(self.pgid, signal.SIGKILL)
        code = self.process.returncode
        self.process = None
        return code

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": test_database_url(), "PYTHONUNBUFFERED": "1"}
    # The test process's own rate-limit counts (see own_counters_file in conftest.py).
    env["KOBOLDCLUSTER_COUNTERS_FILE"] = settings.KOBOLDCLUSTER["COUNTERS_FILE"]
    env["KOBOLDCLUSTER_WAKEUP_SOCKET_DIR"] = settings.KOBOLDCLUSTER["WAKEUP_SOCKET_DIR"]
    env["KOBOLDCLUSTER_TRANSIENT_DIR"] = settings.KOBOLDCLUSTER["TRANSIENT_DIR"]
    env.update(extra)
    return env


def _purge_kept_on_time() -> None:
    """The purge's schedule as a running scheduler keeps it. `migrate` makes the schedules due
    when the database was made, and a test's cluster runs no scheduler (a test that wants one
    starts a SchedulerProcess): once the test database is older than the readiness check's
    5 minutes (koboldcluster/scheduler_health.py), a cluster started on it would never be
    ready, as happened to whichever end-to-end test a worker of the suite ran first after
    that long. An overdue purge is moved to now; a test that wants it overdue sets that after
    the cluster started. Where the caller may not use the database, there is none to fix."""
    from django.utils import timezone
    from django_q.models import Schedule

    from koboldcluster.scheduler_health import OVERDUE, PURGE_FUNC

    now = timezone.now()
    with suppress(RuntimeError):  # pytest-django's "Database access not allowed"
        Schedule.objects.filter(func=PURGE_FUNC, next_run__lt=now - OVERDUE).update(next_run=now)


class ClusterProcess(ManagedProcess):
    """The cluster's web server (scripts/web.sh: uvicorn, ASGI) on a free port."""

    # Seconds a start may take, however loaded the machine: past it the start fails, with the
    # process output in the message.
    start_timeout: float = 120.0
    # Seconds one `/readyz` probe may take before it counts as a transient failure.
    probe_timeout: float = 10.0

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # As run.sh starts it (scripts/web.sh), with this interpreter and one process unless
        # the test asks for more (WEB_WORKERS in `env`).
        args = ["bash", str(BASE_DIR / "scripts" / "web.sh")]
        env = {
            "KOBOLDCLUSTER_PYTHON": sys.executable,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_WORKERS": "1",
            "WEB_KILL_TIMEOUT": "5",
            # Tests read the access log (no request answered with a 5xx); the benchmarks
            # turn it off, as ./run.sh serves.
            "WEB_ACCESS_LOG": "on",
            **(env or {}),
        }
        # Rate limits would trip tests that hammer the cluster; a test may turn them on.
        super().__init__(args, _child_env({"KOBOLDCLUSTER_RATE_LIMITS": "off", **(env or {})}))

    def start(self) -> None:
        """Start and wait until `/readyz` says ready; if it does not, stop it and raise."""
        _purge_kept_on_time()
        super().start()
        try:
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        """Poll `/readyz` until it answers 200, for at most `timeout` seconds in all.

        Every transient failure is retried: connection refused or reset while the server
        binds and boots, a read timeout on a loaded machine, a 5xx or a 503 "not ready".
        A 4xx is not transient (another program holds the port) and fails at once.
        """
        deadline = time.monotonic() + timeout
        answer, error = "none", ""  # the last HTTP answer, and a failure after it if any
        while True:
            if not self.running():
                code = self.process.returncode if self.process else None
                raise ClusterStartError(
                    f"the cluster at {self.url} exited (code {code}) before it was ready; "
                    f"last answer: {answer}{error}. Its output:\n{self.output()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterStartError(
                    f"the cluster at {self.url} was not ready after {timeout:.0f} s; last answer: "
                    f"{answer}{error}. Its output:\n{self.output()}"
                )
            try:
                response = requests.get(
                    f"{self.url}/readyz", timeout=min(self.probe_timeout, remaining)
                )
            except requests.RequestException as failure:
                error = f"; then {type(failure).__name__}: {failure}"
            else:
                if response.status_code == 200:
                    return
                answer, error = f"{response.status_code} {response.text[:300]}", ""
                if response.status_code < 500:
                    raise ClusterStartError(
                        f"{self.url}/readyz answered {answer}: not this cluster? Its output:\n"
                        f"{self.output()}"
                    )
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def restart(self) -> None:
        self.stop()
        self.start()


class SchedulerProcess(ManagedProcess):
    """django-q2's `manage.py qcluster`, running the scheduled tasks."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        args = [sys.executable, "manage.py", "qcluster"]
        super().__init__(args, _child_env(env or {}))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int | None:
        """Stop it as Ctrl-C does (in about a second).

        SIGTERM to the whole group would reach django-q2's workers before their sentinel
        can stop them in order, and the sentinel then waits about 20 s for them.
        """
        return super().stop(sig, timeout)


@contextmanager
def started(*processes: ManagedProcess) -> Iterator[tuple[ManagedProcess, ...]]:
    """Start the processes in order; stop every one of them on leaving, whatever happens
    (a later one failing to start, the test failing, Ctrl-C)."""
    with ExitStack() as stack:
        for process in processes:
            stack.callback(process.stop)
            process.start()
        yield processes


# The Redis that ./test.sh and CI start; tests of several nodes share it.
TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_env() -> dict[str, str]:
    """`REDIS_URL` for processes that share the test Redis. Fails, never skips, when it is not
    running: ./test.sh starts it, so a missing Redis is a broken setup."""
    import redis

    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError as error:
        raise AssertionError(
            f"Redis is not running at {TEST_REDIS_URL} (./test.sh starts it): {error}"
        ) from None
    return {"REDIS_URL": TEST_REDIS_URL}

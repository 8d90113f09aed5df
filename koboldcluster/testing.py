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
    if settings["ENGINE"] == "django.db.backends.sqlite3":
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


class ManagedProcess:
    """A child process with its output captured to a temporary file for failure reports."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.process: subprocess.Popen | None = None
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

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        code = self.process.returncode
        self.process = None
        return code

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": test_database_url(), "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


class ClusterProcess(ManagedProcess):
    """The cluster's web server (scripts/web.sh: granian, ASGI) on a free port."""

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
            **(env or {}),
        }
        # Rate limits would trip tests that hammer the cluster; a test may turn them on.
        super().__init__(args, _child_env({"KOBOLDCLUSTER_RATE_LIMITS": "off", **(env or {})}))

    def start(self) -> None:
        super().start()
        wait_until(self._answers, timeout=30, what=f"the cluster at {self.url}\n{self.output()}")

    def _answers(self) -> bool:
        if not self.running():
            raise AssertionError(f"the cluster process exited:\n{self.output()}")
        try:
            return requests.get(f"{self.url}/servers", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

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

"""Shared fixtures: named personas and small helpers that drive the API like clients do."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.models import User
from koboldcluster.asgi_client import APIClient, Client

SERVER_PASSWORD = "s3rver-pass"


@pytest.fixture(autouse=True, scope="session")
def own_counters_file() -> None:
    """Each test process (pytest-xdist worker, and the SQLite and PostgreSQL runs of
    ./test.sh) counts rate limits in a file of its own and has its own wake-up sockets and
    transient folders: clearing the counts before a test must not reset another process's
    test, nor another's wake-ups wake its waiters, nor a test on a fake clock (years ahead)
    sweep away the progress texts and signs of life of another's servers as stale. Server
    processes a test starts use the same ones."""
    from django.conf import settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    database = hashlib.sha256(str(settings.DATABASES["default"]["NAME"]).encode()).hexdigest()
    name = f"test-counters-{database[:8]}-{worker}"
    settings.KOBOLDCLUSTER["COUNTERS_FILE"] = str(settings.VAR_DIR / f"{name}.sqlite3")
    # Wake-ups too: another test process's broadcasts must not wake this one's waiters.
    wakeups = Path(tempfile.gettempdir()) / f"kc-wakeups-{database[:8]}-{worker}"
    settings.KOBOLDCLUSTER["WAKEUP_SOCKET_DIR"] = str(wakeups)
    transient = Path(tempfile.gettempdir()) / f"kc-transient-{database[:8]}-{worker}"
    settings.KOBOLDCLUSTER["TRANSIENT_DIR"] = str(transient)


@pytest.fixture
def own_transient_dir(settings: Any, tmp_path: Path) -> Path:
    """Progress texts and signs of life of this test's own (to count the files it left)."""
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "TRANSIENT_DIR": str(tmp_path)}
    return tmp_path


@pytest.fixture(autouse=True)
def fast_password_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    """No test sees what an earlier one left in the cache, the shared counters or the process's
    own memory (idle pop answers, the active servers snapshot): their rows were rolled back."""
    from generations import events
    from koboldcluster import counters
    from servers.services import servers_changed

    cache.clear()
    counters.clear()
    events.queue_changed_here()
    servers_changed()


@pytest.fixture(autouse=True)
def no_rate_limits(settings: Any) -> None:
    """Rate limits are off in tests; the `rate_limits` fixture turns them on. A front-end
    request that no server could serve waits a short grace (tests of it set their own)."""
    settings.KOBOLDCLUSTER = {
        **settings.KOBOLDCLUSTER,
        "RATE_LIMITS_ENABLED": False,
        "FRONTEND_GRACE_SECONDS": 0.3,
    }


@pytest.fixture
def rate_limits(settings: Any, time_machine: Any) -> Callable[..., None]:
    """Turn the rate limits on, with `name="count/period"` overrides (e.g. submit_ip="2/min").

    The limits count in fixed windows of the wall clock. So that a test's requests never
    straddle the end of a window, the clock jumps to the start of the next minute (a ticking
    fake clock, at most a minute ahead: nothing created before expires).
    """

    def turn_on(**rates: str) -> None:
        from koboldcluster.env import parse_rate

        next_minute = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
        time_machine.move_to(next_minute + timedelta(seconds=1))

        limits = settings.KOBOLDCLUSTER
        parsed = {name: parse_rate(rate) for name, rate in rates.items()}
        settings.KOBOLDCLUSTER = {
            **limits,
            "RATE_LIMITS_ENABLED": True,
            "RATE_LIMITS": {**limits["RATE_LIMITS"], **parsed},
        }

    return turn_on


@pytest.fixture(autouse=True)
def answers_match_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer a test gets through the API test client is checked against the published
    OpenAPI schema (koboldcluster/schema_check.py): the schema cannot drift from the views."""
    from koboldcluster.schema_check import check_response

    request = APIClient.request

    def checked(self: APIClient, **kwargs: Any) -> Any:
        response = request(self, **kwargs)
        if response.streaming:
            return response  # files and event streams: no JSON body to check
        check_response(
            kwargs.get("PATH_INFO", ""),
            kwargs.get("REQUEST_METHOD", "GET"),
            response.status_code,
            response.content,
            response.get("Content-Type", ""),
        )
        return response

    monkeypatch.setattr(APIClient, "request", checked)


@pytest.fixture
def api() -> APIClient:
    """DRF's test client, sending its requests into the ASGI application the web server serves."""
    return APIClient()


@pytest.fixture
def client() -> Client:
    """Django's test client (pytest-django's `client`), through the same ASGI application."""
    return Client()


@pytest.fixture
def alice(db: None) -> User:
    """A client who submits prompts under an unclaimed name."""
    return User.objects.create(username="alice", kind=User.Kind.UNCLAIMED)


@pytest.fixture
def bob(db: None) -> User:
    """A contributor whose servers generate for others."""
    return User.objects.create_user("bob", password=SERVER_PASSWORD)


@pytest.fixture
def register(db: None) -> Callable[..., tuple[User, str]]:
    """Register an account (as /api/v2/register does); return the user and its API key."""
    from accounts.keys import account_register

    def make(username: str, **fields: Any) -> tuple[User, str]:
        user, key = account_register(username=username)
        if fields:
            User.objects.filter(pk=user.pk).update(**fields)
            user.refresh_from_db()
        return user, key

    return make


@pytest.fixture
def submit_prompt(api: APIClient) -> Callable[..., str]:
    """POST /generate/prompt (with an `apikey` header if given) and return the id."""

    def submit(prompt: str = "Once upon a time", apikey: str | None = None, **body: Any) -> str:
        body.setdefault("params", {"n": 1, "max_length": 16})
        headers = {"HTTP_APIKEY": apikey} if apikey else {}
        response = api.post(
            "/generate/prompt", {"prompt": prompt, **body}, format="json", **headers
        )
        assert response.status_code == 200, response.json()
        return response.json()["id"]

    return submit


@pytest.fixture
def pop(api: APIClient) -> Callable[..., Any]:
    """POST /generate/pop as a server of bob's and return the response."""

    def do_pop(name: str = "bob-1", **body: Any) -> Any:
        body = {
            "username": "bob",
            "password": SERVER_PASSWORD,
            "name": name,
            "model": "tiny-llm",
            "max_length": 80,
            "max_content_length": 2048,
            **body,
        }
        return api.post("/generate/pop", body, format="json")

    return do_pop


@pytest.fixture
def submit_generation(api: APIClient) -> Callable[..., Any]:
    def submit(job_id: str, text: str = " and then", **body: Any) -> Any:
        body = {"id": job_id, "password": SERVER_PASSWORD, "generation": text, **body}
        return api.post("/generate/submit", body, format="json")

    return submit


def require_e2e_marker(request: pytest.FixtureRequest) -> None:
    """Tests that start real processes are marked e2e, so that `pytest -m "not e2e"`
    (README: Development) stays the fast loop."""
    if request.node.get_closest_marker("e2e") is None:
        pytest.fail(f"{request.node.nodeid} starts real processes: mark it @pytest.mark.e2e")


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """Environment overrides for the `cluster` process (e.g. short KOBOLDCLUSTER_* intervals).

    Override this fixture in a test module; pass the same values to `scheduler(**cluster_env)`
    so that both processes work by the same rules.
    """
    return {}


@pytest.fixture
def cluster(request: pytest.FixtureRequest, transactional_db: None, cluster_env: dict[str, str]):
    """The cluster served by a real web server process (as run.sh) on a free port, on the test DB.

    Call `cluster.restart()` to restart it mid-test; it is stopped at teardown.
    """
    require_e2e_marker(request)
    from koboldcluster.testing import ClusterProcess, started

    with started(ClusterProcess(cluster_env)) as (process,):
        yield process


@pytest.fixture
def scheduler(request: pytest.FixtureRequest, transactional_db: None):
    """A factory for a real `manage.py qcluster` process; pass env overrides for short intervals."""
    require_e2e_marker(request)
    from koboldcluster.testing import SchedulerProcess, started

    with ExitStack() as stack:

        def start(**env: str) -> SchedulerProcess:
            process = SchedulerProcess(env)
            stack.enter_context(started(process))
            return process

        yield start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `external` need a program no package registry has (KoboldCpp, built by the
    developer: README, Development): they run only when asked for by name (`-m external`,
    ./test_external.sh), never in ./test.sh or a plain `pytest`, whatever else -m says."""
    if "external" in (config.option.markexpr or ""):
        return
    external = [item for item in items if item.get_closest_marker("external")]
    if external:
        config.hook.pytest_deselected(items=external)
        items[:] = [item for item in items if not item.get_closest_marker("external")]

"""Shared fixtures: named personas and small helpers that drive the API like clients do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.models import User

SERVER_PASSWORD = "s3rver-pass"


@pytest.fixture(autouse=True)
def fast_password_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    cache.clear()


@pytest.fixture(autouse=True)
def no_rate_limits(settings: Any) -> None:
    """Rate limits are off in tests; the `rate_limits` fixture turns them on."""
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "RATE_LIMITS_ENABLED": False}


@pytest.fixture
def rate_limits(settings: Any) -> Callable[..., None]:
    """Turn the rate limits on, with `name="count/period"` overrides (e.g. submit_ip="2/min")."""

    def turn_on(**rates: str) -> None:
        from koboldcluster.settings import parse_rate

        limits = settings.KOBOLDCLUSTER
        parsed = {name: parse_rate(rate) for name, rate in rates.items()}
        settings.KOBOLDCLUSTER = {
            **limits,
            "RATE_LIMITS_ENABLED": True,
            "RATE_LIMITS": {**limits["RATE_LIMITS"], **parsed},
        }

    return turn_on


@pytest.fixture
def api() -> APIClient:
    return APIClient()


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
    from accounts.services import account_register

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


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """Environment overrides for the `cluster` process (e.g. short KOBOLDCLUSTER_* intervals).

    Override this fixture in a test module; pass the same values to `scheduler(**cluster_env)`
    so that both processes work by the same rules.
    """
    return {}


@pytest.fixture
def cluster(transactional_db: None, cluster_env: dict[str, str]):
    """The cluster served by a real web server process (as run.sh) on a free port, on the test DB.

    Call `cluster.restart()` to restart it mid-test; it is stopped at teardown.
    """
    from koboldcluster.testing import ClusterProcess

    process = ClusterProcess(cluster_env)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def scheduler(transactional_db: None):
    """A factory for a real `manage.py qcluster` process; pass env overrides for short intervals."""
    from koboldcluster.testing import SchedulerProcess

    started: list[SchedulerProcess] = []

    def start(**env: str) -> SchedulerProcess:
        process = SchedulerProcess(env)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()

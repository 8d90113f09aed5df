"""GET /api/v2/stats/text/totals and /models: the AI Horde's shapes over rollups + live rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from horde_sdk.ai_horde_api.apimodels import TextStatsModelResponse, TextStatsModelsTotalResponse

from generations.models import Job, Prompt
from servers.models import Server
from stats.models import DayRollup, MinuteRollup, RollupMark

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 10, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def history(alice, bob) -> None:
    """Folded days, minute rows of this month, and jobs the rollup has not reached yet."""
    today = datetime(2026, 6, 10, tzinfo=UTC)
    half_past = today.replace(hour=11, minute=30)
    rows = [
        DayRollup(
            day=(NOW - timedelta(days=45)).date(), model="alpha", generations=100, tokens=5000
        ),
        DayRollup(day=(NOW - timedelta(days=40)).date(), model="beta", generations=7, tokens=70),
    ]
    DayRollup.objects.bulk_create(rows)
    MinuteRollup.objects.bulk_create(
        [
            MinuteRollup(minute=NOW - timedelta(days=3), model="alpha", generations=10, tokens=300),
            MinuteRollup(minute=today.replace(hour=2), model="beta", generations=4, tokens=40),
            MinuteRollup(minute=half_past, model="alpha", generations=2, tokens=20),
            MinuteRollup(minute=half_past, model="", prompts=3),
        ]
    )  # fmt: skip
    RollupMark.objects.create(rolled_until=datetime(2026, 6, 10, 11, 59, tzinfo=UTC))
    server = Server.objects.create(name="bob-1", owner=bob, models=["alpha"])
    prompt = Prompt.objects.create(
        user=alice, text="x", n=2, waiting=0, max_length=80, max_context_length=1024,
        sort_key=0, created=NOW - timedelta(seconds=50), expires_at=NOW + timedelta(minutes=10),
    )  # fmt: skip
    for tokens in (11, 13):
        Job.objects.create(
            prompt=prompt, server=server, model="alpha", state=Job.State.DONE, tokens=tokens,
            started=NOW - timedelta(seconds=40), deadline=NOW + timedelta(minutes=2),
            finished=NOW - timedelta(seconds=20), text="y",
        )  # fmt: skip


@pytest.fixture
def at_now():
    with time_machine.travel(NOW, tick=False):
        yield


def test_totals_add_days_minutes_and_live_jobs(api, history, at_now):
    response = api.get("/api/v2/stats/text/totals")

    assert response.status_code == 200
    assert response.json() == {
        "minute": {"requests": 2, "tokens": 24},
        "hour": {"requests": 4, "tokens": 44},
        "day": {"requests": 8, "tokens": 84},
        "month": {"requests": 18, "tokens": 384},
        "total": {"requests": 125, "tokens": 5454},
    }
    TextStatsModelsTotalResponse.model_validate(response.json())  # the AI Horde's shape


def test_models_count_generations_per_model(api, history, at_now):
    response = api.get("/api/v2/stats/text/models")

    assert response.status_code == 200
    assert response.json() == {
        "day": {"alpha": 4, "beta": 4},
        "month": {"alpha": 14, "beta": 4},
        "total": {"alpha": 114, "beta": 11},
    }
    TextStatsModelResponse.model_validate(response.json())


def test_an_empty_cluster_answers_zeros(api):
    totals = api.get("/api/v2/stats/text/totals").json()
    assert totals["total"] == {"requests": 0, "tokens": 0}
    assert api.get("/api/v2/stats/text/models").json() == {"day": {}, "month": {}, "total": {}}

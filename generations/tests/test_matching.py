"""The matching rule's two forms agree: the SQL that pop claims with and counts `skipped` by,
and the Python that decides `is_possible` (generations/matching.py).

Random servers meet random prompts (a fixed seed, so a failure can be replayed); for every
pair, the prompts the SQL lets a server take are exactly those the Python lets it take, and
the skipped counts by first reason are the same.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from generations.matching import (
    QUEUED_SQL,
    REASONS,
    PromptFacts,
    ServerProfile,
    barring_reason,
    servable_sql,
    skipped_sql,
)
from generations.models import Prompt, PromptModel, PromptWorker
from generations.sql import dt_param, fetch
from servers.models import Server

MODELS = ["m1", "m2", "m3"]
SOFTPROMPTS = ["sp1", "sp2"]


def _random_prompt(rng: random.Random, user: User, servers: list[Server]) -> PromptFacts:
    named = rng.sample(MODELS, rng.randint(0, 2))
    workers = rng.choice(list(Prompt.Workers))
    listed = frozenset(s.id for s in rng.sample(servers, rng.randint(0, 2)))
    return PromptFacts(
        user_id=user.pk,
        any_model=not named,
        models=tuple(named),
        max_length=rng.choice([16, 80, 512]),
        max_context_length=rng.choice([512, 2048, 8192]),
        workers=workers if listed else Prompt.Workers.ANY,
        listed=listed if workers != Prompt.Workers.ANY else frozenset(),
        softprompt=rng.choice(["", "", "sp1", "sp3"]),
        trusted_workers=rng.random() < 0.3,
        slow_workers=rng.random() < 0.7,
    )


def _random_server(rng: random.Random, server: Server) -> ServerProfile:
    return ServerProfile(
        id=server.id,
        owner_id=server.owner_id,
        trusted=rng.random() < 0.5,
        models=tuple(rng.sample(MODELS, rng.randint(0, 2))),
        max_length=rng.choice([16, 80, 512]),
        max_context_length=rng.choice([512, 2048, 8192]),
        softprompts=tuple(rng.sample(SOFTPROMPTS, rng.randint(0, 2))),
        slow=rng.random() < 0.5,
    )


def _store(facts: PromptFacts, now) -> Prompt:
    prompt = Prompt.objects.create(
        user_id=facts.user_id,
        text="x",
        n=1,
        waiting=1,
        any_model=facts.any_model,
        models=list(facts.models),
        max_length=facts.max_length,
        max_context_length=facts.max_context_length,
        workers=facts.workers,
        softprompt=facts.softprompt,
        trusted_workers=facts.trusted_workers,
        slow_workers=facts.slow_workers,
        sort_key=0,
        expires_at=now + timedelta(minutes=10),
    )
    PromptModel.objects.bulk_create(PromptModel(prompt=prompt, name=m) for m in facts.models)
    PromptWorker.objects.bulk_create(PromptWorker(prompt=prompt, server_id=s) for s in facts.listed)
    return prompt


@pytest.mark.parametrize("seed", range(4))
def test_sql_and_python_agree_on_every_pair(db, seed):
    rng = random.Random(seed)
    now = timezone.now()
    owner = User.objects.create(username=f"owner-{seed}")
    servers = [
        Server.objects.create(name=f"s-{seed}-{i}", owner=owner, id=uuid.uuid4()) for i in range(4)
    ]
    stored = {}
    for _ in range(40):
        facts = _random_prompt(rng, owner, servers)
        stored[_store(facts, now).id] = facts

    for server in servers:
        for _ in range(5):
            profile = _random_server(rng, server)
            condition, params = servable_sql(profile)
            rows = fetch(
                f"SELECT p.id FROM generations_prompt p WHERE {QUEUED_SQL} AND {condition}",
                [dt_param(now), *params],
            )
            by_sql = {uuid.UUID(str(row[0])) for row in rows}
            by_python = {i for i, f in stored.items() if barring_reason(f, profile) is None}
            assert by_sql == by_python, profile

            sql, params = skipped_sql(profile)
            counted = dict(zip(REASONS, fetch(sql, [*params, dt_param(now)])[0], strict=True))
            reasons = Counter(barring_reason(f, profile) for f in stored.values())
            assert counted == {reason: reasons[reason] for reason in REASONS}, profile


@pytest.mark.django_db
@pytest.mark.parametrize("microsecond", [0, 1, 999999])
def test_datetime_parameters_are_written_as_the_model_fields_write_them(microsecond):
    from datetime import datetime, timedelta, timezone

    from django.db import connection

    moment = datetime(2026, 3, 1, 23, 30, 5, microsecond, tzinfo=timezone(timedelta(hours=5)))
    expected = connection.ops.adapt_datetimefield_value(moment)
    assert dt_param(moment) == (moment if connection.vendor == "postgresql" else expected)

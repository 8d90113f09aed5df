"""The AI Horde status's queue position: ties, the cut at QUEUE_SCAN, and a read that stops
where the prompt stands.

The read of the queue ahead once walked the whole queue on PostgreSQL whatever the prompt's
place (5 ms at 10,000 waiting prompts for the status of the first one); it now stops at the
prompt's sort key. These pin down the answers it must keep giving.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from generations.models import Prompt
from generations.status import QUEUE_SCAN, prompt_outlook, prompt_status

pytestmark = pytest.mark.django_db


def queued(user: User, count: int, *, key: float, start: int = 0) -> list[Prompt]:
    """`count` waiting prompts with one sort key, created a second apart (oldest first)."""
    now = timezone.now()
    prompts = [
        Prompt(
            user=user,
            text="position",
            n=1,
            waiting=1,
            max_length=80,
            max_context_length=1024,
            sort_key=key,
            created=now - timedelta(hours=1) + timedelta(seconds=start + index),
            last_activity=now,
            expires_at=now + timedelta(hours=1),
        )
        for index in range(count)
    ]
    return Prompt.objects.bulk_create(prompts)


def position(prompt: Prompt) -> int:
    return prompt_outlook(status=prompt_status(prompt_id=prompt.id, outlook=True)).queue_position


def test_equal_keys_are_ordered_by_age_and_higher_keys_come_first():
    user = User.objects.create(username="positions")
    older, newer = queued(user, 2, key=100.0)
    (ahead,) = queued(user, 1, key=200.0, start=10)
    (behind,) = queued(user, 1, key=50.0, start=-10)

    assert [position(p) for p in (ahead, older, newer, behind)] == [1, 2, 3, 4]


def test_a_place_deeper_than_the_scan_is_reported_as_just_beyond_it():
    user = User.objects.create(username="deep")
    prompts = queued(user, QUEUE_SCAN + 5, key=100.0)

    assert position(prompts[QUEUE_SCAN - 1]) == QUEUE_SCAN
    assert position(prompts[QUEUE_SCAN]) == QUEUE_SCAN + 1
    assert position(prompts[-1]) == QUEUE_SCAN + 1


def test_a_prompt_with_nothing_waiting_has_no_place():
    user = User.objects.create(username="served")
    first, second = queued(user, 2, key=100.0)
    Prompt.objects.filter(id=first.id).update(waiting=0)

    assert (position(first), position(second)) == (0, 1)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's plan")
def test_the_read_ahead_of_the_first_prompt_does_not_walk_the_queue():
    user = User.objects.create(username="front")
    queued(user, 3000, key=100.0)
    (first,) = queued(user, 1, key=500.0)
    prompt_status(prompt_id=first.id, outlook=True)
    with CaptureQueriesContext(connection) as read:
        prompt_status(prompt_id=first.id, outlook=True)
    with connection.cursor() as cursor:
        (query,) = read.captured_queries
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query['sql']}")
        plan = cursor.fetchone()[0][0]["Plan"]

    def rows_read(node: dict) -> int:
        own = node["Actual Rows"] * node["Actual Loops"] if "Relation Name" in node else 0
        return own + sum(rows_read(child) for child in node.get("Plans", []))

    # The prompt, its place in the queue (itself only) and no joined jobs or servers.
    assert rows_read(plan) <= 3

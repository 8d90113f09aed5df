"""Claiming an unclaimed name hands over nothing of the people who used it (issue 23, 3).

An account sees its prompts (`active_generations`), cancels them and serves them first; a
name used without credentials is claimed by the first to register it or run a server with
it. So a claim waits until the name's prompts are over.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts.models import User
from generations.models import Prompt


@pytest.fixture
def dave_prompt(db, submit_prompt):
    """A prompt sent under the bare name `dave` (an unclaimed name)."""
    return submit_prompt(username="dave")


def _still_unclaimed(response) -> None:
    assert response.status_code == 409, response.content
    assert response.json()["rc"] == "NameInUse"
    dave = User.objects.get(username="dave")
    assert dave.kind == User.Kind.UNCLAIMED and not dave.has_usable_password()


def test_a_server_cannot_claim_a_name_with_live_prompts(pop, dave_prompt):
    response = pop(username="dave", password="attacker-pw", name="dave-1")
    _still_unclaimed(response)


def test_registering_cannot_claim_a_name_with_live_prompts(api, dave_prompt):
    response = api.post("/api/v2/register", {"username": "dave"}, format="json")
    _still_unclaimed(response)


def test_the_name_is_claimed_once_its_prompts_are_over(api, pop, dave_prompt):
    Prompt.objects.update(expires_at=timezone.now())
    assert pop(username="dave", password="daves-pw", name="dave-1").status_code == 200
    assert User.objects.get(username="dave").kind == User.Kind.REGISTERED


def test_the_bare_name_keeps_working_while_a_claim_is_refused(api, pop, dave_prompt):
    pop(username="dave", password="attacker-pw", name="dave-1")
    again = api.post("/generate/prompt", {"prompt": "more", "username": "dave"}, format="json")
    assert again.status_code == 200

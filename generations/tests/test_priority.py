"""Who is served first: balance, ageing, the server's owner and priority users."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings

from accounts.models import LedgerEntry, User
from generations.models import Job, Prompt

pytestmark = pytest.mark.django_db

START = datetime(2030, 1, 1, tzinfo=UTC)


def give_balance(user: User, tokens: int) -> None:
    LedgerEntry.objects.create(user=user, kind=LedgerEntry.Kind.ADJUSTMENT, kudos=tokens)


def served_prompt(response) -> str | None:
    job_id = response.json()["id"]
    return str(Job.objects.get(id=job_id).prompt_id) if job_id else None


@pytest.fixture
def rich(register):
    """A big contributor: balance far above the cap."""
    user, key = register("rich")
    give_balance(user, 50_000)
    return key


def test_high_balance_then_zero_then_anonymous(register, rich, submit_prompt, pop, time_machine):
    _, zero = register("zero")
    time_machine.move_to(START, tick=False)
    anonymous_prompt = submit_prompt("anonymous")
    zero_prompt = submit_prompt("zero", apikey=zero)
    rich_prompt = submit_prompt("rich", apikey=rich)

    order = [served_prompt(pop()) for _ in range(3)]

    assert order == [rich_prompt, zero_prompt, anonymous_prompt]


def test_unclaimed_names_and_debtors_sit_at_the_anonymous_floor(
    register, submit_prompt, pop, time_machine
):
    debtor, debtors_key = register("debtor")
    give_balance(debtor, -5_000)
    time_machine.move_to(START, tick=False)
    first = submit_prompt("unclaimed", username="someone")
    second = submit_prompt("debtor", apikey=debtors_key)
    third = submit_prompt("anonymous")

    order = [served_prompt(pop()) for _ in range(3)]

    assert order == [first, second, third]  # equal priority: oldest first
    assert len(set(Prompt.objects.values_list("sort_key", flat=True))) == 1


@pytest.mark.parametrize(("later", "rich_first"), [(219, True), (221, False)])
def test_an_old_anonymous_prompt_overtakes_a_newer_rich_one(
    rich, submit_prompt, pop, time_machine, later, rich_first
):
    time_machine.move_to(START, tick=False)
    anonymous_prompt = submit_prompt("anonymous")
    time_machine.move_to(START + timedelta(seconds=later), tick=False)
    rich_prompt = submit_prompt("rich", apikey=rich)

    first = served_prompt(pop())

    assert first == (rich_prompt if rich_first else anonymous_prompt)


def test_worst_case_wait_of_the_lowest_balance(rich, submit_prompt, pop, time_machine):
    """One server, kept exactly busy by capped-balance prompts arriving as fast as it serves
    them: without ageing the anonymous prompt would wait forever. With it, it is served
    (cap − floor) / ageing rate seconds after a capped prompt submitted with it: 220 s with
    the defaults (10000 + 1000 tokens at 50 tokens per second)."""
    limits = settings.KOBOLDCLUSTER
    worst = (limits["PRIORITY_CAP_TOKENS"] - limits["PRIORITY_FLOOR_TOKENS"]) / limits[
        "AGEING_TOKENS_PER_SECOND"
    ]
    time_machine.move_to(START, tick=False)
    anonymous_prompt = submit_prompt("anonymous")
    served_after = None
    for second in range(0, 600, 10):  # a new rich prompt and one pop every 10 s
        time_machine.move_to(START + timedelta(seconds=second), tick=False)
        submit_prompt("rich", apikey=rich)
        if served_prompt(pop()) == anonymous_prompt:
            served_after = second
            break

    assert worst == 220
    assert served_after == worst


def test_the_owners_prompts_come_first_whatever_their_balance(
    register, rich, submit_prompt, api, time_machine
):
    owner, owners_key = register("owner")
    give_balance(owner, -5_000)
    time_machine.move_to(START, tick=False)
    submit_prompt("rich", apikey=rich)
    own = submit_prompt("own", apikey=owners_key)

    response = api.post(
        "/generate/pop", {"name": "own-1", "model": "m"}, format="json", HTTP_APIKEY=owners_key
    )

    assert served_prompt(response) == own


def test_priority_usernames_come_first(register, rich, submit_prompt, pop, alice):
    friend, friends_key = register("friend")
    submit_prompt("rich", apikey=rich)
    by_id = submit_prompt("friend", apikey=friends_key)
    by_name = submit_prompt("alice", username="alice")

    first = served_prompt(pop(priority_usernames=[f"whoever#{friend.pk}", "alice", "nobody"]))
    second = served_prompt(pop(priority_usernames=[f"whoever#{friend.pk}", "alice"]))

    assert {first, second} == {by_id, by_name}


@pytest.mark.parametrize("entry", ["alice#", "alice#x1", "#", "", "alice#1#", "alice#-1"])
def test_malformed_priority_usernames_are_refused(pop, bob, entry):
    response = pop(priority_usernames=["alice#1", entry])

    assert response.status_code == 400
    assert response.json()["rc"] == "InvalidPriorityUsername"


def test_sort_key_is_balance_minus_ageing_times_creation(rich, submit_prompt, time_machine):
    time_machine.move_to(START, tick=False)

    prompt = Prompt.objects.get(id=uuid.UUID(submit_prompt(apikey=rich)))

    assert prompt.sort_key == 10_000 - 50 * START.timestamp()

"""The SQL twins of Python rules agree with them (issue 24), on whichever database runs the suite.

Hot paths state some rules as SQL so that one statement reads and writes (a prompt's priority
read in its INSERT, the waiting-slots limits checked in it, the queue read by pop and status).
Each has a Python form the rest of the code uses; these tests build cases on both sides of
every boundary and ask both forms. Run them on SQLite and on PostgreSQL (DATABASE_URL).
"""

from __future__ import annotations

import re
from datetime import timedelta
from types import ModuleType

import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts.identity import anonymous_user
from accounts.ledger import ledger_fold
from accounts.models import LedgerEntry, User
from accounts.selectors import balance_sql, totals_for
from generations import intake, limits, matching, queue, status
from generations.intake import GenerationRequest, prompt_create, sort_key
from generations.models import Prompt
from generations.sql import dt_param, fetch

pytestmark = pytest.mark.django_db

# The Python rule is PromptQuerySet.queued(); its SQL copies say it in these words (literal
# constants, so that SQLite uses the partial queue index), each with its own table alias.
QUEUED_COPY = re.compile(r"(\w+)\.state = 'live' AND \1\.waiting > 0 AND \1\.expires_at > %s")
MODULES_WITH_QUEUE_SQL: tuple[ModuleType, ...] = (matching, intake, limits, status, queue)


def queued_copies() -> list[tuple[str, str, str]]:
    """(where, alias, condition) of every copy in the modules' string constants."""
    found = []
    for module in MODULES_WITH_QUEUE_SQL:
        for name, value in vars(module).items():
            if isinstance(value, str):
                for match in QUEUED_COPY.finditer(value):
                    found.append((f"{module.__name__}.{name}", match[1], match[0]))
    return found


def make_prompt(user: User, waiting: int, now, **changes) -> Prompt:
    request = GenerationRequest(text="x", n=max(waiting, 1), max_length=16, max_context_length=64)
    prompt = prompt_create(user=user, request=request, now=now)
    Prompt.objects.filter(pk=prompt.pk).update(waiting=waiting, **changes)
    return prompt


@pytest.fixture
def queue_cases(bob, alice):
    """Prompts on each side of every part of the rule, for two users and three clients."""
    now = timezone.now()
    anonymous = anonymous_user()
    queued = [
        make_prompt(bob, 2, now),
        make_prompt(alice, 1, now, client="c1"),
        make_prompt(anonymous, 3, now, client="c1"),
        make_prompt(anonymous, 1, now, client="c2"),
        make_prompt(anonymous, 1, now, client=""),
        make_prompt(bob, 1, now, expires_at=now + timedelta(microseconds=1)),
    ]
    make_prompt(bob, 0, now)  # every slot taken
    make_prompt(bob, 1, now, expires_at=now)  # expires at this very instant
    make_prompt(bob, 1, now, expires_at=now - timedelta(seconds=1))
    make_prompt(bob, 1, now, state=Prompt.State.CANCELLED)
    make_prompt(anonymous, 2, now, client="c1", state=Prompt.State.FAULTED)
    make_prompt(anonymous, 2, now, client="c2", expires_at=now - timedelta(minutes=5))
    make_prompt(anonymous, 4, now, client="c2", expires_at=now)
    return now, {p.pk for p in queued}, (bob, alice, anonymous)


def test_every_copy_of_the_queued_rule_is_found():
    where = {copy[0] for copy in queued_copies()}
    assert {
        "generations.matching.QUEUED_SQL",
        "generations.intake._WAITING_OF_USER",
        "generations.limits.CLIENT_WAITING_SQL",
        "generations.status._AHEAD",
    } <= where


def test_each_copy_of_the_queued_rule_picks_the_queued_prompts(queue_cases):
    now, queued, _ = queue_cases
    python = {p.pk for p in Prompt.objects.queued(now)}
    assert python == queued
    for where, alias, condition in queued_copies():
        rows = fetch(
            f"SELECT {alias}.id FROM generations_prompt {alias} WHERE {condition}", [dt_param(now)]
        )
        assert {Prompt._meta.pk.to_python(row[0]) for row in rows} == python, where


def test_a_users_waiting_slots_agree(queue_cases):
    now, _, users = queue_cases
    for user in users:
        sql = fetch(f"SELECT ({intake._WAITING_OF_USER})", [user.pk, dt_param(now)])[0][0]
        python = Prompt.objects.queued(now).filter(user=user).aggregate(s=Sum("waiting"))["s"]
        assert sql == (python or 0), user.username


@pytest.mark.parametrize("client", ["c1", "c2", "c3", ""])
def test_a_clients_waiting_slots_agree(queue_cases, client):
    now, _, _ = queue_cases
    sql = fetch(f"SELECT ({limits.CLIENT_WAITING_SQL})", [client, dt_param(now)])[0][0]
    python = Prompt.objects.queued(now).filter(client=client).aggregate(s=Sum("waiting"))["s"]
    # Without a client (accounts with credentials) nothing is counted per client.
    assert sql == ((python or 0) if client else 0)


def entry(user: User, kudos: int, created) -> None:
    LedgerEntry.objects.create(
        user=user, kind=LedgerEntry.Kind.ADJUSTMENT, kudos=kudos, created=created
    )


@pytest.fixture
def balances(bob, alice, db):
    """Balances made of folded entries, entries past the fold's watermark, or both."""
    now = timezone.now()
    carol = User.objects.create_user("carol", password="x" * 12)
    dave = User.objects.create_user("dave", password="x" * 12)  # no entries at all
    erin = User.objects.create_user("erin", password="x" * 12)
    long_ago = now - timedelta(hours=1)
    entry(bob, 700, long_ago)
    entry(bob, -50, long_ago)
    entry(alice, -30, long_ago)
    assert ledger_fold(now=now) == 3
    entry(bob, 25, now)
    entry(alice, -2500, now)
    entry(carol, 50_000, now)
    entry(erin, -5000, now)
    return now, [bob, alice, carol, dave, erin]


def test_the_balance_in_sql_is_the_ledgers(balances):
    _, users = balances
    for user in users:
        sql, params = balance_sql(user.pk)
        assert fetch(f"SELECT {sql}", params)[0][0] == totals_for(user).kudos, user.username


def test_the_sort_key_in_sql_is_the_rule_within_the_bounds(balances, settings, bob, alice):
    now, users = balances
    limits_ = settings.KOBOLDCLUSTER
    floor, cap = limits_["PRIORITY_FLOOR_TOKENS"], limits_["PRIORITY_CAP_TOKENS"]
    kudos = {user.pk: totals_for(user).kudos for user in users}
    paying = [kudos[user.pk] for user in users if user.has_credentials]
    assert min(paying) < floor  # below the floor
    assert max(paying) > cap  # and above the cap are both tried
    for user in [*users, anonymous_user()]:
        sql, params = intake._sort_key_sql(user, now)
        balance = kudos.get(user.pk, 0) if user.has_credentials else floor
        expected = sort_key(min(max(balance, floor), cap), now)
        # As the prompt's float column stores it (PostgreSQL computes it as a numeric).
        key = float(fetch(f"SELECT {sql}", params)[0][0])
        assert key == pytest.approx(expected, rel=1e-12, abs=1e-6), user.username

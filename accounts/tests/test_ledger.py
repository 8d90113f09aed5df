"""The ledger: append-only pairs, an exact fold, and /usage and /contributions."""

import random
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from accounts.ledger import ledger_fold, ledger_record_generation
from accounts.models import Balance, LedgerEntry, LedgerFold, User
from accounts.selectors import Totals, totals_for, user_totals
from conftest import SERVER_PASSWORD


def record(user_a, user_b, tokens, created, job_id=None):
    import uuid

    ledger_record_generation(
        requester_id=user_a.pk,
        owner_id=user_b.pk,
        tokens=tokens,
        server_id=uuid.uuid4(),
        job_id=job_id or uuid.uuid4(),
        model="tiny-llm",
        now=created,
    )


@pytest.mark.django_db
def test_fold_moves_settled_entries_and_totals_stay_exact(alice, bob):
    # One reading of the clock: a fold that read it again could come more than the fold lag
    # (30 s) later on a loaded machine and find the fresh entry settled.
    now = timezone.now()
    long_ago = now - timedelta(hours=1)
    record(alice, bob, 10, long_ago)
    record(alice, bob, 5, long_ago)
    record(bob, alice, 3, now)  # too fresh to fold
    before = user_totals()

    folded = ledger_fold(now=now)

    assert folded == 4
    assert Balance.objects.get(user=alice).tokens_used == 15
    assert Balance.objects.get(user=bob).fulfilments == 2
    assert user_totals() == before
    assert totals_for(alice) == Totals(
        tokens_used=15, tokens_contributed=3, kudos=-12, requests=2, fulfilments=1
    )


@pytest.mark.django_db
def test_fold_is_idempotent(alice, bob):
    record(alice, bob, 10, timezone.now() - timedelta(hours=1))

    assert ledger_fold() == 2
    assert ledger_fold() == 0
    assert Balance.objects.get(user=bob).tokens_contributed == 10


@pytest.mark.django_db
def test_a_duplicate_pair_for_a_job_is_refused(alice, bob):
    import uuid

    from django.db import IntegrityError, transaction

    job_id = uuid.uuid4()
    record(alice, bob, 10, timezone.now(), job_id=job_id)

    with pytest.raises(IntegrityError), transaction.atomic():
        record(alice, bob, 10, timezone.now(), job_id=job_id)


@pytest.mark.django_db(transaction=True)
def test_concurrent_folds_fold_each_entry_once():
    alice = User.objects.create(username="alice", kind=User.Kind.UNCLAIMED)
    bob = User.objects.create_user("bob", password=SERVER_PASSWORD)
    long_ago = timezone.now() - timedelta(hours=1)
    for _ in range(30):
        record(alice, bob, 7, long_ago)
    barrier = threading.Barrier(4)
    results = []

    def fold() -> None:
        try:
            barrier.wait()
            results.append(ledger_fold())
        finally:
            connection.close()

    threads = [threading.Thread(target=fold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(results) == 60
    assert Balance.objects.get(user=alice).tokens_used == 210
    assert LedgerFold.objects.get().last_entry_id == LedgerEntry.objects.latest("id").id


@pytest.mark.django_db
def test_usage_and_contributions_from_the_ledger(api, alice, bob):
    record(alice, bob, 10, timezone.now() - timedelta(hours=1))
    ledger_fold()
    record(alice, bob, 4, timezone.now())

    assert api.get("/usage").json() == {"alice": 14}
    assert api.get("/contributions").json() == {"bob": 14}


@pytest.mark.django_db
def test_ledger_invariant_after_a_mixed_run(api, submit_prompt, pop, submit_generation):
    rng = random.Random(7)
    for owner in ("carol", "dave"):
        User.objects.create_user(owner, password=SERVER_PASSWORD)
    for i in range(12):
        submit_prompt(
            f"prompt {i}",
            username=rng.choice(["alice", "erin", None]),
            params={"n": rng.randint(1, 3), "max_length": rng.choice([16, 40])},
        )
    for round_ in range(40):
        owner = rng.choice(["bob", "carol", "dave"])
        popped = pop(name=f"{owner}-{round_ % 3}", username=owner).json()
        if popped["id"] is None:
            continue
        state = "faulted" if rng.random() < 0.2 else "ok"
        submit_generation(popped["id"], "w" * rng.randint(0, 200), state=state)
        if round_ == 20:
            ledger_fold(now=timezone.now() + timedelta(hours=1))

    usage, contributions = api.get("/usage").json(), api.get("/contributions").json()

    assert sum(usage.values()) == sum(contributions.values()) > 0
    by_kind = dict(LedgerEntry.objects.values_list("kind").annotate(Sum("tokens")).order_by("kind"))
    assert sum(usage.values()) == by_kind["usage"] == by_kind["contribution"]
    for username, tokens in usage.items():
        entries = LedgerEntry.objects.filter(user__username=username, kind="usage")
        assert tokens == entries.aggregate(t=Sum("tokens"))["t"]

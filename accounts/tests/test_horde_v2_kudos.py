"""GET /api/v2/users and POST /api/v2/kudos/transfer (research §2.6, §2.8)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.identity import anonymous_user
from accounts.ledger import kudos_transfer, ledger_fold
from accounts.models import LedgerEntry, User
from accounts.selectors import totals_for
from koboldcluster.errors import BadRequest
from koboldcluster.tests import horde_shapes as shapes

pytestmark = pytest.mark.django_db

TRANSFER = "/api/v2/kudos/transfer"


def earn(user: User, tokens: int) -> None:
    """Give `user` a balance: a generation their server made for the anonymous user."""
    job_id = uuid.uuid4()
    # anonymous_user(), not id 0: a transactional test before this one may have flushed it.
    LedgerEntry.objects.create(
        user=anonymous_user(), kind="usage", tokens=tokens, kudos=-tokens, job_id=job_id
    )
    LedgerEntry.objects.create(
        user=user, kind="contribution", tokens=tokens, kudos=tokens, job_id=job_id
    )


def test_users_lists_25_a_page_by_balance(api, register):
    users = [register(f"user{i}")[0] for i in range(27)]
    for index, user in enumerate(users):
        earn(user, index)

    first = api.get("/api/v2/users").json()
    second = api.get("/api/v2/users?page=2&sort=kudos").json()
    third = api.get("/api/v2/users?page=3").json()

    shapes.check(first, [shapes.USER])
    assert (len(first), len(second), third) == (25, 3, [])  # 27 users and the anonymous one
    ids = [u["id"] for u in first + second]
    assert sorted(ids) == sorted([0] + [u.pk for u in users])
    assert all("worker_ids" not in u for u in first)


def test_users_by_balance_uses_the_folded_balances(api, register, time_machine):
    poor, _ = register("poor")
    rich, _ = register("rich")
    earn(rich, 500)
    time_machine.move_to(timezone.now() + timedelta(minutes=2))
    ledger_fold()

    body = api.get("/api/v2/users?sort=kudos").json()

    assert body[0]["username"] == f"rich#{rich.pk}" and body[0]["kudos"] == 500


def test_users_by_age_is_oldest_first(api, register):
    register("old")
    register("new")

    names = [u["username"].split("#")[0] for u in api.get("/api/v2/users?sort=age").json()]

    assert names.index("old") < names.index("new")


def test_users_query_is_checked(api):
    response = api.get("/api/v2/users?page=0")

    assert (response.status_code, response.json()["rc"]) == (400, "ValidationError")


def test_a_transfer_moves_balance_with_two_adjustments(api, register):
    carol, carol_key = register("carol")
    dave, _ = register("dave")
    earn(carol, 100)

    response = api.post(
        TRANSFER,
        {"username": dave.horde_name, "amount": 30.9},
        format="json",
        HTTP_APIKEY=carol_key,
    )

    assert response.status_code == 200
    shapes.check(response.json(), shapes.TRANSFERRED)
    assert response.json() == {"transferred": 30}
    adjustments = LedgerEntry.objects.filter(kind="adjustment").order_by("id")
    assert [(e.user_id, e.kudos, e.tokens) for e in adjustments] == [
        (carol.pk, -30, 0),
        (dave.pk, 30, 0),
    ]
    assert (totals_for(carol).kudos, totals_for(dave).kudos) == (70, 30)
    found = api.get("/api/v2/find_user", HTTP_APIKEY=carol_key).json()
    assert found["kudos"] == 70


def test_a_transfer_by_plain_username(register):
    carol, _ = register("carol")
    dave, _ = register("dave")
    earn(carol, 10)

    assert kudos_transfer(sender=carol, recipient="dave", amount=10) == dave


@pytest.mark.parametrize(
    ("recipient", "amount", "rc"),
    [
        ("dave", 101, "KudosTransferNotEnough"),
        ("carol", 5, "KudosTransferToSelf"),
        ("dave", -5, "NegativeKudosTransfer"),
        ("dave", 0, "InvalidKudosTransferAmount"),
        ("Anonymous#0", 5, "KudosTransferToAnon"),
        ("nobody#999999", 5, "InvalidTargetUsername"),
        ("alice", 5, "InvalidTargetUsername"),  # an unclaimed name: whoever registers it
    ],
)
def test_transfer_refusals(api, register, alice, recipient, amount, rc):
    carol, key = register("carol")
    register("dave")
    earn(carol, 100)
    if recipient == "carol":
        recipient = carol.horde_name

    response = api.post(
        TRANSFER, {"username": recipient, "amount": amount}, format="json", HTTP_APIKEY=key
    )

    assert (response.status_code, response.json()["rc"]) == (400, rc)
    assert not LedgerEntry.objects.filter(kind="adjustment").exists()


def test_the_anonymous_user_cannot_send_and_a_key_is_needed(api, register):
    register("dave")

    anonymous = api.post(TRANSFER, {"username": "dave"}, format="json", HTTP_APIKEY="0000000000")
    keyless = api.post(TRANSFER, {"username": "dave"}, format="json")

    assert (anonymous.status_code, anonymous.json()["rc"]) == (400, "KudosTransferFromAnon")
    assert (keyless.status_code, keyless.json()["rc"]) == (401, "InvalidAPIKey")


def test_a_balance_cannot_be_sent_twice(register):
    carol, _ = register("carol")
    register("dave")
    register("erin")
    earn(carol, 10)

    kudos_transfer(sender=carol, recipient="dave", amount=10)
    with pytest.raises(BadRequest) as refused:
        kudos_transfer(sender=carol, recipient="erin", amount=1)

    assert refused.value.rc == "KudosTransferNotEnough"


@pytest.mark.django_db(transaction=True)
def test_concurrent_transfers_cannot_overdraw(register):
    carol, _ = register("carol")
    recipients = [register(f"r{i}")[0] for i in range(6)]
    earn(carol, 10)
    outcomes: list[str] = []
    start = threading.Barrier(len(recipients))

    def send(recipient: User) -> None:
        start.wait()
        try:
            kudos_transfer(sender=carol, recipient=recipient.username, amount=4)
            outcomes.append("sent")
        except BadRequest:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(r,)) for r in recipients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["refused"] * 4 + ["sent"] * 2
    assert totals_for(carol).kudos == 2

"""The ledger: what each generation paid, kudos transfers, and the fold into balances.

Append-only: every accepted generation appends a usage and a contribution entry in the
transaction that accepts it; corrections and transfers are adjustment entries. The fold adds
entries to `Balance` on a schedule so that no hot path updates a shared aggregate row.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Max, Sum
from django.utils import timezone

from accounts.identity import HORDE_NAME, lock_account
from accounts.models import Balance, LedgerEntry, LedgerFold, User
from accounts.selectors import totals_for
from koboldcluster.errors import BadRequest

logger = logging.getLogger(__name__)


def ledger_record_generation(
    *,
    requester_id: int,
    owner_id: int,
    tokens: int,
    server_id: object,
    job_id: object,
    model: str,
    now: datetime,
) -> None:
    """Append the usage and contribution pair for one delivered generation.

    Call inside the transaction that marks the job done: the pair and the state change
    commit together or not at all, and the unique (job_id, kind) makes a second pair fail.
    """
    common = {"tokens": tokens, "server_id": server_id, "job_id": job_id, "model": model}
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                created=now,
                user_id=requester_id,
                kind=LedgerEntry.Kind.USAGE,
                kudos=-tokens,
                **common,
            ),
            LedgerEntry(
                created=now,
                user_id=owner_id,
                kind=LedgerEntry.Kind.CONTRIBUTION,
                kudos=tokens,
                **common,
            ),
        ]
    )


def kudos_transfer(
    *, sender: User, recipient: str, amount: int, now: datetime | None = None
) -> User:
    """Move `amount` of `sender`'s balance to `recipient` (`alias#id` or a username).

    Two adjustment entries in one transaction, after the sender's balance was read under the
    sender's lock: two transfers at once cannot both spend the same tokens. Refused (400):
    anonymous senders or recipients, names without an account, oneself, amounts below 1 and
    more than the sender's balance. Returns the recipient.
    """
    now = now or timezone.now()
    if sender.is_anonymous_user:
        raise BadRequest("The anonymous user cannot send kudos.", rc="KudosTransferFromAnon")
    if amount < 0:
        raise BadRequest("Kudos transfers must be positive.", rc="NegativeKudosTransfer")
    if amount == 0:
        raise BadRequest("Transfer at least 1 kudos.", rc="InvalidKudosTransferAmount")
    target = _transfer_target(recipient)
    if target.is_anonymous_user:
        raise BadRequest("Kudos cannot be sent to the anonymous user.", rc="KudosTransferToAnon")
    if target.pk == sender.pk:
        raise BadRequest("You cannot send kudos to yourself.", rc="KudosTransferToSelf")
    with transaction.atomic():
        lock_account(sender)
        balance = totals_for(sender).kudos
        if amount > balance:
            raise BadRequest(
                f"Not enough kudos: the balance is {balance}, {amount} asked for.",
                rc="KudosTransferNotEnough",
            )
        common = {"created": now, "kind": LedgerEntry.Kind.ADJUSTMENT, "model": "transfer"}
        LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(user=sender, kudos=-amount, **common),
                LedgerEntry(user=target, kudos=amount, **common),
            ]
        )
    logger.info("kudos transfer: %s from user %s to user %s", amount, sender.pk, target.pk)
    return target


def _transfer_target(recipient: str) -> User:
    match = HORDE_NAME.search(recipient)
    if match is not None:
        user = User.objects.filter(pk=int(match.group(1))).first()
    else:
        user = User.objects.filter(username=recipient).first()
    if user is None or user.kind == User.Kind.UNCLAIMED:
        # An unclaimed name goes to whoever registers it first: nothing to send to yet.
        raise BadRequest(f"No account {recipient!r} can receive kudos.", rc="InvalidTargetUsername")
    return user


_BALANCE_FIELDS = {
    LedgerEntry.Kind.USAGE: ("tokens_used", "requests"),
    LedgerEntry.Kind.CONTRIBUTION: ("tokens_contributed", "fulfilments"),
}


def ledger_fold(*, now: datetime | None = None) -> int:
    """Fold settled ledger entries into `Balance`; return how many were folded.

    Idempotent and safe to run twice at once: the watermark row is locked (PostgreSQL) or the
    transaction holds SQLite's write lock, and the watermark only moves by a conditional
    update. Entries younger than LEDGER_FOLD_LAG_SECONDS are left for the next run, so an
    entry whose transaction commits late is never skipped.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.KOBOLDCLUSTER["LEDGER_FOLD_LAG_SECONDS"])
    with transaction.atomic():
        fold, _ = LedgerFold.objects.select_for_update().get_or_create(pk=1)
        start = fold.last_entry_id
        pending = LedgerEntry.objects.filter(id__gt=start)
        upper = pending.filter(created__lte=cutoff).aggregate(upper=Max("id"))["upper"]
        if upper is None:
            return 0
        rows = (
            pending.filter(id__lte=upper)
            .values_list("user_id", "kind")
            .annotate(Sum("tokens"), Sum("kudos"), Count("id"))
        )
        folded = 0
        for user_id, kind, tokens, kudos, count in rows:
            changes = {"kudos": F("kudos") + kudos}
            if kind in _BALANCE_FIELDS:
                tokens_field, count_field = _BALANCE_FIELDS[kind]
                changes[tokens_field] = F(tokens_field) + tokens
                changes[count_field] = F(count_field) + count
            Balance.objects.get_or_create(user_id=user_id)
            Balance.objects.filter(user_id=user_id).update(**changes)
            folded += count
        moved = LedgerFold.objects.filter(pk=1, last_entry_id=start).update(
            last_entry_id=upper, folded_at=now
        )
        if not moved:  # another fold got here first; undo ours
            transaction.set_rollback(True)
            return 0
    return folded

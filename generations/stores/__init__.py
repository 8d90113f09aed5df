"""One store per database: the statements SQLite and PostgreSQL say differently.

Each use case reads top to bottom as DESIGN.md tells it and asks `store()` for the steps a
database does its own way; `sqlite.py` and `postgresql.py` each hold one module's answer to
every step of `Store`. PostgreSQL writes with data-modifying CTEs and can send two statements
in one round trip; SQLite has neither, but its writers hold the database's one write lock, so
it needs no row locks and a claim never loses a race. Whatever both say alike stays with its
use case (`delivery.py`, `payment.py`, `intake.py`, `queue.py`, `claims.py`); small dialect
expressions (MIN or LEAST, how a UUID is passed) are `generations/sql.py`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from accounts.models import User
from generations.models import Job, Prompt
from generations.payment import Delivery
from generations.sql import is_postgres
from generations.stores import postgresql, sqlite
from servers.models import Server
from servers.services import Credentials


class Store(Protocol):
    # --- A server's submit (generations/delivery.py) -------------------------------------

    def accept_before_lookup(
        self,
        job_id: object,
        credentials: Credentials,
        done: dict,
        token_count: int | None,
        now: datetime,
    ) -> Delivery | None:
        """Accept and pay in the statement that reads the job, if the database does it that
        way; None: nothing written, the job is looked up first."""

    def accept_and_pay_in_one(self, delivery: Delivery, done: dict, now: datetime) -> bool:
        """Accept and pay a looked-up job in one statement; False: nothing written, the
        caller accepts (on time or late) and pays in steps in one transaction."""

    # --- A server's pop (generations/queue.py) ---------------------------------------------

    def claim(
        self, claim: str, params: list[object], server: Server, amount: int, now: datetime
    ) -> list[Job]:
        """Run the claim's UPDATE and insert its jobs; [] when it claimed nothing."""

    def lost_race(self, picks: str, pick_params: list[object]) -> bool:
        """After a claim that took nothing: whether a racing pop took the picked slot
        (then the claim is tried again), rather than there being nothing to serve."""

    # --- A prompt comes in (generations/intake.py) ------------------------------------------

    def sends_lock_with_insert(self) -> bool:
        """Whether the account's lock and the prompt's INSERT go in one round trip, without a
        transaction of their own (`insert_prompt` with `lock_user`)."""

    def insert_prompt(
        self, insert: str, params: list[object], prompt: Prompt, lock_user: User | None = None
    ) -> bool:
        """Run `insert` (which writes the prompt only within the limits) and insert the
        prompt's model names; with `lock_user`, that account's lock first. False: over."""

    # --- Expired prompts purged (generations/lifecycle.py) ----------------------------------

    def forget_deleted_text(self, purged_prompts: int) -> None:
        """After a purge: make the database's files drop the deleted text too, where it
        keeps copies (docs/privacy.md); outside a transaction, else on a later purge."""


def store() -> Store:
    """The store of the database this process uses (it never changes)."""
    return postgresql if is_postgres() else sqlite

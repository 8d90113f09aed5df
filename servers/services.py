"""Server check-in: every pop tells us what the server runs and that it is alive."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.identity import USER_COLUMNS, check_password, user_for_server, user_from_row
from accounts.models import User
from koboldcluster.errors import BadRequest, Forbidden, NotFound
from koboldcluster.rows import aware, instance
from servers.models import Server
from servers.records import cleared

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckIn:
    """What a server declares with each pop."""

    name: str
    models: list[str]
    max_length: int
    max_context_length: int
    bridge_agent: str = ""
    threads: int = 1
    softprompts: tuple[str, ...] = ()
    nsfw: bool = True

    def fields(self) -> dict:
        return {
            "models": self.models,
            "max_length": self.max_length,
            "max_context_length": self.max_context_length,
            "bridge_agent": self.bridge_agent,
            "threads": self.threads,
            "softprompts": list(self.softprompts),
            "nsfw": self.nsfw,
        }


_servers_epoch = 0


def servers_epoch() -> int:
    """A number that changes whenever this process changed a server (for snapshots of them)."""
    return _servers_epoch


def servers_changed() -> None:
    global _servers_epoch
    _servers_epoch += 1


@dataclass(frozen=True)
class Credentials:
    """Who a pop says it is: an API key's user, or a username and password."""

    username: str | None = None
    password: str | None = None
    api_user: User | None = None


_SERVER_COLUMNS = (
    "s.id, s.name, s.owner_id, s.models, s.max_length, s.max_context_length, s.bridge_agent, "
    "s.threads, s.softprompts, s.nsfw, s.last_check_in, s.maintenance, s.maintenance_msg, "
    "s.paused, s.speed, s.paused_reason"
)


def _server_from_row(row: tuple, owner: User) -> Server:
    loads = lambda v: json.loads(v) if isinstance(v, str) else v  # noqa: E731
    values = {
        "id": row[0] if isinstance(row[0], uuid.UUID) else uuid.UUID(row[0]),
        "name": row[1],
        "models": loads(row[3]),
        "max_length": row[4],
        "max_context_length": row[5],
        "bridge_agent": row[6],
        "threads": row[7],
        "softprompts": loads(row[8]),
        "nsfw": bool(row[9]),
        "last_check_in": aware(row[10]),
        "maintenance": bool(row[11]),
        "maintenance_msg": row[12],
        "paused": bool(row[13]),
        "speed": row[14],
        "paused_reason": row[15],
    }
    return instance(Server, owner=owner, **values)


def server_for_pop(*, credentials: Credentials, check_in: CheckIn, now: datetime) -> Server:
    """The server popping, checked in, with its owner: who it is and what it declares.

    The common case (a known server of the account that sends its key or password) is one
    statement; anything else (a first pop, a new account, another account's name, a wrong
    password) takes the ordinary path through `user_for_server` and `server_check_in`, which
    give the answers and errors.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_SERVER_COLUMNS}, {USER_COLUMNS} FROM servers_server s "
            "JOIN accounts_user u ON u.id = s.owner_id WHERE s.name = %s",
            [check_in.name],
        )
        row = cursor.fetchone()
    if row is not None:
        owner = user_from_row(row[16:])
        if _is_owner(owner, credentials):
            return server_check_in(
                owner=owner, check_in=check_in, now=now, server=_server_from_row(row, owner)
            )
    owner = user_for_server(
        username=credentials.username,
        password=credentials.password,
        api_user=credentials.api_user,
    )
    return server_check_in(owner=owner, check_in=check_in, now=now)


def _is_owner(owner: User, credentials: Credentials) -> bool:
    """Whether the credentials prove they are `owner`'s (False: let the ordinary path decide)."""
    if owner.is_anonymous_user or owner.kind != User.Kind.REGISTERED:
        return False
    if credentials.api_user is not None:
        return credentials.api_user.pk == owner.pk
    if credentials.username != owner.username or not credentials.password:
        return False
    check_password(owner, credentials.password)  # a wrong one is refused here, hashed once
    return True


def server_check_in(
    *, owner: User, check_in: CheckIn, now: datetime | None = None, server: Server | None = None
) -> Server:
    """Find or create the named server for `owner` and record what it declares.

    A name belongs to the account that first used it. The row is written only when the
    declared details change or the last write is older than CHECK_IN_WRITE_SECONDS, so an
    idle server polling every second does not write every second; the returned object always
    carries the details of this pop, which is what matching must use. Each write adds the
    time since the previous check-in to the server's uptime, unless it was stale, paused or
    in maintenance meanwhile.
    """
    now = now or timezone.now()
    if server is None:
        server = Server.objects.filter(name=check_in.name).first()
    if server is None:
        _refuse_one_server_too_many(owner, now)
        try:
            with transaction.atomic():
                created = Server.objects.create(
                    name=check_in.name, owner=owner, last_check_in=now, **check_in.fields()
                )
            servers_changed()
            return created
        except IntegrityError:  # a concurrent first pop under the same name
            server = Server.objects.get(name=check_in.name)
    if server.owner_id != owner.pk:
        raise Forbidden(
            f"The server name '{check_in.name}' belongs to another account.",
            rc="WrongCredentials",
        )
    server.owner = owner  # the same account: matching reads its standing without a query
    changed = {k: v for k, v in check_in.fields().items() if getattr(server, k) != v}
    quiet_for = timedelta(seconds=settings.KOBOLDCLUSTER["CHECK_IN_WRITE_SECONDS"])
    if changed or server.last_check_in <= now - quiet_for:
        _record_check_in(server, changed, now)
    for key, value in check_in.fields().items():
        setattr(server, key, value)
    return server


def _refuse_one_server_too_many(owner: User, now: datetime) -> None:
    """403 for a new server of an account that has MAX_SERVERS_PER_ACCOUNT active already:
    every active server's models are walked by the model lists and the chat template
    choice, so no account may add them without end (a new server is rare: one count)."""
    limits = settings.KOBOLDCLUSTER
    cap = limits["MAX_SERVERS_PER_ACCOUNT"]
    if not owner.trusted:  # README "Trust and quality": trust is earned with few servers
        cap = min(cap, limits["UNTRUSTED_SERVERS_PER_ACCOUNT"])
    if Server.objects.active(now).filter(owner=owner).count() >= cap:
        raise Forbidden(
            f"This account has {cap} active servers, the most one "
            f"{'' if owner.trusted else 'untrusted '}account may have: run "
            "another under a name it used before, or wait until one has been idle for "
            f"{settings.KOBOLDCLUSTER['SERVER_STALE_SECONDS']} seconds.",
            rc="TooManyWorkers",
        )


def _record_check_in(server: Server, changed: dict, now: datetime) -> None:
    since = server.last_check_in
    gap = int((now - since).total_seconds())
    working = not server.maintenance and not server.paused and since > now - _stale()
    uptime = {"uptime": F("uptime") + gap} if working and gap > 0 else {}
    # Only the pop that moves last_check_in from the value it read adds the gap: two pops at
    # once must not count the same seconds twice.
    moved = Server.objects.filter(pk=server.pk, last_check_in=since).update(
        last_check_in=now, **uptime, **changed
    )
    if not moved and changed:
        Server.objects.filter(pk=server.pk).update(**changed)
    server.last_check_in = now
    servers_changed()


def server_leave(*, server: Server, now: datetime) -> None:
    """The server's bridge is stopping: show it inactive now, not SERVER_STALE_SECONDS after
    its last pop, so that requests stop waiting for it. Its last check-in moves back to just
    past the stale limit (one UPDATE, no column of its own), after adding the uptime since
    the previous check-in; its next pop checks it in as after any absence."""
    since = server.last_check_in
    gap = int((now - since).total_seconds())
    working = not server.maintenance and not server.paused and since > now - _stale()
    uptime = {"uptime": F("uptime") + gap} if working and gap > 0 else {}
    left = now - _stale() - timedelta(seconds=1)
    Server.objects.filter(pk=server.pk).update(last_check_in=left, **uptime)
    server.last_check_in = left
    servers_changed()
    logger.info("server %s left", server.pk)


def _stale() -> timedelta:
    return timedelta(seconds=settings.KOBOLDCLUSTER["SERVER_STALE_SECONDS"])


def _may_manage(server: Server, actor: User) -> None:
    if actor.is_anonymous_user:
        raise Forbidden("The anonymous user cannot manage servers.", rc="AnonForbidden")
    if actor.pk != server.owner_id and not actor.moderator:
        raise Forbidden("Only the server's owner or a moderator may do this.", rc="NotOwner")


def server_modify(
    *,
    server: Server,
    actor: User,
    maintenance: bool | None = None,
    maintenance_msg: str | None = None,
    paused: bool | None = None,
    info: str | None = None,
    name: str | None = None,
    team: str | None = None,
) -> dict:
    """Change a server's settings as its owner or a moderator; return what changed.

    Pausing is a moderator's tool (403 `NotModerator` for the owner). The cluster has no
    teams: `team` may only be `""` (no team).
    """
    _may_manage(server, actor)
    if paused is not None and not actor.moderator:
        raise Forbidden("Only a moderator may pause or unpause a server.", rc="NotModerator")
    if team:
        raise NotFound(f"Team {team} is unknown: this cluster has no teams.", rc="TeamNotFound")
    changes: dict = {}
    reply: dict = {}
    if maintenance is not None:
        changes["maintenance"] = reply["maintenance"] = maintenance
        if maintenance_msg is not None:
            changes["maintenance_msg"] = maintenance_msg
    if paused is not None:
        changes["paused"] = reply["paused"] = paused
        changes.update(
            {"paused_reason": "paused by a moderator", "paused_at": timezone.now()}
            if paused
            else {"paused_reason": "", "paused_at": None, **cleared()}
        )
    if info is not None:
        changes["info"] = reply["info"] = info
    if name is not None:
        changes["name"] = reply["name"] = name
    if team is not None:
        reply["team"] = "None"  # the AI Horde's reply when a server leaves its team
    if not reply:
        raise BadRequest("Nothing to change.", rc="NoWorkerModSelected")
    try:
        with transaction.atomic():
            if changes:
                Server.objects.filter(pk=server.pk).update(**changes)
    except IntegrityError:
        raise BadRequest(
            f"A server named '{name}' exists already.", rc="WorkerNameAlreadyExists"
        ) from None
    servers_changed()
    logger.info("server %s changed by user %s: %s", server.pk, actor.pk, sorted(changes))
    return reply


def server_delete(*, server: Server, actor: User) -> None:
    """Delete a server as its owner or a moderator.

    Its jobs in flight lose their server (a late submit gets 404); the ledger keeps what it
    earned, by id.
    """
    _may_manage(server, actor)
    Server.objects.filter(pk=server.pk).delete()
    servers_changed()
    logger.info("server %s deleted by user %s", server.pk, actor.pk)

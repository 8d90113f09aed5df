"""Server check-in: every pop tells us what the server runs and that it is alive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from koboldcluster.errors import Forbidden
from servers.models import Server


@dataclass(frozen=True)
class CheckIn:
    """What a server declares with each pop."""

    name: str
    models: list[str]
    max_length: int
    max_context_length: int
    bridge_agent: str = ""
    threads: int = 1

    def fields(self) -> dict:
        return {
            "models": self.models,
            "max_length": self.max_length,
            "max_context_length": self.max_context_length,
            "bridge_agent": self.bridge_agent,
            "threads": self.threads,
        }


def server_check_in(*, owner: User, check_in: CheckIn, now: datetime | None = None) -> Server:
    """Find or create the named server for `owner` and record what it declares.

    A name belongs to the account that first used it. The row is written only when the
    declared details change or the last write is older than CHECK_IN_WRITE_SECONDS, so an
    idle server polling every second does not write every second; the returned object always
    carries the details of this pop, which is what matching must use.
    """
    now = now or timezone.now()
    server = Server.objects.filter(name=check_in.name).first()
    if server is None:
        try:
            with transaction.atomic():
                return Server.objects.create(
                    name=check_in.name, owner=owner, last_check_in=now, **check_in.fields()
                )
        except IntegrityError:  # a concurrent first pop under the same name
            server = Server.objects.get(name=check_in.name)
    if server.owner_id != owner.pk:
        raise Forbidden(
            f"The server name '{check_in.name}' belongs to another account.",
            rc="WrongCredentials",
        )
    changed = {k: v for k, v in check_in.fields().items() if getattr(server, k) != v}
    quiet_for = timedelta(seconds=settings.KOBOLDCLUSTER["CHECK_IN_WRITE_SECONDS"])
    if changed or server.last_check_in <= now - quiet_for:
        Server.objects.filter(pk=server.pk).update(last_check_in=now, **changed)
        server.last_check_in = now
    for key, value in check_in.fields().items():
        setattr(server, key, value)
    return server

"""What the status page shows, read in one go (about twenty small queries)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from accounts.models import Balance, LedgerEntry, LedgerFold, User
from accounts.selectors import user_totals
from generations.models import Job, Prompt
from generations.selectors import model_stats
from servers.models import Server
from servers.trust import server_standing
from stats.rollups import floor_minute
from stats.selectors import StatsReader
from stats.tally import Tally, total

DAY = timedelta(hours=24)
RATE_BIN = timedelta(minutes=5)  # generations per minute, averaged over 5 minutes
WAIT_BIN = timedelta(minutes=10)  # median wait per 10 minutes
TOP_CONTRIBUTORS = 10


@dataclass(frozen=True)
class ModelLine:
    name: str
    servers: int  # active servers running it (not in maintenance or paused)
    threads: int
    jobs: int  # slots waiting plus jobs in flight of requests naming it
    queued_tokens: int
    eta: int  # seconds, estimated; 10000 when nothing serves it


# The most servers the page lists one by one (paused ones first): the page stays cheap.
SERVERS_LISTED = 100


@dataclass(frozen=True)
class ServerLine:
    """A server's standing as anyone may see it (servers/trust.py): never text."""

    name: str
    model: str
    trusted: bool
    paused: bool
    paused_reason: str
    success_rate: float | None
    tokens_per_second: float


@dataclass(frozen=True)
class ClusterStatus:
    now: datetime
    servers_online: int
    models: list[ModelLine]
    prompts_waiting: int  # requests with slots waiting for a server
    slots_waiting: int
    jobs_in_progress: int
    hour: Tally
    day: Tally
    median_wait_hour: float | None
    rate: list[tuple[datetime, float]]  # generations per minute, 5-minute bins, 24 h
    waits: list[tuple[datetime, float | None]]  # median wait, 10-minute bins, 24 h
    tokens_per_model: list[tuple[str, int]]  # last 24 h
    top_contributors: list[tuple[str, int]]  # tokens generated for others, all time
    servers: list[ServerLine] = field(default_factory=list)  # SERVERS_LISTED at most

    @property
    def models_online(self) -> int:
        return len(self.models)


def cluster_status(*, now: datetime | None = None) -> ClusterStatus:
    now = now or timezone.now()
    reader = StatsReader(now)
    minutes = reader.series(now - DAY)
    day = reader.window(now - DAY)
    waiting = Prompt.objects.queued(now).aggregate(slots=Sum("waiting"))
    return ClusterStatus(
        now=now,
        servers_online=Server.objects.active(now).count(),
        models=_models(now),
        prompts_waiting=Prompt.objects.queued(now).count(),
        slots_waiting=waiting["slots"] or 0,
        jobs_in_progress=Job.objects.filter(
            state=Job.State.PROCESSING, prompt__expires_at__gt=now
        ).count(),
        hour=total(reader.window(now - timedelta(hours=1))),
        day=total(day),
        median_wait_hour=total(
            {m: t for m, t in minutes.items() if m >= floor_minute(now - timedelta(hours=1))}
        ).median_wait(),
        rate=[(start, t.generations / 5) for start, t in _bins(minutes, now, RATE_BIN)],
        waits=[(start, _rounded(t.median_wait())) for start, t in _bins(minutes, now, WAIT_BIN)],
        tokens_per_model=sorted(
            ((m, t.tokens) for m, t in day.items() if t.tokens), key=lambda r: (-r[1], r[0])
        ),
        top_contributors=top_contributors(),
        servers=_servers(now),
    )


def _servers(now: datetime) -> list[ServerLine]:
    online = Server.objects.active(now).select_related("owner").order_by("-paused", "name")
    lines = []
    for server in online[:SERVERS_LISTED]:
        standing = server_standing(server)
        lines.append(
            ServerLine(
                name=server.name,
                model=server.model,
                trusted=standing["trusted"],
                paused=standing["paused"],
                paused_reason=standing["paused_reason"],
                success_rate=standing["success_rate"],
                tokens_per_second=standing["tokens_per_second"],
            )
        )
    return lines


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _bins(
    minutes: dict[datetime, Tally], now: datetime, size: timedelta
) -> list[tuple[datetime, Tally]]:
    """The last 24 h cut into bins of `size`, each with its minutes added up."""
    step = int(size.total_seconds() // 60)
    last = floor_minute(now)
    last -= timedelta(minutes=last.minute % step)
    count = int(DAY / size)
    starts = [last - size * i for i in range(count - 1, -1, -1)]
    bins = {start: Tally() for start in starts}
    for minute, tally in minutes.items():
        start = minute - timedelta(minutes=minute.minute % step)
        if start in bins:
            bins[start].add(tally)
    return list(bins.items())


def _models(now: datetime) -> list[ModelLine]:
    running = Server.objects.active(now).filter(maintenance=False, paused=False)
    servers = Counter(
        name for models in running.values_list("models", flat=True) for name in models
    )
    return [
        ModelLine(
            name=row.name,
            servers=servers[row.name],
            threads=row.count,
            jobs=row.jobs,
            queued_tokens=row.queued,
            eta=row.eta,
        )
        for row in model_stats(now=now)
    ]


def top_contributors(limit: int = TOP_CONTRIBUTORS) -> list[tuple[str, int]]:
    """Names and tokens generated for others, exact: folded balances plus the ledger's tail."""
    watermark = LedgerFold.objects.values_list("last_entry_id", flat=True).first() or 0
    leaders = Balance.objects.filter(tokens_contributed__gt=0).order_by("-tokens_contributed")
    candidates = set(leaders.values_list("user_id", flat=True)[:limit])
    candidates |= set(
        LedgerEntry.objects.filter(id__gt=watermark, kind=LedgerEntry.Kind.CONTRIBUTION)
        .values_list("user_id", flat=True)
        .distinct()
    )
    totals = user_totals(candidates)
    names = dict(User.objects.filter(pk__in=totals).values_list("pk", "username"))
    rows = [(names[pk], t.tokens_contributed) for pk, t in totals.items() if t.tokens_contributed]
    return sorted(rows, key=lambda row: (-row[1], row[0]))[:limit]

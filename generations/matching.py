"""Which prompts a server may serve, and in which order: the one place that says so.

Each rule is one reason a server may not take a prompt, under the AI Horde's name for it (the
`skipped` keys a pop answers), written twice side by side: as SQL on a queue row `p` and as
Python on a prompt and a server. Everything that matches prompts to servers is built from
`RULES`: pop's claim (`servable_sql`), the skipped counts (`skipped_sql`) and, from the
prompt's side, `could_serve` (a request's `is_possible` and the "no server can serve it"
warning). `generations/tests/test_matching.py` checks on random servers and prompts that the
SQL and the Python forms agree.

The queue order is `QUEUE_ORDER`: highest `sort_key` first (DESIGN §4.3), ties by age.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from generations.models import Prompt
from generations.sql import placeholders, uuid_param
from servers.models import Server

# For the ORM (outlook, the benchmark) and for SQL (`p` is a prompt row).
QUEUE_ORDER = ("-sort_key", "created")
QUEUE_ORDER_SQL = "p.sort_key DESC, p.created"
# Literal constants, not parameters: SQLite uses the partial queue index only when the query
# states its condition in the same words.
QUEUED_SQL = "p.state = 'live' AND p.waiting > 0 AND p.expires_at > %s"
# Only the head of the queue is examined for the skipped counts: an idle server asks every
# second, and its answer must not cost as much as the queue is long.
SKIPPED_SCAN = 1000


@dataclass(frozen=True)
class ServerProfile:
    """What the rules read of a server: what it declared in its pop, and its standing."""

    id: uuid.UUID
    owner_id: int
    trusted: bool
    models: tuple[str, ...]
    max_length: int
    max_context_length: int
    softprompts: tuple[str, ...] = ()
    slow: bool = False  # measured slower than SLOW_SERVER_TOKENS_PER_SECOND (or never measured)

    @classmethod
    def of(cls, server: Server) -> ServerProfile:
        """`server` as it declared itself in this pop; its `owner` must be loaded."""
        return cls(
            id=server.id,
            owner_id=server.owner_id,
            # A paused server serves no trusted-only request, even of a trusted owner.
            trusted=server.owner.trusted and not server.paused,
            models=tuple(server.models),
            max_length=server.max_length,
            max_context_length=server.max_context_length,
            softprompts=tuple(server.softprompts),
            slow=server.speed < settings.KOBOLDCLUSTER["SLOW_SERVER_TOKENS_PER_SECOND"],
        )


@dataclass(frozen=True)
class PromptFacts:
    """What the rules read of a prompt; `listed` are the servers its allow/deny list names."""

    user_id: int
    any_model: bool
    models: tuple[str, ...]
    max_length: int
    max_context_length: int
    workers: str = Prompt.Workers.ANY
    listed: frozenset[uuid.UUID] = frozenset()
    softprompt: str = ""
    trusted_workers: bool = False
    slow_workers: bool = True

    @classmethod
    def of(cls, prompt: Prompt, listed: frozenset[uuid.UUID] = frozenset()) -> PromptFacts:
        return cls(
            user_id=prompt.user_id,
            any_model=prompt.any_model,
            models=tuple(prompt.models),
            max_length=prompt.max_length,
            max_context_length=prompt.max_context_length,
            workers=prompt.workers,
            listed=listed,
            softprompt=prompt.softprompt,
            trusted_workers=prompt.trusted_workers,
            slow_workers=prompt.slow_workers,
        )


# A bar as SQL with its parameters, or None when the rule cannot bar anything for this server.
SqlBar = tuple[str, list[object]] | None


@dataclass(frozen=True)
class Rule:
    reason: str
    sql: Callable[[ServerProfile], SqlBar]
    bars: Callable[[PromptFacts, ServerProfile], bool]


def _models_sql(s: ServerProfile) -> SqlBar:
    if not s.models:
        return "p.any_model = %s", [False]
    named = (
        "SELECT 1 FROM generations_promptmodel m WHERE m.prompt_id = p.id "
        f"AND m.name IN ({placeholders(s.models)})"
    )
    # A correlated EXISTS probed per queue row with the (name, prompt) index.
    return f"(p.any_model = %s AND NOT EXISTS ({named}))", [False, *s.models]


def _listed_sql(s: ServerProfile) -> SqlBar:
    # One uncorrelated subquery, read once per statement and almost always empty.
    listed = "SELECT w.prompt_id FROM generations_promptworker w WHERE w.server_id = %s"
    only = f"p.workers = 'only' AND p.id NOT IN ({listed})"
    sql = f"(({only}) OR (p.workers = 'except' AND p.id IN ({listed})))"
    return sql, [uuid_param(s.id), uuid_param(s.id)]


def _softprompt_sql(s: ServerProfile) -> SqlBar:
    if not s.softprompts:
        return "p.softprompt <> ''", []
    return f"(p.softprompt <> '' AND p.softprompt NOT IN ({placeholders(s.softprompts)}))", [
        *s.softprompts
    ]


def _is_listed_out(p: PromptFacts, s: ServerProfile) -> bool:
    if p.workers == Prompt.Workers.ONLY:
        return s.id not in p.listed
    return p.workers == Prompt.Workers.EXCEPT and s.id in p.listed


RULES: tuple[Rule, ...] = (
    Rule("models", _models_sql, lambda p, s: not p.any_model and not set(p.models) & set(s.models)),
    Rule(
        "max_context_length",
        lambda s: ("p.max_context_length > %s", [s.max_context_length]),
        lambda p, s: p.max_context_length > s.max_context_length,
    ),
    Rule(
        "max_length",
        lambda s: ("p.max_length > %s", [s.max_length]),
        lambda p, s: p.max_length > s.max_length,
    ),
    Rule("worker_id", _listed_sql, _is_listed_out),
    Rule(
        "untrusted",
        lambda s: None if s.trusted else ("p.trusted_workers = %s", [True]),
        lambda p, s: p.trusted_workers and not s.trusted,
    ),
    Rule(
        "performance",
        lambda s: ("p.slow_workers = %s", [False]) if s.slow else None,
        lambda p, s: not p.slow_workers and s.slow,
    ),
    Rule(
        "matching_softprompt",
        _softprompt_sql,
        lambda p, s: bool(p.softprompt) and p.softprompt not in s.softprompts,
    ),
)
REASONS = tuple(rule.reason for rule in RULES)


def servable_sql(server: ServerProfile) -> tuple[str, list[object]]:
    """The condition (on a queue row `p`) that no rule bars the prompt for `server`."""
    terms, params = [], []
    for rule in RULES:
        bar = rule.sql(server)
        if bar is not None:
            terms.append(f"NOT {bar[0]}")
            params += bar[1]
    return " AND ".join(terms), params


def skipped_sql(server: ServerProfile) -> tuple[str, list[object]]:
    """One SELECT counting the head of the queue by the first rule that bars each prompt.

    The parameters of the counts come first; the `now` of QUEUED_SQL is to be added last.
    """
    columns: list[str] = []
    params: list[object] = []
    passed: list[tuple[str, list[object]]] = []  # negations of the earlier rules' bars
    for rule in RULES:
        bar = rule.sql(server)
        if bar is None:
            columns.append("0")
            continue
        condition = " AND ".join([*(term for term, _ in passed), bar[0]])
        columns.append(f"COALESCE(SUM(CASE WHEN {condition} THEN 1 ELSE 0 END), 0)")
        for _, term_params in passed:
            params += term_params
        params += bar[1]
        passed.append((f"NOT {bar[0]}", bar[1]))
    head = (
        f"SELECT * FROM generations_prompt p WHERE {QUEUED_SQL} "
        f"ORDER BY {QUEUE_ORDER_SQL} LIMIT {SKIPPED_SCAN}"
    )
    return f"SELECT {', '.join(columns)} FROM ({head}) p", params


def barring_reason(prompt: PromptFacts, server: ServerProfile) -> str | None:
    """The first rule that bars `prompt` for `server`, or None if it may serve it."""
    for rule in RULES:
        if rule.bars(prompt, server):
            return rule.reason
    return None


def could_serve(prompt: PromptFacts, server: ServerProfile, *, maintenance: bool) -> bool:
    """Whether an active server could take this prompt now (seen from the prompt's side).

    A server in maintenance or paused takes only its owner's prompts.
    """
    if maintenance and server.owner_id != prompt.user_id:
        return False
    return barring_reason(prompt, server) is None

"""The AI Horde v2 answers as data (research §2): exact keys and JSON types, and a checker.

A shape is a JSON type (`int`, `float`, `bool`, `str`), `UUID` (a canonical UUID string), a
dict of key → shape (exactly those keys; `Optional(shape)` may be absent), `[shape]` (a list
of it) or `Nullable(shape)`. `int` means a JSON integer (never a bool or 1.0); `float` a JSON
number written with a fraction part or not, as the AI Horde's floats are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Optional:
    shape: Any


@dataclass(frozen=True)
class Nullable:
    shape: Any


UUID = "uuid"
ANY_DICT = "dict"


def check(value: Any, shape: Any, path: str = "$") -> None:
    """Fail with the JSON path of the first difference between `value` and `shape`."""
    if isinstance(shape, Nullable):
        if value is not None:
            check(value, shape.shape, path)
        return
    if shape is int:
        assert type(value) is int, f"{path}: {value!r} is not a JSON integer"
    elif shape is float:
        assert type(value) in (int, float), f"{path}: {value!r} is not a number"
    elif shape is bool:
        assert type(value) is bool, f"{path}: {value!r} is not a boolean"
    elif shape is str:
        assert type(value) is str, f"{path}: {value!r} is not a string"
    elif shape == UUID:
        assert type(value) is str and str(uuid.UUID(value)) == value, f"{path}: {value!r}"
    elif shape == ANY_DICT:
        assert type(value) is dict, f"{path}: {value!r} is not an object"
    elif isinstance(shape, list):
        assert type(value) is list, f"{path}: {value!r} is not a list"
        for index, item in enumerate(value):
            check(item, shape[0], f"{path}[{index}]")
    elif isinstance(shape, dict):
        assert type(value) is dict, f"{path}: {value!r} is not an object"
        required = {k for k, v in shape.items() if not isinstance(v, Optional)}
        assert required <= set(value), f"{path}: missing {sorted(required - set(value))}"
        assert set(value) <= set(shape), f"{path}: unexpected {sorted(set(value) - set(shape))}"
        for key, item in value.items():
            inner = shape[key].shape if isinstance(shape[key], Optional) else shape[key]
            check(item, inner, f"{path}.{key}")
    else:
        raise AssertionError(f"{path}: unknown shape {shape!r}")


ERROR = {"message": str, "rc": str}
VALIDATION_ERROR = {"message": str, "rc": str, "errors": ANY_DICT}

ASYNC_ACCEPTED = {
    "id": UUID,
    "kudos": float,
    "message": Optional(str),
    "warnings": Optional([{"code": str, "message": str}]),
}
DRY_RUN = {"kudos": float}

GENERATION = {
    "id": UUID,
    "worker_id": UUID,
    "worker_name": str,
    # This cluster's extension (issue 25): every server that produced the text, first to last.
    "workers": Optional([{"id": str, "name": str}]),
    "model": str,
    "state": str,
    "text": str,
    "seed": int,
    "gen_metadata": [{"type": str, "value": str, "ref": Optional(str)}],
}
STATUS = {
    "finished": int,
    "processing": int,
    "restarted": int,
    "waiting": int,
    "done": bool,
    "faulted": bool,
    "wait_time": int,
    "queue_position": int,
    "kudos": float,
    "is_possible": bool,
    # This cluster's extension (issue 25): the servers at work on it now.
    "processing_workers": Optional([{"id": str, "name": str}]),
    "generations": [GENERATION],
}

SKIPPED = {
    "models": int,
    "max_context_length": int,
    "max_length": int,
    "worker_id": int,
    "untrusted": int,
    "performance": int,
    "matching_softprompt": int,
}
# With a job the pop counts nothing (`{}`).
SKIPPED_NONE = {reason: Optional(int) for reason in SKIPPED}
PAYLOAD = {
    "prompt": str,
    "n": int,
    "max_length": int,
    "max_context_length": int,
    **{
        name: Optional(float)
        for name in (
            "temperature",
            "top_p",
            "top_a",
            "typical",
            "tfs",
            "min_p",
            "rep_pen",
            "rep_pen_slope",
            "smoothing_factor",
            "dynatemp_range",
            "dynatemp_exponent",
        )
    },
    "top_k": Optional(int),
    "rep_pen_range": Optional(int),
    "sampler_order": Optional([int]),
    "stop_sequence": Optional([str]),
    **{
        name: Optional(bool)
        for name in (
            "use_default_badwordsids",
            "singleline",
            "frmtadsnsp",
            "frmtrmblln",
            "frmtrmspch",
            "frmttriminc",
        )
    },
}
POP_WITH_JOB = {
    "id": UUID,
    "ids": [UUID],
    "payload": PAYLOAD,
    "model": str,
    "softprompt": str,
    "ttl": int,
    "skipped": SKIPPED_NONE,
    "messages": [ANY_DICT],
    "extra_source_images": Nullable([ANY_DICT]),
}
POP_WITHOUT_JOB = {
    "id": Nullable(UUID),
    "ids": [UUID],
    "payload": {},
    "model": Nullable(str),
    "softprompt": Nullable(str),
    "ttl": Nullable(int),
    "skipped": SKIPPED,
    "messages": [ANY_DICT],
    "extra_source_images": Nullable([ANY_DICT]),
}
REWARD = {"reward": float}

WORKER = {
    "type": str,
    "name": str,
    "id": UUID,
    "online": bool,
    "requests_fulfilled": int,
    "uncompleted_jobs": int,
    "kudos_rewards": float,
    "kudos_details": {"generated": float, "uptime": int},
    "performance": str,
    "threads": int,
    "uptime": int,
    "maintenance_mode": bool,
    "info": Optional(str),
    "trusted": bool,
    "flagged": bool,
    "nsfw": bool,
    "models": [str],
    "team": {"name": Nullable(str), "id": Nullable(str)},
    "bridge_agent": str,
    "max_length": int,
    "max_context_length": int,
    "tokens_generated": int,
    "owner": Optional(str),
    # The AI Horde shows `paused` to moderators only; the cluster to anyone, with why and
    # the share of jobs delivered (README: Trust and quality).
    "paused": bool,
    "paused_reason": str,
    "success_rate": Nullable(float),
    "messages": Optional([ANY_DICT]),
}
WORKER_MODIFIED = {
    "maintenance": Optional(bool),
    "paused": Optional(bool),
    "info": Optional(str),
    "name": Optional(str),
    "team": Optional(str),
}
WORKER_DELETED = {"deleted_id": UUID, "deleted_name": str}

_RECORD = {"megapixelsteps": float, "tokens": int}
_COUNTS = {"image": int, "text": int, "interrogation": int}
USER = {
    "username": str,
    "id": int,
    "kudos": float,
    "kudos_details": {
        name: float
        for name in (
            "accumulated",
            "gifted",
            "donated",
            "admin",
            "received",
            "recurring",
            "awarded",
            "styled",
        )
    },
    "usage": {"megapixelsteps": float, "requests": int},
    "contributions": {"megapixelsteps": float, "fulfillments": int},
    "records": {
        "usage": _RECORD,
        "contribution": _RECORD,
        "fulfillment": _COUNTS,
        "request": _COUNTS,
        "style": {"image": int, "text": int},
    },
    "concurrency": int,
    "worker_invited": int,
    **{
        name: bool
        for name in (
            "moderator",
            "trusted",
            "flagged",
            "service",
            "education",
            "customizer",
            "deleted",
            "pseudonymous",
        )
    },
    "worker_count": int,
    "account_age": int,
    "styles": [ANY_DICT],
    "worker_ids": Optional([UUID]),
    "active_generations": Optional({"text": [UUID], "image": [UUID], "alchemy": [UUID]}),
    "sharedkey_ids": Optional([str]),
}
TRANSFERRED = {"transferred": int}

HEARTBEAT = {"message": str, "version": str}
MODEL = {
    "name": str,
    "count": int,
    "performance": float,
    "queued": float,
    "jobs": float,
    "eta": int,
    "type": str,
}
PERFORMANCE = {
    name: int
    for name in (
        "queued_text_requests",
        "queued_tokens",
        "past_minute_tokens",
        "text_worker_count",
        "text_thread_count",
        "queued_requests",
        "worker_count",
        "thread_count",
        "queued_megapixelsteps",
        "past_minute_megapixelsteps",
        "queued_forms",
        "interrogator_count",
        "interrogator_thread_count",
    )
}
MODES = {"maintenance_mode": bool, "invite_only_mode": bool}

"""A prompt's status as each API answers it: one builder, the API a parameter.

The original cluster API and the AI Horde v2 answer a poll (and a cancel) with the same
counts, read by the same service (`generations.status`); the AI Horde adds its outlook (place,
wait, possibility), the tokens charged and the servers at work, and describes each generation
instead of giving its text alone. Both faces' views (and the direct lane, through their
`reply`) read the status with `prompt_status`/`prompt_cancel` (the outlook when their API needs
it, `StatusApi.outlook`) and shape it with `status_body` here, so the two answers cannot drift
apart where they agree. The module imports no API face: it shapes plain dicts.
"""

from __future__ import annotations

import enum
from typing import Any

from generations.delivery import CSAM_METADATA
from generations.models import Job
from generations.status import PromptStatus


class StatusApi(enum.Enum):
    """The APIs that answer a prompt's status; the AI Horde's answer needs the outlook."""

    ORIGINAL = "original"
    HORDE = "horde"

    @property
    def outlook(self) -> bool:
        """Whether this API's answer needs the prompt's outlook (its queue read with it)."""
        return self is StatusApi.HORDE


def status_body(status: PromptStatus, api: StatusApi) -> dict[str, Any]:
    """`status` in `api`'s shape; every key always present, counts as JSON integers."""
    body: dict[str, Any] = {
        "finished": status.finished,
        "processing": status.processing,
        "restarted": status.restarted,
        "waiting": status.waiting,
        "done": status.done,
        "faulted": status.faulted,
    }
    if api is StatusApi.ORIGINAL:
        body["generations"] = [job.text for job in status.generations]
        return body
    outlook = status.outlook
    assert outlook is not None  # read for this API (StatusApi.outlook)
    body.update(
        {
            "wait_time": outlook.wait_time,
            "queue_position": outlook.queue_position,
            "kudos": float(status.tokens),
            "is_possible": outlook.is_possible,
            "processing_workers": status.serving(),
            "generations": [_horde_generation(status, job) for job in status.generations],
        }
    )
    return body


def _horde_generation(status: PromptStatus, job: Job) -> dict[str, Any]:
    """One delivered generation as the AI Horde describes it."""
    return {
        "id": str(job.id),
        "worker_id": str(job.server_id) if job.server_id else "",
        "worker_name": status.server_name(job),
        "workers": status.servers_of(job),
        "model": job.model,
        "state": generation_state(job),
        "text": job.text,
        "seed": job.seed or 0,
        "gen_metadata": job.gen_metadata,
    }


def generation_state(job: Job) -> str:
    """The AI Horde's state of a delivered generation: csam, censored or ok."""
    if any(
        {"type": m.get("type"), "value": m.get("value")} == CSAM_METADATA for m in job.gen_metadata
    ):
        return "csam"
    return "censored" if job.censored else "ok"

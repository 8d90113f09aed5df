"""Waiting for a prompt inside an HTTP request, without holding a thread while it waits.

The KoboldAI and OpenAI APIs answer with the generation itself, so their views wait for
the prompt to be done. The wait is a coroutine: under ASGI thousands of callers wait on
one event loop, and only each status check borrows a thread for a moment.
"""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async

from generations.status import PromptStatus, prompt_status

# Seconds between two status checks. A wake-up (koboldcluster/wakeups.py, when merged)
# replaces most of them; the re-check stays, so that a lost wake-up only delays an answer.
POLL_SECONDS = 0.25


async def prompt_wait_done(prompt_id: object, timeout: float) -> PromptStatus | None:
    """The prompt's status once it is done (delivered, cancelled or faulted), or None when
    `timeout` seconds pass first. Every check keeps the prompt alive, as a poll does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await sync_to_async(prompt_status)(prompt_id=prompt_id)
        if status.done:
            return status
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        # LEAD: swap this line for `await wakeups.wait(f"prompt:{prompt_id}",
        # min(POLL_SECONDS * 20, remaining))` once koboldcluster/wakeups.py is merged.
        await asyncio.sleep(min(POLL_SECONDS, remaining))

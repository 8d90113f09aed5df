"""What happened to the queue, told to whoever waits for it.

Two kinds of news: the queue changed (a prompt was created or a slot came back, so an idle
server may now find work) and a prompt changed (one of its jobs finished or failed, or it was
cancelled). Services call these after the change; waiting pops and waiting front-end requests
listen. `queue_epoch` also lets this process's idle-pop cache forget its answers at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from django.db import transaction

from koboldcluster import wakeups

_epochs = itertools.count(1)
_epoch = 0
# Called with the facts of a new prompt (generations.matching.PromptFacts), twice: when it
# is inserted, and with `committed` when others can see it.
_new_prompt_listeners: list[Callable[[Any, bool], None]] = []


def on_new_prompt(listener: Callable[[Any, bool], None]) -> None:
    """Have `listener(facts, committed)` called for each prompt created in this process."""
    _new_prompt_listeners.append(listener)


def queue_epoch() -> int:
    """A number that changes whenever this process learns that the queue changed."""
    return _epoch


def queue_changed_here() -> None:
    """Note a change of the queue in this process (also called for news from elsewhere)."""
    global _epoch
    _epoch = next(_epochs)


def queue_changed(new_prompt: Any = None) -> None:
    """A prompt was created (`new_prompt`: its matching facts) or a slot came back.

    Call inside or after the transaction. What was cached is forgotten at once (an answer
    cached meanwhile is dropped again at commit) and again when the change is committed,
    which is when others can see it. A new prompt's facts let listeners forget only what it
    concerns; any other change moves the epoch, which forgets everything.
    """

    def tell(committed: bool) -> None:
        if new_prompt is None:
            queue_changed_here()
        else:
            for listener in _new_prompt_listeners:
                listener(new_prompt, committed)

    tell(committed=False)
    transaction.on_commit(lambda: tell(committed=True))
    wakeups.notify_on_commit(wakeups.QUEUE)


def prompt_changed(prompt_id: object) -> None:
    """A job of `prompt_id` finished or failed, or the prompt was cancelled or faulted."""
    wakeups.notify_on_commit(wakeups.topic_for_prompt(prompt_id))


# News of the queue from another process (or found by the periodic re-check): this process
# cannot tell what changed, so it forgets all its idle answers.
wakeups.on_news_from_elsewhere(wakeups.QUEUE, queue_changed_here)

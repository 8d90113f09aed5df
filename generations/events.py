"""What happened to the queue, told to whoever waits for it.

Two kinds of news: the queue changed (a prompt was created or a slot came back, so an idle
server may now find work) and a prompt changed (one of its jobs finished or failed, or it was
cancelled). Services call these after the change; waiting pops and waiting front-end requests
listen. `queue_epoch` also lets this process's idle-pop cache forget its answers at once.
"""

from __future__ import annotations

import itertools

from django.db import transaction

_epochs = itertools.count(1)
_epoch = 0


def queue_epoch() -> int:
    """A number that changes whenever this process learns that the queue changed."""
    return _epoch


def queue_changed_here() -> None:
    """Note a change of the queue in this process (also called for news from elsewhere)."""
    global _epoch
    _epoch = next(_epochs)


def queue_changed() -> None:
    """A prompt was created or a slot came back; call inside or after the transaction.

    The epoch moves at once (an idle answer cached meanwhile is dropped again at commit)
    and again when the change is committed, which is when others can see it.
    """
    queue_changed_here()
    transaction.on_commit(queue_changed_here)


def prompt_changed(prompt_id: object) -> None:
    """A job of `prompt_id` finished or failed, or the prompt was cancelled or faulted."""

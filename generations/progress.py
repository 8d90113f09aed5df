"""A job's text so far, posted by its server while the backend streams it (issue 12).

Progress is transient: only the latest text of each prompt's job is kept, never in the
database. With `REDIS_URL` it lives in Redis (Django's cache) for PROGRESS_TTL_SECONDS, so a
stream on any node reads it; without, in a file per prompt in the var dir, so every web
process of this machine reads it. Each progress wakes the prompt's waiters
(`wakeups.topic_for_prompt`); the final submit (or a fault) removes it, and a stale entry
expires by itself. The submit stays the only record of the generation.

A post without text is a heartbeat: the job's server is still at work (a job that is not
streamed, or a stream between two tokens). Every post marks the job alive
(generations/liveness.py); neither kind writes the database.
"""

from __future__ import annotations

from django.utils import timezone

from generations.delivery import delivery_for
from generations.liveness import mark_alive
from generations.models import Job, Prompt
from generations.progress_store import progress_drop, progress_store
from koboldcluster import wakeups
from koboldcluster.errors import NotFound
from servers.services import Credentials

# The most text kept per job: what a submit may carry.
MAX_PROGRESS_CHARS = 1_000_000


def job_progress(*, job_id: object, credentials: Credentials, text: str | None) -> None:
    """Keep `text` as the job's text so far and wake its prompt's streams; without `text`,
    only mark the job alive (a heartbeat).

    Only the owner of the server holding the job, while it is processing: 404 InvalidJobID
    for an unknown or expired job, 404 AbortedGen once it is no longer processing or its
    request was cancelled (its client aborted or left): the bridge then stops its backend and
    submits the text so far, which is accepted and paid like any result.
    """
    delivery = delivery_for(job_id=job_id, credentials=credentials, now=timezone.now())
    job = delivery.job
    wanted = Job.objects.filter(
        id=job.id, state=Job.State.PROCESSING, prompt__state=Prompt.State.LIVE
    )
    if text is None:  # a heartbeat
        if not wanted.exists():
            raise NotFound(f"Job {job.id} is no longer wanted.", rc="AbortedGen")
        mark_alive(job.id)
        return
    if job.text is None:  # it ended (submitted, given back): nothing to show or keep
        raise NotFound(f"Job {job.id} is no longer wanted.", rc="AbortedGen")
    # Stored first, then checked: a submit that lands between a check and the store would
    # find nothing to drop, and the text would outlive the job (and the prompt's wipe).
    # The submit commits before it drops the progress, so one of the two removes it. A
    # continuation's text so far begins with the text it continues (generations/handover.py,
    # read by the lookup): a stream shows the whole generation, one server after another.
    whole = (job.text + text)[:MAX_PROGRESS_CHARS]
    progress_store(prompt_id=job.prompt_id, job_id=job.id, text=whole)
    if not wanted.exists():
        progress_drop(job.prompt_id)
        raise NotFound(f"Job {job.id} is no longer wanted.", rc="AbortedGen")
    mark_alive(job.id)
    wakeups.notify(wakeups.topic_for_prompt(job.prompt_id))

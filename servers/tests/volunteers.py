"""Servers driven through the services a pop and a submit call, for the trust tests: each
job is queued, popped and ended as the API would, with the clock in the test's hands."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from accounts.identity import anonymous_user
from accounts.models import User
from generations.delivery import job_submit
from generations.intake import GenerationRequest, prompt_create
from generations.lifecycle import jobs_reap
from generations.models import Job, Prompt
from generations.queue import job_pop
from servers.models import Server
from servers.services import CheckIn, Credentials


@dataclass
class Volunteer:
    """One server of `owner` advertising `model`, that pops and ends one job at a time."""

    owner: User
    name: str
    model: str = "tiny-llm"
    clock: list[datetime] = field(default_factory=lambda: [timezone.now()])

    def pop(self, **request: object) -> Job | None:
        """Queue a prompt (unless `queue=False`) and pop; the job it got, if any."""
        if request.pop("queue", True):
            ask(str(request.pop("prompt", "Once upon a time")), now=self.now, **request)
        result = job_pop(
            credentials=Credentials(api_user=self.owner),
            check_in=CheckIn(self.name, [self.model], 512, 4096),
            now=self.now,
        )
        return result.job

    @property
    def now(self) -> datetime:
        return self.clock[0]

    def tick(self, seconds: float) -> None:
        self.clock[0] += timedelta(seconds=seconds)

    def work(
        self, text: str = " and so they lived", seconds: float = 2.0, **request: object
    ) -> Job:
        """Pop a job and deliver `text` after `seconds`."""
        job = self.pop(**request)
        assert job is not None
        self.tick(seconds)
        job_submit(
            job_id=job.id, credentials=Credentials(api_user=self.owner), text=text, now=self.now
        )
        return job

    def give_back(self) -> None:
        job = self.pop()
        assert job is not None
        job_submit(
            job_id=job.id,
            credentials=Credentials(api_user=self.owner),
            text="",
            state="faulted",
            now=self.now,
        )
        Prompt.objects.filter(pk=job.prompt_id).update(waiting=0)  # not served again

    def let_time_out(self) -> None:
        job = self.pop()
        assert job is not None
        self.tick(job.ttl + 1)
        jobs_reap(now=self.now)
        Prompt.objects.filter(pk=job.prompt_id).update(waiting=0)  # not served again

    @property
    def server(self) -> Server:
        return Server.objects.select_related("owner").get(name=self.name)


def ask(
    text: str = "Once upon a time",
    *,
    user: User | None = None,
    max_length: int = 64,
    now: datetime | None = None,
    **options: object,
) -> Prompt:
    """Queue a prompt (the anonymous user's by default)."""
    request = GenerationRequest(
        text=text, n=1, max_length=max_length, max_context_length=1024, **options
    )
    return prompt_create(user=user or anonymous_user(), request=request, now=now)


def volunteer(name: str, model: str = "tiny-llm", *, trusted: bool = False) -> Volunteer:
    owner, _ = User.objects.get_or_create(username=f"owner-of-{name}")
    if owner.trusted != trusted:
        User.objects.filter(pk=owner.pk).update(trusted=trusted)
        owner.refresh_from_db()
    return Volunteer(owner=owner, name=name, model=model)

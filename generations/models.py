"""Prompts (what clients ask for) and jobs (one generation slot handed to one server)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class PromptQuerySet(models.QuerySet):
    def live(self, now: datetime | None = None) -> PromptQuerySet:
        """Prompts not yet expired. Expired ones are gone even before the purge runs."""
        return self.filter(expires_at__gt=now or timezone.now())

    def queued(self, now: datetime | None = None) -> PromptQuerySet:
        """Live prompts with slots waiting for a server."""
        return self.live(now).filter(state=Prompt.State.LIVE, waiting__gt=0)


class Prompt(models.Model):
    class State(models.TextChoices):
        LIVE = "live", "Live"
        CANCELLED = "cancelled", "Cancelled"
        FAULTED = "faulted", "Faulted"

    class Workers(models.TextChoices):
        """Which servers may take the prompt, given its PromptWorker rows."""

        ANY = "any", "Any server"
        ONLY = "only", "Only the listed servers"
        EXCEPT = "except", "Any but the listed servers"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="prompts")
    text = models.TextField()
    params = models.JSONField(default=dict, blank=True, help_text="Whitelisted KoboldAI params.")
    any_model = models.BooleanField(default=True)
    n = models.PositiveIntegerField()
    waiting = models.IntegerField(help_text="Slots not yet handed to a server.")
    max_length = models.PositiveIntegerField()
    max_context_length = models.PositiveIntegerField()
    sort_key = models.FloatField(help_text="Queue order, highest first (DESIGN §4.3).")
    state = models.CharField(max_length=16, choices=State.choices, default=State.LIVE)
    faulted_jobs = models.PositiveSmallIntegerField(default=0)
    client_agent = models.CharField(max_length=255, blank=True)
    # Without credentials: a keyed digest of the client's address block (generations/limits.py).
    client = models.CharField(max_length=32, blank=True, default="")
    # The same digest for every prompt sent from a public address block, credentials or not:
    # a server that serves a prompt from its own block earns nothing (generations/delivery.py).
    origin = models.CharField(max_length=32, blank=True, default="")
    # Which servers may serve it (the AI Horde's request options; the defaults match anyone).
    softprompt = models.CharField(
        max_length=255, blank=True, help_text="Only servers offering this soft prompt."
    )
    trusted_workers = models.BooleanField(default=False, help_text="Only trusted owners' servers.")
    slow_workers = models.BooleanField(default=True, help_text="Slow servers may serve it too.")
    workers = models.CharField(max_length=8, choices=Workers.choices, default=Workers.ANY)
    nsfw = models.BooleanField(default=True, help_text="Stored; text requests are not filtered.")
    batching = models.BooleanField(
        default=True, help_text="A server may take several of its slots in one pop."
    )
    created = models.DateTimeField(default=timezone.now)
    last_activity = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    # The client named no context (the OpenAI faces): each job gets its server's whole
    # context, and max_context_length is only the estimate that matches servers.
    whole_context = models.BooleanField(default=False, db_default=False)
    # KoboldCpp's name for a generation (`genkey`), scoped to its caller: the user, and for
    # callers without credentials also `client` (generations/frontend.py).
    genkey = models.CharField(max_length=100, blank=True, default="", db_default="")
    # The client's `Idempotency-Key` header: a retry of the create with the same key from
    # the same caller (user and client) gets this prompt instead of a new one (intake.py).
    idempotency_key = models.CharField(max_length=255, blank=True, default="", db_default="")
    # The job whose text the next server continues (generations/handover.py): its server
    # dropped out after producing text, which was kept and paid; None for a fresh start.
    continues = models.UUIDField(null=True, blank=True)
    # Last: from here on `models` in this class body is the field, not django.db.models.
    models = models.JSONField(default=list, blank=True, help_text="Acceptable models; [] = any.")

    objects = PromptQuerySet.as_manager()

    class Meta:
        indexes = [
            # The queue: what pop walks, in the order it walks it, and nothing else.
            models.Index(
                fields=["-sort_key", "created"],
                condition=Q(waiting__gt=0, state="live"),
                name="prompt_queue",
            ),
            # A user's own queue: the owner-first pass of pop, and the concurrency count.
            models.Index(
                fields=["user", "-sort_key"],
                condition=Q(waiting__gt=0, state="live"),
                name="prompt_user_queue",
            ),
            models.Index(fields=["expires_at"], name="prompt_expiry"),
            # What one client without credentials has queued (generations/limits.py).
            models.Index(
                fields=["client"],
                condition=Q(waiting__gt=0, state="live") & ~Q(client=""),
                name="prompt_client_queue",
            ),
            # KoboldCpp's check and abort find a caller's generation by its genkey.
            models.Index(fields=["user", "genkey"], condition=~Q(genkey=""), name="prompt_genkey"),
        ]
        constraints = [
            # Two retries at once cannot both queue: the second INSERT fails and finds the first.
            models.UniqueConstraint(
                fields=["user", "client", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="prompt_idempotency_once",
            ),
        ]

    def __str__(self) -> str:
        return str(self.id)

    def model_for(self, server_models: list[str]) -> str:
        """The model a job of this prompt runs on a server serving `server_models`."""
        if not self.any_model:
            for name in server_models:
                if name in self.models:
                    return name
        return server_models[0] if server_models else ""


class PromptModel(models.Model):
    """One acceptable model of a prompt, as a row so pop can match it with an index."""

    prompt = models.ForeignKey(Prompt, models.CASCADE, related_name="model_names")
    name = models.CharField(max_length=255)

    class Meta:
        indexes = [models.Index(fields=["name", "prompt"], name="prompt_model_name")]

    def __str__(self) -> str:
        return self.name


class PromptWorker(models.Model):
    """A server a prompt names in its allow or deny list (`Prompt.workers`)."""

    prompt = models.ForeignKey(Prompt, models.CASCADE, related_name="server_list")
    server = models.ForeignKey("servers.Server", models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "prompt"], name="prompt_worker_once")
        ]

    def __str__(self) -> str:
        return f"{self.prompt_id} {self.server_id}"


class Job(models.Model):
    class State(models.TextChoices):
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        FAULTED = "faulted", "Faulted"
        ABANDONED = "abandoned", "Abandoned"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    prompt = models.ForeignKey(Prompt, models.CASCADE, related_name="jobs")
    server = models.ForeignKey(
        "servers.Server", models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    model = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROCESSING)
    started = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField()
    finished = models.DateTimeField(null=True, blank=True)
    text = models.TextField(blank=True)
    tokens = models.PositiveIntegerField(default=0)
    # The prompt as the server's backend counted it, after cutting what did not fit its
    # context (`prompt_trimmed` tokens from the front); None when the bridge did not say.
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    prompt_trimmed = models.PositiveIntegerField(default=0, db_default=0)
    seed = models.BigIntegerField(null=True, blank=True)
    censored = models.BooleanField(default=False, help_text="The server censored the text.")
    gen_metadata = models.JSONField(
        default=list, blank=True, help_text="What the server reported about the generation."
    )
    # The requester's rating (generations/ratings.py); deleted with the prompt, like the text.
    rating = models.CharField(max_length=4, blank=True, default="", db_default="")
    rating_reason = models.CharField(max_length=500, blank=True, default="", db_default="")
    # A continuation (generations/handover.py): `text` begins with the text of earlier
    # servers of the prompt, worth this many tokens (paid to them); `tokens` is this job's
    # own part. The whole generation is worth carried_tokens + tokens.
    carried_tokens = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        indexes = [
            models.Index(
                fields=["deadline"], condition=Q(state="processing"), name="job_processing_deadline"
            ),
        ]

    def __str__(self) -> str:
        return str(self.id)

    @property
    def ttl(self) -> int:
        """Seconds the server was given for this job."""
        return int((self.deadline - self.started).total_seconds())

    def payload(self) -> dict:
        """What the server posts to KoboldAI's /api/latest/generate for this job.

        A prompt that named no context gets the server's whole context: the cluster's estimate
        of its size only chose the server, and a backend cuts a prompt to the context it is
        sent (a dense prompt estimated short would lose most of its text)."""
        prompt = self.prompt
        context = prompt.max_context_length
        if prompt.whole_context:
            context = max(context, self.server.max_context_length)
        return {
            "prompt": prompt.text + self.text,  # a continuation: what earlier servers wrote
            **prompt.params,
            "n": 1,
            "max_length": self.remaining_length,
            "max_context_length": context,
        }

    @property
    def remaining_length(self) -> int:
        """The tokens this job may still generate: the prompt's max_length less the carried
        text's tokens (the cluster's count, generations/handover.py), at least 1."""
        return max(self.prompt.max_length - self.carried_tokens, 1)

    @property
    def whole_tokens(self) -> int:
        """Tokens of the whole generation: the carried text's and this job's own."""
        return self.carried_tokens + self.tokens


def prompt_lifetime() -> timedelta:
    """How long a prompt lives after its last activity (PROMPT_EXPIRY_SECONDS)."""
    return timedelta(seconds=settings.KOBOLDCLUSTER["PROMPT_EXPIRY_SECONDS"])


def count_tokens(text: str, max_length: int) -> int:
    """Tokens a generation is worth: ceil(len/4), at least 1 for any text, at most max_length."""
    return min(_unbounded_count(text), max_length)


class ChatTemplateOverride(models.Model):
    """An administrator's rule: model names matching `pattern` use `template` (chat.py).

    Tried before the catalogue's own patterns (generations/catalogue.json), in `position`
    order, so a new model family can get the right template without a release.
    """

    pattern = models.CharField(
        max_length=255,
        help_text="A regular expression searched in the model's family name (lower case, "
        "without backend prefix or quantisation suffix), e.g. 'nemo|cydonia'.",
    )
    template = models.CharField(
        max_length=32, help_text="chatml, llama3, mistral, alpaca or gemma (catalogue.json)."
    )
    position = models.PositiveIntegerField(default=0, help_text="Lower is tried first.")
    note = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"{self.pattern} → {self.template}"

    def clean(self) -> None:
        from generations.chat import check_override

        check_override(self.pattern, self.template)


def reward_tokens_sql(text: str, reported: int | None, max_length_sql: str) -> tuple[str, list]:
    """`reward_tokens` as an SQLite expression, for a statement that reads max_length itself
    (`max_length_sql`, e.g. a subquery; `{}` in it is replaced by the column name)."""
    limit = max_length_sql.format("max_length")
    counted = _unbounded_count(text)
    plausible = f"%s IS NOT NULL AND %s >= %s AND %s <= MIN(%s, {limit})"
    sql = f"CASE WHEN {plausible} THEN %s ELSE MIN(%s, {limit}) END"
    low = math.ceil(len(text) / 8)
    return sql, [reported, reported, low, reported, len(text), reported, counted]


def _unbounded_count(text: str) -> int:
    return max(math.ceil(len(text) / 4), 1) if text else 0


def reward_tokens(text: str, max_length: int, reported: int | None) -> tuple[int, str | None]:
    """Tokens to pay for a generation, and why a server's own count was not used (or None).

    A bridge may report the count its backend measured (`token_count`). It is trusted when
    plausible: no token is longer than 8 characters or shorter than 1 in practice, and a job
    never yields more than its max_length. Otherwise the cluster's own count applies.
    """
    counted = count_tokens(text, max_length)
    if reported is None:
        return counted, None
    low, high = math.ceil(len(text) / 8), min(len(text), max_length)
    if low <= reported <= high:
        return reported, None
    return counted, f"reported {reported} is outside {low}..{high} for {len(text)} characters"

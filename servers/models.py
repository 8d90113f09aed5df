"""A server: one KoboldAI instance and its bridge, working for its owner's account."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class ServerQuerySet(models.QuerySet):
    def active(self, now: datetime | None = None) -> ServerQuerySet:
        """Servers that checked in recently; stale ones are hidden and not counted."""
        now = now or timezone.now()
        stale = timedelta(seconds=settings.KOBOLDCLUSTER["SERVER_STALE_SECONDS"])
        return self.filter(last_check_in__gte=now - stale)


class Server(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="servers")
    max_length = models.PositiveIntegerField(default=80)
    max_context_length = models.PositiveIntegerField(default=1024)
    bridge_agent = models.CharField(max_length=1000, blank=True)
    threads = models.PositiveSmallIntegerField(default=1)
    created = models.DateTimeField(default=timezone.now)
    last_check_in = models.DateTimeField(default=timezone.now, db_index=True)
    maintenance = models.BooleanField(default=False)
    maintenance_msg = models.CharField(max_length=1000, blank=True)
    paused = models.BooleanField(default=False)
    info = models.CharField(max_length=1000, blank=True)
    nsfw = models.BooleanField(default=True, help_text="Declared by the server; stored.")
    uptime = models.BigIntegerField(
        default=0, help_text="Seconds checked in and working (not paused or in maintenance)."
    )
    speed = models.FloatField(default=0.0, help_text="Tokens per second, moving average.")
    tokens_generated = models.BigIntegerField(default=0)
    requests_fulfilled = models.BigIntegerField(default=0)
    uncompleted_jobs = models.BigIntegerField(default=0)
    # Why it was paused (a rule of servers/suspicion.py, or a moderator), and when.
    paused_reason = models.CharField(max_length=300, blank=True, default="", db_default="")
    paused_at = models.DateTimeField(null=True, blank=True)
    # Its record (servers/records.py): counters that decay by 1 − 1/window at each event, so
    # each weighs about the last window's events. Never any text.
    rec_jobs = models.FloatField(default=0.0, db_default=0.0, help_text="Jobs ended.")
    rec_empty = models.FloatField(default=0.0, db_default=0.0, help_text="Empty results.")
    rec_repeated = models.FloatField(
        default=0.0, db_default=0.0, help_text="Results repeated for another prompt."
    )
    rec_too_fast = models.FloatField(
        default=0.0, db_default=0.0, help_text="Jobs faster than its model's size allows."
    )
    rec_failed = models.FloatField(default=0.0, db_default=0.0, help_text="Jobs it gave back.")
    rec_abandoned = models.FloatField(
        default=0.0, db_default=0.0, help_text="Jobs it let time out."
    )
    rec_good = models.FloatField(default=0.0, db_default=0.0, help_text="Good ratings.")
    rec_bad = models.FloatField(default=0.0, db_default=0.0, help_text="Bad ratings.")
    rec_canary_agreed = models.FloatField(default=0.0, db_default=0.0)
    rec_canary_disagreed = models.FloatField(default=0.0, db_default=0.0)
    # Digests of its latest results ("rrrrrrrr.pppp," each: result, prompt), a bounded list.
    recent_results = models.CharField(max_length=512, blank=True, default="", db_default="")
    # Last: from here on `models` in this class body is the field, not django.db.models.
    softprompts = models.JSONField(default=list, blank=True, help_text="Its soft prompts.")
    models = models.JSONField(default=list, blank=True, help_text="The models it serves.")

    objects = ServerQuerySet.as_manager()

    # Weight of the newest job in the moving average of speed.
    SPEED_SMOOTHING = 0.2

    def __str__(self) -> str:
        return self.name

    @property
    def model(self) -> str:
        """The original API's single model: the first the server declared."""
        return self.models[0] if self.models else ""

    def is_active(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        stale = timedelta(seconds=settings.KOBOLDCLUSTER["SERVER_STALE_SECONDS"])
        return self.last_check_in >= now - stale

    def latest_performance(self) -> str:
        """Real seconds per token, as the original API reports it."""
        if not self.requests_fulfilled or self.speed <= 0:
            return "No requests fulfilled yet"
        seconds = 1 / self.speed
        # Two decimals as the original did, but never "0.00" for a server faster than 200 t/s.
        return (
            f"{seconds:.2f} seconds per token"
            if seconds >= 0.1
            else f"{seconds:.2g} seconds per token"
        )

    def job_ttl(self, max_length: int) -> int:
        """Seconds this server gets for a job: twice its expected time, within the limits."""
        limits = settings.KOBOLDCLUSTER
        floor, ceiling = limits["JOB_TTL_FLOOR_SECONDS"], limits["JOB_TTL_MAX_SECONDS"]
        if self.speed <= 0:
            return floor
        return int(min(max(floor, 2 * max_length / self.speed), max(ceiling, floor)))


class CanaryRound(models.Model):
    """One canary prompt sent to several servers advertising one model (servers/canaries.py
    starts and compares them; kept a day for the record, then deleted). No text: the
    prompt is the corpus' `prompt_index`, the answers are read from the jobs before they
    are purged."""

    model = models.CharField(max_length=255)
    prompt_index = models.PositiveSmallIntegerField()
    created = models.DateTimeField(default=timezone.now, db_index=True)
    compared = models.DateTimeField(null=True, blank=True)
    answered = models.PositiveSmallIntegerField(default=0)
    majority = models.PositiveSmallIntegerField(default=0, help_text="Answers like the most.")

    def __str__(self) -> str:
        return f"canary {self.pk} of {self.model}"


class CanaryJob(models.Model):
    """A canary round's prompt for one server."""

    round = models.ForeignKey(CanaryRound, models.CASCADE, related_name="jobs")
    server = models.ForeignKey(Server, models.CASCADE, related_name="+")
    prompt_id = models.UUIDField(help_text="The queued prompt (a value: it is purged).")
    agreed = models.BooleanField(null=True, help_text="Its answer was the majority's.")

    def __str__(self) -> str:
        return f"{self.round_id} {self.server_id}"

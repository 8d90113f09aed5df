"""Users and the token ledger.

The ledger is append-only: every accepted generation appends a usage entry for the requester
and a contribution entry for the server's owner, in the transaction that accepts it. Nothing on
a hot path updates a shared aggregate row; `Balance` holds totals folded by a scheduled task,
and readers add the entries the fold has not reached yet (`accounts.selectors`).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    class Kind(models.TextChoices):
        ANONYMOUS = "anonymous", "Anonymous"
        # A name that arrived through the original API's `username` field, without credentials.
        UNCLAIMED = "unclaimed", "Unclaimed name"
        # An account with credentials: a password (set by a server's first pop) or API keys.
        REGISTERED = "registered", "Registered"

    ANONYMOUS_ID = 0
    ANONYMOUS_USERNAME = "Anonymous"

    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.REGISTERED)
    trusted = models.BooleanField(default=False)
    moderator = models.BooleanField(default=False)
    # Trust and quality (servers/suspicion.py, servers/trust.py): how often its servers were
    # paused by the cluster's rules, the last time, and whether that made it flagged.
    flagged = models.BooleanField(
        default=False, db_default=False, help_text="Its servers were paused repeatedly."
    )
    pauses = models.PositiveIntegerField(default=0, db_default=0)
    last_paused_at = models.DateTimeField(null=True, blank=True)
    concurrency = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The most waiting generation slots this user may have queued. Empty: the "
        "default for anonymous, trusted or other users (KOBOLDCLUSTER_CONCURRENCY…).",
    )

    objects = UserManager()

    def __str__(self) -> str:
        return self.username

    @property
    def is_anonymous_user(self) -> bool:
        return self.kind == self.Kind.ANONYMOUS

    @property
    def horde_name(self) -> str:
        """The AI Horde's display form, `alias#id`."""
        return f"{self.username}#{self.pk}"

    @property
    def has_credentials(self) -> bool:
        return self.kind == self.Kind.REGISTERED

    def concurrency_limit(self) -> int:
        """The most waiting slots this user may have: their own setting, or their kind's."""
        if self.concurrency is not None:
            return self.concurrency
        limits = settings.KOBOLDCLUSTER
        if self.is_anonymous_user:
            return limits["CONCURRENCY_ANONYMOUS"]
        return limits["CONCURRENCY_TRUSTED"] if self.trusted else limits["CONCURRENCY"]


class ApiKey(models.Model):
    """A key that identifies its user in the `apikey` header.

    Only the SHA-256 digest is stored; the key itself is shown once, when it is issued. A key
    has 128 random bits, so an unsalted digest cannot be reversed by guessing.
    """

    # The AI Horde's shared anonymous key: it names the anonymous user and is never stored.
    ANONYMOUS_KEY = "0000000000"

    user = models.ForeignKey(User, models.CASCADE, related_name="api_keys")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    name = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(
        null=True, blank=True, help_text="Written about once a minute."
    )
    revoked_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was revoked; a revoked key identifies nobody."
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name or 'key'} #{self.pk} of {self.user_id}"

    @staticmethod
    def digest_of(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class LedgerEntry(models.Model):
    """One movement of tokens. Never updated, never deleted: corrections are new entries."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        CONTRIBUTION = "contribution", "Contribution"
        ADJUSTMENT = "adjustment", "Adjustment"

    id = models.BigAutoField(primary_key=True)
    created = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(User, models.PROTECT, related_name="ledger_entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    tokens = models.BigIntegerField(default=0, help_text="Tokens generated or consumed (≥ 0).")
    kudos = models.BigIntegerField(
        default=0, help_text="Signed change of the user's balance: + earned, − spent."
    )
    # Plain values, not foreign keys: purging a prompt's text must never touch the ledger.
    server_id = models.UUIDField(null=True, blank=True)
    job_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=255, blank=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            # A job pays once: a retried or racing submit cannot append a second pair.
            models.UniqueConstraint(fields=["job_id", "kind"], name="ledger_one_entry_per_job_kind")
        ]
        indexes = [models.Index(fields=["user", "id"], name="ledger_user_id")]

    def __str__(self) -> str:
        return f"{self.kind} {self.tokens} tokens for {self.user_id}"


class Balance(models.Model):
    """A user's ledger totals up to `LedgerFold.last_entry_id`, written only by the fold."""

    user = models.OneToOneField(User, models.CASCADE, primary_key=True, related_name="balance")
    tokens_used = models.BigIntegerField(default=0)
    tokens_contributed = models.BigIntegerField(default=0)
    kudos = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0, help_text="Generations received.")
    fulfilments = models.BigIntegerField(default=0, help_text="Generations delivered.")

    def __str__(self) -> str:
        return f"balance of {self.user_id}"


class LedgerFold(models.Model):
    """The single row that says how far the fold has got."""

    last_entry_id = models.BigIntegerField(default=0)
    folded_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"folded up to entry {self.last_entry_id}"

"""Users and the token ledger.

The ledger is append-only: every accepted generation appends a usage entry for the requester
and a contribution entry for the server's owner, in the transaction that accepts it. Nothing on
a hot path updates a shared aggregate row; `Balance` holds totals folded by a scheduled task,
and readers add the entries the fold has not reached yet (`accounts.selectors`).
"""

from __future__ import annotations

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
    concurrency = models.PositiveIntegerField(
        default=30, help_text="The most waiting generation slots this user may have queued."
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

"""The servers in the admin: what each serves, how much and how fast it worked, its faults."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from servers.models import Server
from servers.records import CANARY_COUNTERS, JOB_COUNTERS, RATING_COUNTERS
from servers.suspicion import server_pause, server_unpause, suspicion_of


@admin.register(Server)
class ServerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "owner",
        "served_models",
        "last_check_in",
        "tokens_generated",
        "jobs_fulfilled",
        "faults",
        "tokens_per_second",
        "maintenance",
        "paused",
        "paused_reason",
    )
    list_filter = ("maintenance", "paused", "owner__trusted", "owner__flagged")
    # Pausing and clearing go through the actions: they keep the reason and the record right.
    list_editable = ("maintenance",)
    search_fields = ("name", "owner__username")
    raw_id_fields = ("owner",)
    list_select_related = ("owner",)
    exclude = ("speed",)  # shown with its unit by tokens_per_second
    readonly_fields = (
        "id",
        "created",
        "tokens_generated",
        "requests_fulfilled",
        "uncompleted_jobs",
        "tokens_per_second",
        "uptime",
        "paused",
        "paused_reason",
        "paused_at",
        "record",
        "recent_results",
        *(c for c in (*JOB_COUNTERS, *RATING_COUNTERS, *CANARY_COUNTERS)),
    )
    actions = ["start_maintenance", "end_maintenance", "pause", "unpause"]

    # A plain "model" here would name ModelAdmin.model (the Server class), not the server's.
    @admin.display(description="models")
    def served_models(self, server: Server) -> str:
        return ", ".join(server.models) or "—"

    @admin.display(description="jobs fulfilled", ordering="requests_fulfilled")
    def jobs_fulfilled(self, server: Server) -> int:
        return server.requests_fulfilled

    @admin.display(description="faults", ordering="uncompleted_jobs")
    def faults(self, server: Server) -> int:
        """Jobs it took and did not deliver (given back, or timed out)."""
        return server.uncompleted_jobs

    @admin.display(description="speed", ordering="speed")
    def tokens_per_second(self, server: Server) -> str:
        return f"{server.speed:.1f} tokens/s" if server.speed > 0 else "—"

    @admin.action(description="Put the selected servers in maintenance")
    def start_maintenance(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self.message_user(request, f"{queryset.update(maintenance=True)} servers in maintenance.")

    @admin.action(description="Take the selected servers out of maintenance")
    def end_maintenance(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self.message_user(request, f"{queryset.update(maintenance=False)} servers back at work.")

    @admin.display(description="record")
    def record(self, server: Server) -> str:
        """Its standing as the suspicion rules read it (servers/suspicion.py)."""
        found = suspicion_of(server)
        jobs = f"about {server.rec_jobs:.0f} recent jobs"
        return f"{jobs}; trips: {found[1]}" if found else f"{jobs}; no rule tripped"

    @admin.action(description="Pause the selected servers (they get only their owner's requests)")
    def pause(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        paused = sum(
            server_pause(server=server, reason="paused by an administrator") for server in queryset
        )
        self.message_user(request, f"{paused} servers paused.")

    @admin.action(description="Clear the pause of the selected servers (with a fresh record)")
    def unpause(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        cleared = sum(server_unpause(server_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"{cleared} servers unpaused.")

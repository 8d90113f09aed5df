"""The servers in the admin: what each serves, how much and how fast it worked, its faults."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from servers.models import Server


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
    )
    list_filter = ("maintenance", "paused")
    list_editable = ("maintenance", "paused")
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

    @admin.action(description="Pause the selected servers (they get only their owner's requests)")
    def pause(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self.message_user(request, f"{queryset.update(paused=True)} servers paused.")

    @admin.action(description="Unpause the selected servers")
    def unpause(self, request: HttpRequest, queryset: QuerySet[Server]) -> None:
        self.message_user(request, f"{queryset.update(paused=False)} servers unpaused.")

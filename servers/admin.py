from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from servers.models import Server


@admin.register(Server)
class ServerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "owner",
        "model",
        "last_check_in",
        "tokens_generated",
        "requests_fulfilled",
        "speed",
        "maintenance",
        "paused",
    )
    list_filter = ("maintenance", "paused")
    list_editable = ("maintenance", "paused")
    search_fields = ("name", "owner__username")
    raw_id_fields = ("owner",)
    list_select_related = ("owner",)
    readonly_fields = (
        "id",
        "created",
        "tokens_generated",
        "requests_fulfilled",
        "speed",
        "uptime",
    )
    actions = ["start_maintenance", "end_maintenance", "pause", "unpause"]

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

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.http import HttpRequest

from accounts.models import Balance, LedgerEntry, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "id", "kind", "trusted", "moderator", "concurrency", "date_joined")
    list_filter = ("kind", "trusted", "moderator", "is_staff")
    fieldsets = (
        *DjangoUserAdmin.fieldsets,
        ("Cluster", {"fields": ("kind", "trusted", "moderator", "concurrency")}),
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger is append-only: corrections are new adjustment entries, made by services."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "created", "user", "kind", "tokens", "kudos", "model")
    list_filter = ("kind",)
    search_fields = ("user__username", "=job_id", "=server_id")
    raw_id_fields = ("user",)
    list_select_related = ("user",)


@admin.register(Balance)
class BalanceAdmin(ReadOnlyAdmin):
    list_display = ("user", "kudos", "tokens_used", "tokens_contributed", "requests", "fulfilments")
    search_fields = ("user__username",)
    list_select_related = ("user",)

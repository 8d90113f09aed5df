from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.keys import apikeys_revoke
from accounts.models import ApiKey, Balance, LedgerEntry, User


class ApiKeyInline(admin.TabularInline):
    """A user's keys: names and use only, since the keys themselves are never stored."""

    model = ApiKey
    fields = ("name", "created", "last_used", "revoked_at")
    readonly_fields = ("created", "last_used", "revoked_at")
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # keys are shown once: issue them with `manage.py createapikey`


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = (
        "username",
        "id",
        "kind",
        "trusted",
        "flagged",
        "pauses",
        "moderator",
        "concurrency",
        "date_joined",
    )
    list_editable = ("trusted", "concurrency")
    list_filter = ("kind", "trusted", "flagged", "moderator", "is_staff")
    fieldsets = (
        *DjangoUserAdmin.fieldsets,
        (
            "Cluster",
            {
                "fields": (
                    "kind",
                    "trusted",
                    "moderator",
                    "concurrency",
                    "flagged",
                    "pauses",
                    "last_paused_at",
                )
            },
        ),
    )
    readonly_fields = ("pauses", "last_paused_at")
    inlines = [ApiKeyInline]
    actions = [
        "mark_trusted",
        "mark_untrusted",
        "clear_flag",
        "default_concurrency",
        "revoke_keys",
    ]

    @admin.action(description="Clear the flag of the selected users (and their pause count)")
    def clear_flag(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        cleared = queryset.update(flagged=False, pauses=0)
        self.message_user(request, f"{cleared} users no longer flagged.")

    @admin.action(description="Mark the selected users trusted")
    def mark_trusted(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self.message_user(request, f"{queryset.update(trusted=True)} users trusted.")

    @admin.action(description="Take the trust from the selected users")
    def mark_untrusted(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self.message_user(request, f"{queryset.update(trusted=False)} users no longer trusted.")

    @admin.action(description="Reset the selected users' concurrency to the default")
    def default_concurrency(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self.message_user(request, f"{queryset.update(concurrency=None)} users on the default.")

    @admin.action(description="Revoke every API key of the selected users")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        keys = ApiKey.objects.filter(user__in=queryset).values_list("pk", flat=True)
        self.message_user(request, f"{apikeys_revoke(key_ids=keys)} API keys revoked.")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "name", "created", "last_used", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name")
    raw_id_fields = ("user",)
    list_select_related = ("user",)
    fields = ("user", "name", "created", "last_used", "revoked_at")
    readonly_fields = ("user", "created", "last_used", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are shown once: issue them with `manage.py createapikey`

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = apikeys_revoke(key_ids=queryset.values_list("pk", flat=True))
        self.message_user(request, f"{revoked} API keys revoked.")


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

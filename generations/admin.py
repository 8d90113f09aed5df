"""Prompts and jobs for operators. List views never show prompt or generated text."""

from django.contrib import admin
from django.http import HttpRequest

from generations.models import ChatTemplateOverride, Job, Prompt


class JobInline(admin.TabularInline):
    model = Job
    fields = ("id", "server", "model", "state", "started", "deadline", "finished", "tokens")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "n", "waiting", "state", "max_length", "created", "expires_at")
    list_filter = ("state",)
    search_fields = ("=id", "user__username")
    raw_id_fields = ("user",)
    list_select_related = ("user",)
    readonly_fields = ("id", "created", "last_activity", "sort_key")
    inlines = [JobInline]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt_id", "server", "model", "state", "started", "tokens", "rating")
    list_filter = ("state", "rating")
    search_fields = ("=id", "=prompt__id", "server__name")
    raw_id_fields = ("prompt", "server")
    list_select_related = ("server",)
    readonly_fields = ("id", "started", "finished")


@admin.register(ChatTemplateOverride)
class ChatTemplateOverrideAdmin(admin.ModelAdmin):
    """Which chat template a model family gets, before the catalogue's own rules."""

    list_display = ("pattern", "template", "position", "note")
    list_editable = ("template", "position")
    ordering = ("position", "id")

from django.contrib import admin

from ingestion.models import Source


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    # `safe_url`, never `url`: the list must not show database passwords.
    list_display = ("code", "name", "safe_url", "table_name", "enabled", "poll_interval_seconds", "updated_at")
    list_filter = ("enabled",)
    list_editable = ("enabled",)
    search_fields = ("code", "name")
    readonly_fields = ("created_at", "updated_at")

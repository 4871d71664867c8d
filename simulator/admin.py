from django.contrib import admin

from simulator.models import Injection, SimulatorControl


@admin.register(SimulatorControl)
class SimulatorControlAdmin(admin.ModelAdmin):
    list_display = ("rows_per_second", "paused", "updated_at")


@admin.register(Injection)
class InjectionAdmin(admin.ModelAdmin):
    # The log is evidence for tests and operators: read it, never edit it.
    list_display = ("created_at", "source_code", "kind")
    list_filter = ("kind", "source_code")
    readonly_fields = ("source_code", "kind", "details", "created_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

from django import forms
from django.contrib import admin
from django.utils import timezone

from ingestion.models import DuplicateStudent, QuarantinedRow, Source, SourceState, Student
from ingestion.selectors import source_lag
from ingestion.source_urls import SourceUrlError, url_with_kept_password


class ReadOnlyAdmin(admin.ModelAdmin):
    """What ingestion wrote is evidence: staff may look, not edit (fix the source instead, and it reloads)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class SourceStateInline(admin.StackedInline):
    model = SourceState
    can_delete = False
    readonly_fields = [field.name for field in SourceState._meta.fields if field.name != "source"]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


class SourceAdminForm(forms.ModelForm):
    """The URL field never holds the password: it shows the URL with *** instead, and *** saved back keeps the stored
    password (for the same user on the same server only)."""

    class Meta:
        model = Source
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["url"] = self.instance.safe_url
            self.fields["url"].help_text = (
                "SQLAlchemy URL of the source database. The password shows as ***: leave it to keep the stored one, "
                "or type the whole URL with its password.")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if not self.instance.pk:
            return url
        try:
            return url_with_kept_password(url, Source.objects.get(pk=self.instance.pk).url)
        except SourceUrlError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    form = SourceAdminForm
    # `safe_url`, never `url`: the list must not show database passwords.
    list_display = ("code", "name", "safe_url", "enabled", "poll_interval_seconds", "rows_loaded", "lag", "idle",
                    "quarantined", "last_error")
    list_filter = ("enabled",)
    list_editable = ("enabled",)
    search_fields = ("code", "name")
    readonly_fields = ("created_at", "updated_at")
    inlines = [SourceStateInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("state")

    @staticmethod
    def _state(source):
        return getattr(source, "state", None)

    @admin.display(description="rows loaded")
    def rows_loaded(self, source):
        state = self._state(source)
        return state.rows_loaded if state else 0

    @admin.display(description="lag (s)")
    def lag(self, source):
        state = self._state(source)
        return "-" if not state else f"{source_lag(state, timezone.now())['lag_seconds']:.1f}"

    @admin.display(description="idle (s)")
    def idle(self, source):
        state = self._state(source)
        idle = source_lag(state, timezone.now())["idle_seconds"] if state else None
        return "-" if idle is None else f"{idle:.1f}"

    @admin.display(description="quarantined")
    def quarantined(self, source):
        state = self._state(source)
        return state.quarantined_count if state else 0

    @admin.display(description="last error")
    def last_error(self, source):
        state = self._state(source)
        return (state.last_error[:80] if state and state.last_error else "")


@admin.register(QuarantinedRow)
class QuarantinedRowAdmin(ReadOnlyAdmin):
    list_display = ("source", "source_row_id", "cntstuid", "reasons", "first_seen_at", "last_seen_at")
    list_filter = ("source",)
    search_fields = ("cntstuid", "source_row_id")


@admin.register(DuplicateStudent)
class DuplicateStudentAdmin(ReadOnlyAdmin):
    list_display = ("source", "cntstuid", "kept_row_id", "superseded_row_id", "detected_at")
    list_filter = ("source",)
    search_fields = ("cntstuid",)


@admin.register(Student)
class StudentAdmin(ReadOnlyAdmin):
    list_display = ("country", "cntstuid", "cntschid", "source_row_id", "source_created_at", "escs", "w_fstuwt")
    list_filter = ("country",)
    search_fields = ("cntstuid",)
    show_full_result_count = False  # a full COUNT(*) of the warehouse on every page is not worth it
    exclude = ("raw",)

"""Admin for staff who correct and translate labels. Only labels are editable: the structure of the codebook (names,
formats, codes, missing values) belongs to the imported file. Every edit goes through the services, which record it
and make it visible in the API and dashboard within seconds."""

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from codebook.models import LabelEdit, ValueLabel, Variable
from codebook.services import value_label_edit, variable_label_edit


class ValueLabelFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        # A form beyond the codebook's own codes (posted by hand: the page offers no "add another").
        if any("label" in form.changed_data for form in self.extra_forms):
            raise ValidationError("A value label cannot be added here: codes come from the codebook file "
                                  "(`manage.py load_codebook`). Edit the labels of the codes listed.")


class ValueLabelInline(admin.TabularInline):
    model = ValueLabel
    formset = ValueLabelFormSet
    fields = ["value", "label", "is_missing", "label_edited", "imported_label"]
    readonly_fields = ["value", "is_missing", "label_edited", "imported_label"]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False  # codes come from the codebook file


@admin.register(Variable)
class VariableAdmin(admin.ModelAdmin):
    list_display = ["name", "label", "section", "kind", "format_spss", "label_edited"]
    list_filter = ["section", "kind", "label_edited"]
    search_fields = ["name", "label"]
    list_per_page = 50
    fields = ["name", "label", "label_edited", "imported_label", "section", "kind", "format_spss", "na_values",
              "na_range_low", "na_range_high", "position", "updated_at"]
    readonly_fields = [name for name in fields if name != "label"]
    inlines = [ValueLabelInline]

    def has_add_permission(self, request):
        return False  # variables come from the codebook file (`manage.py load_codebook`)

    def has_delete_permission(self, request, obj=None):
        return False  # ingested data refers to them

    def save_model(self, request, obj, form, change):
        if "label" in form.changed_data:
            variable_label_edit(variable=obj, label=form.cleaned_data["label"], user=request.user)

    def save_formset(self, request, form, formset, change):
        changed = []
        for inline_form in formset.initial_forms:
            if "label" in inline_form.changed_data:
                edit = value_label_edit(value_label=inline_form.instance, label=inline_form.cleaned_data["label"],
                                        user=request.user)
                if edit is not None:
                    changed.append((inline_form.instance, ["label"]))
        # What the admin's change message reads, as formset.save() would have set it.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], changed, []


@admin.register(LabelEdit)
class LabelEditAdmin(admin.ModelAdmin):
    """The history of label edits: read-only for everyone."""

    list_display = ["edited_at", "edited_by", "variable", "value", "old_label", "new_label"]
    list_filter = ["edited_at", "edited_by"]
    search_fields = ["variable__name", "old_label", "new_label"]
    list_select_related = ["variable", "edited_by"]
    date_hierarchy = "edited_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

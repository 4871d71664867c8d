"""The codebook in the warehouse: every PISA variable, its value labels, and the history of staff edits to labels."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Deferrable, Q

from codebook.catalogue import Kind, Section


class Variable(models.Model):
    """One PISA variable (a column of the responses table), as the codebook file describes it."""

    name = models.CharField(max_length=32, unique=True, help_text="PISA variable name, e.g. ST004D01T.")
    # File order: the order of the responses table's columns and of every listing.
    position = models.PositiveIntegerField()
    label = models.CharField(max_length=255, help_text="What the variable measures, as shown to users.")
    imported_label = models.CharField(max_length=255, editable=False,
                                      help_text="The label as the last imported codebook file gave it.")
    label_edited = models.BooleanField(default=False, help_text="Staff changed the label; a re-import keeps it.")
    section = models.CharField(max_length=32, choices=Section.CHOICES, db_index=True)
    kind = models.CharField(max_length=32, choices=Kind.CHOICES, db_index=True)
    format_spss = models.CharField("SPSS format", max_length=16, help_text="e.g. F1.0 (numeric) or A3 (text).")
    na_values = models.JSONField("missing codes", default=list, blank=True,
                                 help_text="Discrete user-missing codes, e.g. [9].")
    na_range_low = models.FloatField("missing range from", null=True, blank=True)
    na_range_high = models.FloatField("missing range to", null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            # Deferred so that an import can reorder variables in one bulk update (positions swap mid-statement).
            models.UniqueConstraint(fields=["position"], name="codebook_variable_unique_position",
                                    deferrable=Deferrable.DEFERRED),
            models.CheckConstraint(
                condition=(Q(na_range_low__isnull=True, na_range_high__isnull=True)
                           | Q(na_range_low__isnull=False, na_range_high__isnull=False,
                               na_range_low__lte=models.F("na_range_high"))),
                name="codebook_variable_missing_range_is_ordered_pair",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def na_range(self) -> tuple[float, float] | None:
        if self.na_range_low is None:
            return None
        return (self.na_range_low, self.na_range_high)

    @property
    def is_text(self) -> bool:
        return self.format_spss.startswith("A")


class ValueLabel(models.Model):
    """What one stored code of a variable means (1 = Female), and whether the code means "missing"."""

    variable = models.ForeignKey(Variable, on_delete=models.CASCADE, related_name="value_labels")
    # The code as text, canonical: "1" for 1.0, "99999997", "0.5", or a text code such as "FRA".
    value = models.CharField(max_length=64)
    # The same code as a number for numeric variables (null for text ones): orders 2 before 10.
    numeric_value = models.FloatField(null=True, blank=True, editable=False)
    label = models.CharField(max_length=255)
    imported_label = models.CharField(max_length=255, editable=False)
    label_edited = models.BooleanField(default=False, help_text="Staff changed the label; a re-import keeps it.")
    is_missing = models.BooleanField("missing code", default=False,
                                     help_text="The code is one of the variable's user-missing codes.")

    class Meta:
        ordering = ["variable", "numeric_value", "value"]
        constraints = [
            models.UniqueConstraint(fields=["variable", "value"], name="codebook_value_label_unique_value"),
        ]

    def __str__(self) -> str:
        return f"{self.variable_id}={self.value}: {self.label}"


class LabelEdit(models.Model):
    """One change of a label by a member of staff: who, when, what it was and what it became."""

    variable = models.ForeignKey(Variable, on_delete=models.CASCADE, related_name="label_edits")
    # Null when the edit is of the variable's own label rather than of one of its value labels.
    value_label = models.ForeignKey(ValueLabel, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="edits")
    value = models.CharField(max_length=64, blank=True, help_text="The code whose label changed; empty for the "
                                                                  "variable's own label.")
    old_label = models.CharField(max_length=255)
    new_label = models.CharField(max_length=255)
    edited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                  related_name="codebook_label_edits")
    edited_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-edited_at", "-id"]

    def __str__(self) -> str:
        target = f"{self.variable.name}={self.value}" if self.value else self.variable.name
        return f"{target}: {self.old_label!r} -> {self.new_label!r}"

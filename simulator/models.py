"""What the running simulator is told (rate, pause) and what it did to the sources on purpose (the fault log)."""

from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models


class SimulatorControl(models.Model):
    """The one row the running `simulate` loop polls: `manage.py simulator rate|pause|resume` write it."""

    SINGLETON_ID = 1

    rows_per_second = models.FloatField(default=2.0, validators=[MinValueValidator(0.0)])
    paused = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "simulator control"

    def __str__(self) -> str:
        return f"{self.rows_per_second:g} rows/s{' (paused)' if self.paused else ''}"


class Injection(models.Model):
    """One fault done to a source on purpose, with exactly what it touched (ids, CNTSTUIDs), for tests to check."""

    class Kind(models.TextChoices):
        LATE = "late", "Late arrival (old created_at/id committed after newer rows)"
        UPDATE = "update", "Updates to existing rows"
        DELETE = "delete", "Deleted rows"
        BAD = "bad", "Bad rows"
        EMPTY = "empty", "Source emptied (truncated)"

    source_code = models.CharField(max_length=8, db_index=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} on {self.source_code} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class StudentSerial(models.Model):
    """The last serial handed out per country for students and schools, so that every process that adds students to
    a source (the loop, an injection) gives out unique CNTSTUIDs and CNTSCHIDs."""

    country = models.CharField(max_length=8)
    kind = models.CharField(max_length=10)
    last_serial = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["country", "kind"], name="unique_student_serial")]

    def __str__(self) -> str:
        return f"{self.country} {self.kind}: {self.last_serial}"

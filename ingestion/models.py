"""The source registry: the external per-country databases the product reads (and does not own)."""

from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from ingestion.source_urls import SourceUrlError, source_url_parse, url_password_hidden


def validate_sqlalchemy_url(value: str) -> None:
    from django.core.exceptions import ValidationError

    try:
        source_url_parse(value)
    except SourceUrlError as exc:
        raise ValidationError(str(exc)) from None  # never the URL itself: it holds the password


class Source(models.Model):
    """One per-country source database with a table of PISA responses (1,120 columns)."""

    code = models.CharField(
        max_length=8, unique=True,
        validators=[RegexValidator(r"^[A-Z]{3,8}$", "An upper-case PISA country code, such as ALB.")],
        help_text="PISA country code (CNT), e.g. ALB.",
    )
    name = models.CharField(max_length=100, help_text="Display name, e.g. Albania.")
    url = models.CharField(
        max_length=500, validators=[validate_sqlalchemy_url],
        help_text="SQLAlchemy URL of the source database, e.g. postgresql://user:pw@host:5432/pisa_alb.",
    )
    table_name = models.CharField(max_length=128, default="responses")
    cursor_columns = models.CharField(
        max_length=200, default="created_at,id",
        help_text="Comma-separated columns ordering new rows: a commit-time-ish timestamp, then a unique id.",
    )
    enabled = models.BooleanField(default=True)
    poll_interval_seconds = models.FloatField(default=1.0, validators=[MinValueValidator(0.1)])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"

    @property
    def safe_url(self) -> str:
        """The URL with its password (and secret query parameters) hidden: what logs, the API and the admin show."""
        return url_password_hidden(self.url)

    @property
    def cursor_column_list(self) -> list[str]:
        return [column.strip() for column in self.cursor_columns.split(",") if column.strip()]


class SourceState(models.Model):
    """Where ingestion stands for one source: its bookmark, what it loaded, and how its last runs went."""

    source = models.OneToOneField(Source, on_delete=models.CASCADE, primary_key=True, related_name="state")
    # Inclusive cursor: the newest (created_at, id) loaded; the next run looks back a window before it.
    bookmark_created_at = models.DateTimeField(null=True, blank=True)
    bookmark_id = models.BigIntegerField(null=True, blank=True)
    rows_loaded = models.BigIntegerField(default=0, help_text="Students from this source in the warehouse.")
    quarantined_count = models.BigIntegerField(default=0)
    newest_created_at = models.DateTimeField(null=True, blank=True, help_text="Newest loaded created_at.")
    source_max_id = models.BigIntegerField(null=True, blank=True)
    source_row_count = models.BigIntegerField(null=True, blank=True)
    # The rest of the fingerprint of the source's ids (extract.IdsFingerprint) when the warehouse was last found to
    # account for exactly those ids; None when it was not checked.
    source_ids_sum = models.BigIntegerField(null=True, blank=True)
    source_ids_square_sum = models.BigIntegerField(null=True, blank=True)
    source_ids_cube_sum = models.BigIntegerField(null=True, blank=True)
    reloading = models.BooleanField(
        default=False, help_text="Every row is being compared again (the source went backwards, or a full sync): the "
                                 "metrics keep publishing the country as it was until this is over, then all at once.")
    rows_behind = models.BigIntegerField(
        default=0, help_text="Source rows the last sync left for the next (its budget ran out); 0 when caught up.")
    oldest_pending_created_at = models.DateTimeField(
        null=True, blank=True, help_text="created_at of the oldest of those rows: the lag is its age.")
    backlog_pending = models.BooleanField(
        default=False, help_text="The last sync's time budget ran out with rows still to load: the next one goes on.")
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_batch_size = models.IntegerField(default=0)
    last_batch_seconds = models.FloatField(default=0)
    last_reconciled_at = models.DateTimeField(null=True, blank=True)
    source_update_count = models.BigIntegerField(
        null=True, blank=True,
        help_text="The source table's count of updated rows (PostgreSQL statistics) when last compared in full.")
    rules_version = models.CharField(
        max_length=32, blank=True,
        help_text="The plausibility rules (ingestion/plausibility.py) the stored rows were last checked under.")
    # Set by the metrics when this country's figures could not be refreshed: they are served as they last were, marked
    # stale with this reason, until a refresh succeeds (ingestion.services.country_figures_status_set).
    figures_error = models.TextField(blank=True)
    figures_stale_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.IntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="While failing: no attempt before this time.")

    def __str__(self) -> str:
        return f"state of {self.source_id}"


class AnalysisValues(models.Model):
    """The typed, NULL-for-missing values the metrics read (see ingestion/layout.py); fields added below."""

    country = models.CharField(max_length=8)
    cntschid = models.BigIntegerField(null=True)
    source_created_at = models.DateTimeField(help_text="Submission time: the source row's created_at.")

    class Meta:
        abstract = True


def _add_analysis_fields(model: type[models.Model]) -> None:
    from ingestion.layout import ANALYSIS_COLUMNS

    for column in ANALYSIS_COLUMNS:
        model.add_to_class(column, models.FloatField(null=True, blank=True))


class Student(AnalysisValues):
    """One PISA student in the warehouse, keyed by (country, CNTSTUID)."""

    # No index of its own: the two indexes below start with source, and one less index is one less write per row.
    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="students", db_index=False)
    cntstuid = models.BigIntegerField()
    source_row_id = models.BigIntegerField()
    raw = models.TextField(help_text="All 1,118 values as a COPY text line in codebook order (lossless).")
    raw_md5 = models.CharField(max_length=32, help_text="MD5 of raw: finds rows changed in the source.")
    loaded_at = models.DateTimeField(auto_now=True)

    # Also indexed by migration 0013, as analysis_packed is not a Django field: student_country_packed.
    class Meta:
        constraints = [models.UniqueConstraint(fields=["country", "cntstuid"], name="student_country_cntstuid")]
        indexes = [
            models.Index(fields=["source", "source_row_id"], name="student_source_row"),
            # Each sync lists the ids it already holds within its look-back window (pipeline._accounted_ids): an index-only
            # range scan over the window's rows. Without it that query read every student of the source, every sync
            # (17 ms at 20,000 students, growing with the warehouse: 20 syncs a second could not keep up at PISA size).
            models.Index(fields=["source", "source_created_at"], name="student_source_created",
                         include=["source_row_id"]),
        ]


class StudentChange(AnalysisValues):
    """Append-only log of what each load did to the analysis values: +1 for a new version, -1 for a replaced or
    deleted one. The metrics refresh folds it into each country's running sums, so its cost follows the change."""

    sign = models.SmallIntegerField()
    recorded_at = models.DateTimeField(auto_now_add=True)
    # The version's whole line, as Student.raw: open analyses fold any codebook variable, not only the typed ones.
    raw = models.TextField(default="", db_default="")

    class Meta:
        indexes = [models.Index(fields=["country", "id"], name="change_country_id")]


_add_analysis_fields(Student)
_add_analysis_fields(StudentChange)


class QuarantinedRow(models.Model):
    """A source row that could not be loaded, with every reason; kept until the source fixes or deletes it."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="quarantined_rows")
    source_row_id = models.BigIntegerField()
    cntstuid = models.CharField(max_length=64, blank=True)
    reasons = models.JSONField()
    raw = models.TextField()
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "source_row_id"], name="quarantine_source_row")]
        ordering = ["-last_seen_at"]


class DuplicateStudent(models.Model):
    """Two source rows with the same CNTSTUID: the latest (by created_at, id) is kept, the other recorded here."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="duplicates")
    cntstuid = models.BigIntegerField()
    kept_row_id = models.BigIntegerField()
    superseded_row_id = models.BigIntegerField()
    detected_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "superseded_row_id"], name="duplicate_source_superseded")
        ]

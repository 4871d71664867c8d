"""The source registry: the external per-country databases the product reads (and does not own)."""

from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def validate_sqlalchemy_url(value: str) -> None:
    from django.core.exceptions import ValidationError

    try:
        make_url(value)
    except ArgumentError as exc:
        raise ValidationError(f"not an SQLAlchemy URL: {exc}") from exc


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
        """The URL with its password hidden: what logs, the API and the admin list show."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            return "<invalid URL>"

    @property
    def cursor_column_list(self) -> list[str]:
        return [column.strip() for column in self.cursor_columns.split(",") if column.strip()]

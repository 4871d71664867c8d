"""Each country's running sufficient statistics, kept next to the change log they fold in."""

from django.db import models


class CountryMetricsState(models.Model):
    """The `CountryState` of a country (metrics/sufficient.py) as of change-log id `last_change_id`."""

    country = models.CharField(max_length=8, primary_key=True)
    state = models.BinaryField(help_text="CountryState.to_bytes(): fixed-size sums plus school and minute counts.")
    last_change_id = models.BigIntegerField(default=0)
    # Percentiles need every student's scores, so they are recomputed on their own, slower clock.
    percentiles = models.JSONField(null=True, blank=True)
    percentiles_at = models.DateTimeField(null=True, blank=True)
    # The change-log position the percentiles cover: they are due again only once changes were folded after it.
    percentiles_change_id = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"metrics state of {self.country}"

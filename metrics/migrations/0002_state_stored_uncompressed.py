"""Store each country's ~200 KB state uncompressed (TOAST storage EXTERNAL).

A refresh rewrites the state of every changing country about once a second; pglz compressing it took ~4 ms of the
~7 ms the UPDATE cost (measured on a 2,000-student country). There is one such row per country: the disk it costs
is negligible.
"""

from django.db import migrations

TABLE = "metrics_countrymetricsstate"


class Migration(migrations.Migration):
    dependencies = [("metrics", "0001_country_state")]

    operations = [
        migrations.RunSQL(
            f"ALTER TABLE {TABLE} ALTER COLUMN state SET STORAGE EXTERNAL",
            reverse_sql=f"ALTER TABLE {TABLE} ALTER COLUMN state SET STORAGE EXTENDED",
        ),
    ]

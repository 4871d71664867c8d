"""Store the warehouse's raw line out of line and uncompressed (TOAST storage EXTERNAL).

PostgreSQL would otherwise compress each ~4 KB raw line with pglz (the embedded server has no lz4), which measured
~150 us per row: about as much as everything else in a load put together. Uncompressed, a student takes ~4 KB more
disk; bench/ingest.py measures the difference this makes to backfill throughput.
"""

from django.db import migrations

TABLE = "ingestion_student"


class Migration(migrations.Migration):
    dependencies = [("ingestion", "0002_warehouse")]

    operations = [
        migrations.RunSQL(
            f"ALTER TABLE {TABLE} ALTER COLUMN raw SET STORAGE EXTERNAL",
            reverse_sql=f"ALTER TABLE {TABLE} ALTER COLUMN raw SET STORAGE EXTENDED",
        ),
    ]

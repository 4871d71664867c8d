"""The look-back query of every sync (pipeline._accounted_ids: a source's ids created since the window began) gets a
range scan; the (country, source_created_at) index it replaces served no query of the product. Built and dropped
concurrently: at PISA size the build takes a while, and the ingest workers keep writing meanwhile."""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False  # CREATE/DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ('ingestion', '0004_source_update_count'),
    ]

    operations = [
        RemoveIndexConcurrently(
            model_name='student',
            name='student_country_created',
        ),
        AddIndexConcurrently(
            model_name='student',
            index=models.Index(fields=['source', 'source_created_at'], include=('source_row_id',), name='student_source_created'),
        ),
    ]

"""The look-back query of every sync (pipeline._accounted_ids: a source's ids created since the window began) gets an
index-only range scan; the (country, source_created_at) index it replaces served no query."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ingestion', '0004_source_update_count'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='student',
            name='student_country_created',
        ),
        migrations.AddIndex(
            model_name='student',
            index=models.Index(fields=['source', 'source_created_at'], include=('source_row_id',), name='student_source_created'),
        ),
    ]

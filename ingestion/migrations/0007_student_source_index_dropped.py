"""ingestion_student loses Django's default index on its source_id foreign key: both look-up indexes
(student_source_row, student_source_created) start with source_id and serve every query by source, and each index is
one more write per loaded row. Dropped concurrently, so that the ingest workers keep writing meanwhile (a plain
DROP INDEX would lock the table); the foreign key constraint itself is kept as it is (Django's AlterField would drop
and re-add it, which checks every row again)."""

from django.db import migrations, models

# Django's name for the index of ingestion_student.source_id (derived from the table and column names, so the same on
# every database these migrations built).
SOURCE_INDEX = "ingestion_student_source_id_97af6bac"


class Migration(migrations.Migration):
    atomic = False  # DROP/CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ('ingestion', '0006_source_backlog_pending'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='student',
                    name='source',
                    field=models.ForeignKey(db_index=False, on_delete=models.deletion.PROTECT, related_name='students',
                                            to='ingestion.source'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX CONCURRENTLY IF EXISTS "{SOURCE_INDEX}"',
                    reverse_sql=f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{SOURCE_INDEX}" '
                                f'ON "ingestion_student" ("source_id")',
                ),
            ],
        ),
    ]

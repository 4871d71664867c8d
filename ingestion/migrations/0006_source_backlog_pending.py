"""A sync cut short by its time budget says so, and the next poll reads the source's ids again."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ingestion', '0005_student_index_for_the_look_back_window'),
    ]

    operations = [
        migrations.AddField(
            model_name='sourcestate',
            name='backlog_pending',
            field=models.BooleanField(default=False, help_text="The last sync's time budget ran out with rows still to load: the next one goes on."),
        ),
    ]

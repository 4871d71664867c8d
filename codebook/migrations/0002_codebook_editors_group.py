"""The "Codebook editors" group: staff in it can correct and translate labels, and do nothing else."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

EDITORS_GROUP = "Codebook editors"
# change_variable is there because the admin saves value labels from the variable's page; every field of a variable
# but its label is read-only in the admin, and nobody may add or delete a variable there.
EDITOR_PERMISSIONS = [
    ("variable", "view"),
    ("variable", "change"),
    ("valuelabel", "view"),
    ("valuelabel", "change"),
    ("labeledit", "view"),
]


def editors_group_create(apps, schema_editor):
    # Permissions are normally created after all migrations ran; this one needs them now.
    codebook_config = apps.get_app_config("codebook")
    codebook_config.models_module = True
    create_permissions(codebook_config, apps=apps, verbosity=0)
    codebook_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=EDITORS_GROUP)
    group.permissions.set([
        Permission.objects.get(content_type__app_label="codebook", content_type__model=model,
                               codename=f"{action}_{model}")
        for model, action in EDITOR_PERMISSIONS
    ])


def editors_group_delete(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=EDITORS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("codebook", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(editors_group_create, editors_group_delete)]

"""Prepare the local stack before its processes start: migrate, make sure there is an admin, say where things are."""

import os

from django.conf import settings
from django.core.management import call_command
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from codebook.services import codebook_load_if_empty
from pisa_site.services import admin_user_ensure


class Command(BaseCommand):
    help = "Migrate the warehouse, create the local admin user and print the stack's URLs (used by `make run`)."

    def handle(self, *args, **options):
        self.stdout.write("Migrating the warehouse...")
        call_command("migrate", interactive=False, verbosity=0)
        self._codebook_load()
        try:
            login = admin_user_ensure()
        except ValidationError as exc:
            raise CommandError("DJANGO_SUPERUSER_PASSWORD is too weak: " + " ".join(exc.messages)) from None
        host = "127.0.0.1"
        port = os.environ.get("PORT", "8000")
        flower_port = os.environ.get("FLOWER_PORT", "5555")
        base = f"http://{host}:{port}"
        password = login.password or "(unchanged: the password you set for it)"
        lines = [
            "",
            "PISA Live is starting:",
            f"  Dashboard   {base}/",
            f"  Admin       {base}/admin/   user {login.username}  password {password}",
            f"  API docs    {base}/api/docs/",
            f"  Health      {base}/api/v1/health/",
            f"  Flower      http://{host}:{flower_port}/",
            "Press Ctrl-C once to stop everything.",
            "",
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))

    def _codebook_load(self) -> None:
        path = settings.PISA_CODEBOOK_PATH
        report = codebook_load_if_empty(path=path)
        if report is not None:
            self.stdout.write(f"Loaded the codebook from {path}:\n{report.summary()}")
        elif not path.is_file():
            self.stdout.write(f"No codebook file at {path} (PISA_CODEBOOK_PATH): the codebook stays as it is.")
        else:
            self.stdout.write("The codebook is already loaded (manage.py load_codebook PATH re-imports it).")

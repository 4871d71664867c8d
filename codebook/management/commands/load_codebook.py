"""`python manage.py load_codebook PATH [--overwrite-edits]`: import a codebook file (CSV layout or SPSS .sav)."""

from django.core.management.base import BaseCommand, CommandError

from codebook.catalogue import CodebookFormatError
from codebook.services import codebook_load_file


class Command(BaseCommand):
    help = ("Import a PISA codebook (the CSV layout of shared/pisa2018/codebook.csv, or an SPSS .sav file). "
            "Idempotent; keeps labels staff edited unless --overwrite-edits; a malformed file changes nothing.")

    def add_arguments(self, parser):
        parser.add_argument("path", help="codebook file: .sav for SPSS, anything else is read as CSV")
        parser.add_argument("--overwrite-edits", action="store_true",
                            help="replace labels staff edited in the admin with the file's labels")

    def handle(self, *args, path, overwrite_edits, **options):
        self.stdout.write(f"Loading the codebook from {path}...")
        try:
            report = codebook_load_file(path=path, overwrite_edits=overwrite_edits, progress=self._progress)
        except (CodebookFormatError, FileNotFoundError) as exc:
            raise CommandError(f"{exc}\nNothing was changed.") from exc
        self.stdout.write(self.style.SUCCESS(report.summary()))

    def _progress(self, done: int, total: int) -> None:
        self.stdout.write(f"  {done}/{total} variables")

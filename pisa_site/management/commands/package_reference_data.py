"""`python manage.py package_reference_data [--shared DIR]`: regenerate the reference data the product ships.

The PISA 2018 student-questionnaire codebook (codebook/data/pisa2018_codebook.csv.gz, gzip without a timestamp, so
the same input gives the same bytes) and the published country means (simulator/data/oecd_2018_country_means.csv),
from `../shared/pisa2018/` (or --shared). Nothing else of `../shared/` ships: never the student sample.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from codebook.catalogue import CodebookFormatError, read_codebook_csv


class Command(BaseCommand):
    help = "Regenerate the codebook and the country means shipped with the product from the shared reference data."

    def add_arguments(self, parser):
        parser.add_argument("--shared", type=Path, default=settings.PISA_SHARED_DIR,
                            help="the folder holding pisa2018/ (default: PISA_SHARED_DIR)")

    def handle(self, *args, shared: Path, **options):
        codebook, means = shared / "pisa2018" / "codebook.csv", shared / "pisa2018" / "oecd_2018_country_means.csv"
        for path in (codebook, means):
            if not path.is_file():
                raise CommandError(f"{path} not found: give the folder holding pisa2018/ with --shared")
        try:
            variables = read_codebook_csv(codebook)  # refuse to ship a malformed codebook
        except CodebookFormatError as exc:
            raise CommandError(str(exc)) from exc
        target = settings.SHIPPED_CODEBOOK_PATH
        with codebook.open("rb") as source, target.open("wb") as out, \
                gzip.GzipFile(filename=codebook.name, mode="wb", fileobj=out, mtime=0, compresslevel=9) as packed:
            shutil.copyfileobj(source, packed)
        shutil.copyfile(means, settings.SHIPPED_COUNTRY_MEANS_PATH)
        self.stdout.write(f"{target}: {len(variables):,} variables ({target.stat().st_size:,} bytes)\n"
                          f"{settings.SHIPPED_COUNTRY_MEANS_PATH}: copied from {means}")

"""python manage.py verify [--source CNT]: compare the sources with the warehouse, row by row and value by value."""

import json

from django.core.management.base import BaseCommand, CommandError

from ingestion.services import SourceNotFoundError
from operations.verification import PROBLEM_KINDS, describe, sources_to_verify, verify_sources
from pisa_site.progress import Progress


# Longer than the pipeline takes to load a row committed late (its look-back window runs every second).
DEFAULT_SETTLE_SECONDS = 15.0


class Command(BaseCommand):
    help = ("Compare every enabled source (or --source) with the warehouse: missing, extra, differing and duplicated "
            "rows, with quarantined rows and superseded duplicates accounted for. Exits 1 on any problem.")

    def add_arguments(self, parser):
        parser.add_argument("--source", action="append", metavar="CNT",
                            help="only this source (repeatable; disabled sources too); default: every enabled one")
        parser.add_argument("--settle", type=float, default=DEFAULT_SETTLE_SECONDS, metavar="SECONDS",
                            help="on a stack still being fed, give each row that differs this long to arrive (it is "
                                 "then 'in flight', not a problem); 0 to report every difference as found "
                                 f"(default {DEFAULT_SETTLE_SECONDS:g})")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON instead of text")

    def handle(self, *args, source=None, as_json=False, settle=DEFAULT_SETTLE_SECONDS, **options):
        try:
            sources = sources_to_verify(codes=source)
        except SourceNotFoundError as exc:
            raise CommandError(str(exc)) from exc
        if not sources:
            raise CommandError("no enabled source to verify (see `manage.py sources list`)")
        bars: list[Progress] = []

        def progress_for(item, total):
            if bars:
                bars[-1].finish()
            bars.append(Progress(f"verify {item.code}", total))
            return bars[-1].advance

        verification = verify_sources(sources=sources, progress_for=progress_for, settle_seconds=settle)
        if bars:
            bars[-1].finish()
        if as_json:
            self.stdout.write(json.dumps(verification.as_dict(), indent=2))
        else:
            for result in verification.sources:
                line = describe(result)
                self.stdout.write(self.style.ERROR(line) if not result.ok else line)
                for kind, ids in result.examples.items():
                    if ids:
                        self.stdout.write(f"  {kind} source row ids (first {len(ids)}): "
                                          + ", ".join(map(str, ids)))
            self.stdout.write(describe(verification.total))
        total = verification.total
        if total.error:
            raise CommandError(total.error)
        if total.problems:
            raise CommandError("the warehouse differs from the sources: "
                               + ", ".join(f"{getattr(total, kind):,} {kind}" for kind in PROBLEM_KINDS))
        if not as_json:
            self.stdout.write(self.style.SUCCESS("verified: the warehouse matches every source"))

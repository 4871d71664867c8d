"""python manage.py ingest [--source CNT] [--full]: the extract and load, run here and now, without Celery."""

from django.core.management.base import BaseCommand, CommandError

from ingestion.models import Source
from ingestion.pipeline import source_sync
from ingestion.warehouse import country_changed
from pisa_site.progress import Progress


class Command(BaseCommand):
    help = "Load new and changed rows from the sources into the warehouse synchronously (backfills, debugging)."

    def add_arguments(self, parser):
        parser.add_argument("--source", action="append", metavar="CNT",
                            help="only this source (repeatable); default: every enabled source")
        parser.add_argument("--full", action="store_true",
                            help="compare every id and every row's content with the source and repair what differs, "
                                 "in place (the country's figures are published once, when it is over)")
        parser.add_argument("--no-metrics", action="store_true", help="do not refresh the metrics afterwards")

    def handle(self, *args, source=None, full=False, no_metrics=False, **options):
        sources = Source.objects.filter(enabled=True) if not source else Source.objects.filter(
            code__in=[code.upper() for code in source])
        if source:
            unknown = sorted({code.upper() for code in source} - set(sources.values_list("code", flat=True)))
            if unknown:
                raise CommandError(f"unknown source(s): {', '.join(unknown)} (see `manage.py sources list`)")
        if not sources.exists():
            raise CommandError("no source to ingest: register one with `manage.py sources add` or run the simulator")
        totals = {"loaded": 0, "removed": 0, "quarantined": 0, "failed": 0}
        for item in sources.order_by("code"):
            progress = Progress(item.code, 0)
            result = source_sync(source_id=item.pk, full=full, progress=progress.advance,
                                 pending=lambda n, p=progress: setattr(p, "total", n))
            progress.finish()
            if result.error:
                totals["failed"] += 1
                self.stderr.write(self.style.ERROR(f"{item.code}: {result.error}"))
                continue
            if result.changed_countries and not no_metrics:
                # Refreshed here and now (the metrics app's receiver), not left to a worker that may not run.
                country_changed.send(sender=Source, country=item.code, now=True)
            totals["loaded"] += result.loaded
            totals["removed"] += result.removed
            totals["quarantined"] += result.quarantined
            self.stdout.write(f"{item.code}: +{result.loaded} loaded, -{result.removed} removed, "
                              f"{result.quarantined} quarantined, {result.duplicates} duplicates, "
                              f"{'its ids went backwards, ' if result.reset else ''}"
                              f"{'compared in full, ' if result.reconciled else ''}{result.seconds:.1f}s")
        summary = (f"done: {totals['loaded']} loaded, {totals['removed']} removed, {totals['quarantined']} "
                   f"quarantined, {totals['failed']} source(s) failed")
        self.stdout.write(self.style.SUCCESS(summary) if not totals["failed"] else self.style.WARNING(summary))
        if totals["failed"]:
            raise CommandError(f"{totals['failed']} source(s) could not be read")

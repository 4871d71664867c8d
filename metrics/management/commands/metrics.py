"""python manage.py metrics rebuild [--verify] [--country CNT]: recompute the running sums from the warehouse."""

from django.core.management.base import BaseCommand, CommandError

from metrics.services import countries_with_data, country_metrics_rebuild, country_metrics_refresh


class Command(BaseCommand):
    help = "Rebuild each country's metrics state from scratch, or (--verify) check the incremental one against it."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["rebuild", "refresh"])
        parser.add_argument("--verify", action="store_true",
                            help="compare the incremental state with a rebuild and report differences; change nothing")
        parser.add_argument("--country", action="append", metavar="CNT", help="only this country (repeatable)")

    def handle(self, *args, action, verify=False, country=None, **options):
        countries = [c.upper() for c in country] if country else countries_with_data()
        if not countries:
            self.stdout.write("no country has data yet")
            return
        if action == "refresh":
            for code in countries:
                result = country_metrics_refresh(country=code, force_percentiles=True)
                self.stdout.write(f"{code}: {result.changes} changes folded in {result.seconds:.2f}s")
            return
        differing = 0
        for code in countries:
            result = country_metrics_rebuild(country=code, verify=verify)
            if result.differences:
                differing += 1
                self.stdout.write(self.style.ERROR(f"{code}: {len(result.differences)} difference(s) "
                                                   f"over {result.students} students"))
                for line in result.differences:
                    self.stdout.write(f"  {line}")
            else:
                verb = "matches a rebuild" if verify else "rebuilt"
                self.stdout.write(f"{code}: {verb} ({result.students} students)")
        if differing:
            raise CommandError(f"{differing} country state(s) differ from a rebuild")
        self.stdout.write(self.style.SUCCESS("verified: no difference beyond float rounding" if verify else "done"))

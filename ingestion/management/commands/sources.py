"""`manage.py sources list|add|enable|disable`: the source registry from the command line."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ingestion.selectors import source_list
from ingestion.services import SourceNotFoundError, source_register, source_set_enabled


class Command(BaseCommand):
    help = "List, add, enable or disable the source databases the pipeline reads."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="every source, its state and its URL (password hidden)")
        add = actions.add_parser("add", help="add a source (or update the one with this code)")
        add.add_argument("code", help="PISA country code, e.g. ALB")
        add.add_argument("url", help="SQLAlchemy URL, e.g. postgresql://user:pw@host:5432/pisa_alb")
        add.add_argument("--name", help="display name (default: the code)")
        add.add_argument("--table", default="responses")
        add.add_argument("--cursor-columns", default="created_at,id")
        add.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
        add.add_argument("--disabled", action="store_true", help="register it switched off")
        for action in ("enable", "disable"):
            switch = actions.add_parser(action, help=f"{action} sources")
            switch.add_argument("codes", nargs="+")

    def handle(self, *args, action, **options):
        if action == "list":
            return self._list()
        if action == "add":
            return self._add(options)
        for code in options["codes"]:
            try:
                source = source_set_enabled(code=code.upper(), enabled=action == "enable")
            except SourceNotFoundError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"{source.code}: {'enabled' if source.enabled else 'disabled'}")

    def _list(self):
        sources = list(source_list())
        if not sources:
            self.stdout.write("No sources registered (add one with `sources add`, or run `simulate`).")
        for source in sources:
            state = "enabled " if source.enabled else "disabled"
            self.stdout.write(
                f"{source.code:<6} {state} every {source.poll_interval_seconds:g}s  {source.name:<24} "
                f"{source.safe_url} table {source.table_name} cursor ({source.cursor_columns})"
            )

    def _add(self, options):
        code = options["code"].upper()
        try:
            source = source_register(
                code=code, name=options["name"] or code, url=options["url"], table_name=options["table"],
                cursor_columns=options["cursor_columns"], poll_interval_seconds=options["poll_interval"],
                enabled=False if options["disabled"] else None,
            )
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
            raise CommandError(f"cannot register {code}: {problems}") from exc
        self.stdout.write(self.style.SUCCESS(f"{source.code} registered: {source.safe_url}"))

#!/usr/bin/env python
"""Django's command-line utility. Without DATABASE_URL/REDIS_URL it uses the embedded servers, starting them for
the duration of the command if `make run` is not already running them."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")
    from pisa_site import embedded

    if not os.environ.get("DATABASE_URL"):
        # The embedded servers are the local development stack, which `make run` also runs with DEBUG on.
        os.environ.setdefault("DEBUG", "1")
    os.environ.update(embedded.environment_for_running_services())
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
        return
    with embedded.services_in_environment(quiet=True):
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

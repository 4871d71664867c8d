"""The operations drive a stack the simulator feeds: its fixtures (codebook specs, source URL templates) apply here."""

from tests.simulator.conftest import pg_url_template, specs  # noqa: F401 (fixtures)

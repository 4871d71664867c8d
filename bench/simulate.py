"""How many 1,120-column rows per second the simulator can put into a PostgreSQL source.

    .venv/bin/python -m pisa_site.embedded run -- .venv/bin/python -m bench.simulate [--quick]

(or just `.venv/bin/python -m bench.simulate` with DATABASE_URL set, or while `make run` is up). It creates a scratch
source database on the warehouse's server, drops it afterwards, and prints, in one run:
  - generation: synthetic students per second from StudentFactory (the loop's other cost),
  - responses_insert: typed rows per second through the simulator's COPY path (rendering included),
  - baseline: a bare psycopg2 COPY of the same rows pre-rendered to text before the clock starts,
  - end to end: generation and insertion together, what `simulate --rate` can sustain on this machine,
and the ratio of responses_insert to the baseline (how much the Python-side rendering costs).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")
os.environ.setdefault("DEBUG", "1")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402

from simulator.schema import server_url_of, source_database_create, source_database_drop, source_table  # noqa: E402
from simulator.selectors import codebook_specs  # noqa: E402
from simulator.services import CopyRenderer, responses_insert  # noqa: E402
from simulator.students import StudentFactory  # noqa: E402

BATCH_ROWS = 500
FULL_ROWS, QUICK_ROWS = 20_000, 2_000


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS} rows instead of {FULL_ROWS}")
    total = QUICK_ROWS if parser.parse_args().quick else FULL_ROWS

    specs = codebook_specs()
    shared = settings.PISA_SHARED_DIR / "pisa2018"
    factory = StudentFactory(seed=1, specs=specs, sample_path=shared / "students_sample.csv",
                             country_means_path=settings.PISA_COUNTRY_MEANS_PATH)
    started = time.perf_counter()
    rows = factory.students("DEU", total)
    generation = rate(total, time.perf_counter() - started)

    server = server_url_of(settings.DATABASE_URL).render_as_string(hide_password=False)
    database = f"pisa_bench_{uuid.uuid4().hex[:8]}"
    url = source_database_create(server_url=server, database=database)
    engine = create_engine(url)
    try:
        simulator_table = source_table(specs, style="typed", table_name="responses")
        baseline_table = source_table(specs, style="typed", table_name="baseline")
        simulator_table.metadata.create_all(engine)
        baseline_table.metadata.create_all(engine)

        started = time.perf_counter()
        for offset in range(0, total, BATCH_ROWS):
            responses_insert(engine=engine, table=simulator_table, rows=rows[offset:offset + BATCH_ROWS])
        inserted = rate(total, time.perf_counter() - started)

        renderer = CopyRenderer(baseline_table)
        rendered = [
            "".join(renderer.line(index, row) for index, row in enumerate(rows[offset:offset + BATCH_ROWS], offset + 1))
            for offset in range(0, total, BATCH_ROWS)
        ]
        column_list = ", ".join(f'"{column}"' for column in ["id", *renderer.columns])
        connection = engine.raw_connection()
        started = time.perf_counter()
        with connection.cursor() as cursor:
            for batch in rendered:
                cursor.copy_expert(f"COPY baseline ({column_list}) FROM STDIN", io.StringIO(batch))
                connection.commit()
        baseline = rate(total, time.perf_counter() - started)
        connection.close()
    finally:
        engine.dispose()
        source_database_drop(server_url=server, database=database)

    end_to_end = 1 / (1 / generation + 1 / inserted)
    print(f"1,120-column typed rows, {total} rows in batches of {BATCH_ROWS}:")
    print(f"  generation (StudentFactory)        {generation:10.0f} rows/s")
    print(f"  responses_insert (render + COPY)   {inserted:10.0f} rows/s")
    print(f"  baseline (COPY of pre-rendered)    {baseline:10.0f} rows/s")
    print(f"  end to end (generate + insert)     {end_to_end:10.0f} rows/s")
    print(f"  responses_insert / baseline        {inserted / baseline:10.2f}")


if __name__ == "__main__":
    main()

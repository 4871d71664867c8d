"""Commit to pixel: from a row committed in a source to the changed number on the dashboard, in a real Chromium.

    .venv/bin/python -m bench.pixel [--quick] [--trials 30] [--viewers 2000]

The stack is the Procfile's (bench/stack.py: web, stream, ingest, metrics, watch, beat) on 20 seeded sources, with
no simulator running: each trial is the only change. The page is the dashboard, every country shown, its stream
open. A trial inserts one student into a random source (the simulator's own insert, one transaction) and takes the
time from just after its commit to the animation frame in which the page's student counter shows it (the page
notes `Date.now()` on each frame; one clock, the same machine). Trials are 0.5 to 1.5 s apart.

Two conditions, same run: no other viewer; then `--viewers` streaming viewers (bench/load.py's, doing what
js/stream.js does, in processes of their own). Reported for each: p50, p90, p99 and max over the trials.
Targets (issue 17): p50 under 0.5 s, p99 under 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from bench.common import bench_environment, percentile, report
from bench.stack import COUNTRIES, SourceDatabases, Stack, say

TRIALS, QUICK_TRIALS = 30, 10
VIEWERS, QUICK_VIEWERS = 2000, 300
SEED_ROWS = 200
CHROMIUM = os.environ.get("PISA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"]
FIRST_RENDER_MS = 30_000
SHOWN_TIMEOUT_MS = 15_000
# Leaves in window.shownAt a promise of Date.now() at the first animation frame where the counter shows `n`
# (not returned: Playwright would wait for it).
SHOWN_AT = """(n) => { window.shownAt = new Promise((resolve) => {
  const look = () => document.getElementById('submissions-count').dataset.value === n
    ? resolve(Date.now()) : requestAnimationFrame(look);
  look();
}); }"""


class Inserter:
    """One new student at a time into a source, as the simulator writes them."""

    def __init__(self) -> None:
        from ingestion.models import Source
        from simulator.selectors import codebook_specs
        from simulator.services import source_open, student_factory_for_sources

        self.specs = codebook_specs()  # as `manage.py simulate` reads them
        self.factory = student_factory_for_sources(seed=11, specs=self.specs)
        self.handles = {source.code: source_open(source) for source in Source.objects.filter(code__in=COUNTRIES)}

    def insert(self, code: str) -> float:
        """Insert one student; the epoch just after its commit."""
        from simulator.services import students_insert

        students_insert(handle=self.handles[code], factory=self.factory, specs=self.specs, count=1)
        return time.time()


def trials(page, inserter: Inserter, count: int, rng: random.Random) -> list[float]:
    delays = []
    for k in range(count):
        before = int(page.locator("#submissions-count").get_attribute("data-value"))
        page.evaluate(SHOWN_AT, str(before + 1))
        committed = inserter.insert(rng.choice(COUNTRIES))
        shown_at = page.evaluate("() => Promise.race([window.shownAt, new Promise((_, no) => setTimeout(() => no("
                                 f"new Error('not shown')), {SHOWN_TIMEOUT_MS}))])") / 1000
        delays.append(shown_at - committed)
        say(f"  trial {k + 1}/{count}: {delays[-1] * 1000:.0f} ms")
        time.sleep(rng.uniform(0.5, 1.5))
    return delays


def figures(delays: list[float]) -> dict:
    return {"trials": len(delays), **{f"p{int(q * 100)}_s": round(percentile(delays, q), 3) for q in (0.5, 0.9, 0.99)},
            "max_s": round(max(delays), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRIALS} trials, {QUICK_VIEWERS} viewers")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--viewers", type=int)
    args = parser.parse_args()
    count = args.trials or (QUICK_TRIALS if args.quick else TRIALS)
    viewers = args.viewers if args.viewers is not None else QUICK_VIEWERS if args.quick else VIEWERS
    from playwright.sync_api import sync_playwright

    from bench.load import Viewers

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API leaves an asyncio loop on this thread
    rng = random.Random(5)
    with bench_environment(), SourceDatabases("pisa_pixel_src_") as sources, \
            Stack("pixel", environment={"STREAM_MAX_VIEWERS": str(max(viewers + 100, 5000))}) as stack:
        say("seeding the sources...")
        stack.run(sources.simulate(seed_rows=SEED_ROWS, seed=7), env=stack.env)
        stack.wait_until_settled()
        inserter = Inserter()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{stack.api_url}/")
            page.wait_for_function("() => document.getElementById('submissions-count').dataset.value !== ''",
                                   timeout=FIRST_RENDER_MS)
            page.wait_for_function("() => document.getElementById('updated-ago').textContent.includes('pushed')",
                                   timeout=FIRST_RENDER_MS)
            say(f"no other viewer: {count} trials...")
            alone = trials(page, inserter, count, rng)
            say(f"{viewers} streaming viewers: {count} trials...")
            with Viewers(stack, streams=viewers, pollers=0) as crowd:
                time.sleep(10)  # their page loads and streams opened
                crowded = trials(page, inserter, count, rng)
                crowd_figures = crowd.finish()
            browser.close()
    report("pixel", {
        "what": f"a row committed in a source to the animation frame showing it in Chromium (stream and watcher "
                f"on), {count} trials each: alone, then beside {viewers} streaming viewers",
        "alone": figures(alone), "beside_viewers": figures(crowded), "viewers": viewers,
        "viewers_streams_opened": crowd_figures["counters"].get("streams opened", 0),
        "targets": "p50 < 0.5 s, p99 < 1 s",
    }, quick=args.quick)


if __name__ == "__main__":
    main()

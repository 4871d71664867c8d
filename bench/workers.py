"""Horizontal scale: the same backfill with 1, 2 and 4 ingest workers started as separate Celery nodes, rows/s of each
next to the single node's, and proof that no source is ever synced by two of them at once.

    .venv/bin/python -m bench.workers [--quick] [--nodes 1,2,4]

20 source databases of 2,000 synthetic students each (--quick: 250), as in bench/ingest.py. Each node is
`celery worker --queues ingestion --hostname ingest@bench-host-<k> --concurrency 1`: one worker process and a node
name of its own, sharing nothing with the others but the broker and the warehouse, as on separate hosts. For each
node count, the warehouse is reset (emptied as before a first backfill), the nodes start, and the benchmark queues
what beat would (ingestion.fan_out, every second) until every row is in the warehouse; rows/s and the ratio to one
node are reported. On a 2-core machine, more than 2 nodes cannot be expected to add much.

Meanwhile an `app.events.Receiver` in a thread records the nodes' Celery task events (task-received: name and args;
task-started, task-succeeded, task-failed: node and timestamp; events are on in settings). Per run: the number of
sync_source tasks, how many nodes ran them, and the number of overlapping sync intervals of the same source (must
be 0). A task that found its source locked by another and returned at once ("skipped", the guard working) is
counted apart and is not a sync. An interval runs from the node's task-started to its task-succeeded/failed event,
a little wider than the lock is held, so an overlap found is reported with its length.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from bench.common import ROOT, bench_environment, report
from bench.ingest import provision
from bench.stack import COUNTRIES, Processes, SourceDatabases, backfill, say, warehouse_reset

ROWS_PER_SOURCE, QUICK_ROWS_PER_SOURCE = 2_000, 250
NODE_COUNTS = (1, 2, 4)
NODE_NAME = "ingest@bench-host-{k}"  # as the Procfile's ingest@%h, on hosts of their own
NODES_READY_TIMEOUT_SECONDS = 120
SYNC_TASK = "ingestion.sync_source"
# For the last events, published as the nodes shut down, to reach the receiver.
EVENTS_GRACE_SECONDS = 1.0


class TaskEvents:
    """Every event the Celery nodes send, recorded from entry to exit by a Receiver in a thread of its own."""

    def __enter__(self):
        from pisa_site.celery import app

        self.app = app
        self.events: list[dict] = []
        self.listening = threading.Event()
        self.receiver = None
        self.thread = threading.Thread(target=self._capture, name="task-events", daemon=True)
        self.thread.start()
        # Events are broadcast, not queued: only those sent after the receiver is consuming reach it.
        if not self.listening.wait(30):
            raise RuntimeError("the event receiver did not start")
        return self

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            ready = self.receiver.on_consume_ready

            def on_consume_ready(*args, **kwargs):
                ready(*args, **kwargs)
                self.listening.set()

            self.receiver.on_consume_ready = on_consume_ready
            self.receiver.capture(limit=None, timeout=None, wakeup=True)

    def __exit__(self, *exc_info) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True  # checked about every second
        self.thread.join(10)


@dataclass
class Sync:
    task_id: str
    source_id: int | None = None
    node: str | None = None
    started: float | None = None
    ended: float | None = None
    outcome: str = ""
    skipped: bool = False


def syncs_from(events: list[dict]) -> list[Sync]:
    """The sync_source tasks the events describe, joined by task id."""
    tasks: dict[str, Sync] = {}
    names: dict[str, str] = {}
    for event in events:
        kind = event.get("type", "")
        if not kind.startswith("task-"):
            continue
        task = tasks.setdefault(event["uuid"], Sync(task_id=event["uuid"]))
        if kind == "task-received":
            names[event["uuid"]] = event.get("name", "")
            task.source_id = ast.literal_eval(event["args"])[0]  # args=[source_id]
        elif kind == "task-started":
            task.node, task.started = event["hostname"], event["timestamp"]
        elif kind in ("task-succeeded", "task-failed"):
            task.ended, task.outcome = event["timestamp"], kind
            task.skipped = "already running" in str(event.get("result", ""))
    return [task for task_id, task in tasks.items() if names.get(task_id) == SYNC_TASK]


def overlaps_of(syncs: list[Sync]) -> list[tuple[Sync, Sync, float]]:
    """Pairs of syncs of one source whose intervals overlap, with the overlap's length in seconds. A sync whose end
    was never seen counts as running until the end of the recording (which can only find more overlaps)."""
    by_source: dict[int, list[Sync]] = defaultdict(list)
    for sync in syncs:
        if not sync.skipped and sync.started is not None:
            by_source[sync.source_id].append(sync)
    found = []
    for intervals in by_source.values():
        intervals.sort(key=lambda sync: sync.started)
        for position, later in enumerate(intervals):
            for earlier in intervals[:position]:
                earlier_end = math.inf if earlier.ended is None else earlier.ended
                if later.started < earlier_end:
                    later_end = math.inf if later.ended is None else later.ended
                    found.append((earlier, later, min(earlier_end, later_end) - later.started))
    return found


def start_nodes(processes: Processes, count: int) -> list:
    """`count` single-process ingest nodes, each under a node name of its own; their processes once all answer."""
    from pisa_site.celery import app

    names = [NODE_NAME.format(k=k) for k in range(1, count + 1)]
    nodes = [processes.start([sys.executable, "-m", "celery", "-A", "pisa_site", "worker", "--queues", "ingestion",
                              "--hostname", name, "--concurrency", "1", "--loglevel", "WARNING"])
             for name in names]
    deadline = time.monotonic() + NODES_READY_TIMEOUT_SECONDS
    while True:
        answered = {name for reply in app.control.ping(destination=names, timeout=1.0) for name in reply}
        if answered == set(names):
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes {sorted(set(names) - answered)} did not answer; see {processes.log_path}")


def run_with_nodes(processes: Processes, count: int, total: int) -> dict:
    """One backfill of `total` rows from an empty warehouse by `count` nodes, with its task events analysed."""
    warehouse_reset()
    with TaskEvents() as events:
        nodes = start_nodes(processes, count)
        try:
            seconds = backfill(total)
        finally:
            processes.stop(*nodes)  # a warm shutdown: the tasks still running end and send their events
        time.sleep(EVENTS_GRACE_SECONDS)
    syncs = syncs_from(events.events)
    overlaps = overlaps_of(syncs)
    synced = [sync for sync in syncs if not sync.skipped and sync.started is not None]
    per_node: dict[str, int] = defaultdict(int)
    for sync in synced:
        per_node[sync.node] += 1
    for earlier, later, length in overlaps:
        say(f"  OVERLAP on source {later.source_id}: {earlier.node} from {earlier.started:.3f} to {earlier.ended} "
            f"and {later.node} from {later.started:.3f} to {later.ended} ({length * 1000:.1f} ms)")
    return {
        "seconds": seconds, "rows_per_second": total / seconds,
        "sync_tasks": len(synced), "skipped_tasks": sum(sync.skipped for sync in syncs),
        "failed_tasks": sum(sync.outcome == "task-failed" for sync in syncs),
        "tasks_without_end": sum(sync.started is not None and sync.ended is None for sync in syncs),
        "overlapping_syncs": len(overlaps),
        "longest_overlap_ms": round(max((length for *_, length in overlaps), default=0) * 1000, 1),
        "nodes_that_synced": len(per_node), "syncs_per_node": dict(sorted(per_node.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ROWS_PER_SOURCE} rows per source instead of {ROWS_PER_SOURCE:,}")
    parser.add_argument("--nodes", default=",".join(map(str, NODE_COUNTS)), help="node counts to run, in order")
    args = parser.parse_args()
    node_counts = [int(n) for n in args.nodes.split(",")]
    rows_per_source = QUICK_ROWS_PER_SOURCE if args.quick else ROWS_PER_SOURCE
    total = rows_per_source * len(COUNTRIES)
    runs = {}
    with (bench_environment(), SourceDatabases("pisa_workers_src_") as sources,
          Processes(ROOT / "bench" / "workers.log") as processes):
        say(f"provisioning {len(COUNTRIES)} sources of {rows_per_source:,} rows...")
        for handle in provision(rows_per_source, url_template=sources.template).values():
            handle.dispose()
        for count in node_counts:
            say(f"backfill of {total:,} rows by {count} node(s)...")
            runs[count] = run_with_nodes(processes, count, total)
            say(f"  {runs[count]['rows_per_second']:.0f} rows/s, {runs[count]['overlapping_syncs']} overlapping "
                f"syncs, {runs[count]['nodes_that_synced']} node(s) synced")
    single = runs.get(1)
    figures = {}
    for count, run in runs.items():
        figures[f"rows_per_second_{count}_nodes"] = round(run["rows_per_second"])
        if single and count != 1:
            figures[f"ratio_{count}_nodes_over_1_node"] = round(run["rows_per_second"] / single["rows_per_second"], 2)
        figures[f"overlapping_syncs_{count}_nodes"] = run["overlapping_syncs"]
        figures[f"nodes_that_synced_{count}_nodes"] = run["nodes_that_synced"]
        figures[f"tasks_{count}_nodes"] = {key: run[key] for key in (
            "sync_tasks", "skipped_tasks", "failed_tasks", "tasks_without_end", "longest_overlap_ms",
            "syncs_per_node")}
    report("workers", {
        "what": f"backfill of {total:,} rows (1,120 columns) from {len(COUNTRIES)} sources by "
                f"{', '.join(map(str, node_counts))} single-process Celery nodes with distinct node names, warehouse "
                "reset between runs; overlaps of two syncs of one source from the nodes' task events",
        "rows": total, **figures, "target_overlapping_syncs": 0,
    }, quick=args.quick)


if __name__ == "__main__":
    main()

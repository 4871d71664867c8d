"""bench/workers.py tells overlapping syncs of one source from the lock doing its job."""

from bench.workers import overlaps_of, syncs_from


def task(uuid, source_id, node, started, ended, result="{'source': 'ALB', 'loaded': 1}", name="ingestion.sync_source"):
    return [
        {"type": "task-received", "uuid": uuid, "name": name, "args": f"[{source_id}]", "hostname": node},
        {"type": "task-started", "uuid": uuid, "hostname": node, "timestamp": started},
        {"type": "task-succeeded", "uuid": uuid, "hostname": node, "timestamp": ended, "result": result},
    ]


def test_only_real_syncs_of_the_same_source_that_overlap_are_counted():
    events = [
        *task("a", 1, "n1", 10.0, 12.0),
        *task("b", 1, "n2", 11.0, 11.01, result="{'source': 'ALB', 'skipped': 'already running'}"),  # the lock held
        *task("c", 2, "n2", 11.0, 13.0),  # another source at the same time: fine
        *task("d", 1, "n2", 12.5, 13.0),  # after a: fine
        *task("e", 2, "n1", 12.9, 14.0),  # overlaps c by 0.1 s
        *task("f", 2, "n1", 11.5, 11.6, name="ingestion.fan_out"),  # not a sync
        {"type": "worker-heartbeat", "hostname": "n1"},
    ]
    syncs = syncs_from(events)
    assert sorted(sync.task_id for sync in syncs) == ["a", "b", "c", "d", "e"]
    assert [sync.task_id for sync in syncs if sync.skipped] == ["b"]
    overlaps = overlaps_of(syncs)
    assert [(earlier.task_id, later.task_id) for earlier, later, _ in overlaps] == [("c", "e")]
    assert abs(overlaps[0][2] - 0.1) < 1e-9


def test_a_sync_whose_end_was_not_seen_overlaps_every_later_sync_of_its_source():
    events = [*task("a", 1, "n1", 10.0, 12.0)[:2], *task("b", 1, "n2", 20.0, 21.0)]
    overlaps = overlaps_of(syncs_from(events))
    assert [(earlier.task_id, later.task_id, length) for earlier, later, length in overlaps] == [("a", "b", 1.0)]

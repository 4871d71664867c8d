"""Every fault done to a source does exactly what its log entry says, and the control row steers the loop."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from simulator.models import Injection
from simulator.services import (
    UPDATE_PV_DELTA, injection_bad_rows, injection_delete, injection_late, injection_update, responses_count,
    responses_insert, source_empty, source_provision,
)
from simulator.students import TextStyle


@pytest.fixture
def provision(specs, pg_url_template, db):
    handles = []

    def make(code: str = "ALB", style: str = "typed", rows: int = 20, factory=None):
        handle = source_provision(code=code, name=code, url_template=pg_url_template, specs=specs, style=style)
        handles.append(handle)
        if rows:
            students = factory.students(code, rows)
            if style == "text":
                students = [TextStyle(specs).row(row) for row in students]
            responses_insert(engine=handle.engine, table=handle.table, rows=students)
        return handle

    yield make
    for handle in handles:
        handle.dispose()


def stored_rows(handle, ids=None):
    table = handle.table
    query = select(table).order_by(table.c.id)
    if ids is not None:
        query = query.where(table.c.id.in_(ids))
    with handle.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def test_late_rows_take_ids_and_created_at_before_newer_rows_yet_commit_after_them(provision, make_factory, specs):
    factory = make_factory()
    handle = provision(factory=factory)
    newer_ids = []

    def while_held():
        # Another session commits newer rows while the late transaction is still open.
        newer_ids.extend(responses_insert(engine=handle.engine, table=handle.table, rows=factory.students("ALB", 4)))
        assert not set(visible_ids()) - set(newer_ids) - before, "the late rows are not visible yet"

    def visible_ids():
        return [row["id"] for row in stored_rows(handle)]

    before = set(visible_ids())
    injection = injection_late(handle=handle, factory=factory, specs=specs, count=3, hold_seconds=0,
                               on_held=while_held)

    late = stored_rows(handle, injection.details["ids"])
    newer = stored_rows(handle, newer_ids)
    assert injection.kind == Injection.Kind.LATE and len(late) == 3
    assert max(row["id"] for row in late) < min(row["id"] for row in newer)
    assert max(row["created_at"] for row in late) < min(row["created_at"] for row in newer)
    assert injection.details["committed_after_ids"] == newer_ids
    assert [row["cntstuid"] for row in late] == injection.details["cntstuids"]


def test_updates_change_exactly_the_logged_rows_and_values(provision, make_factory):
    handle = provision(factory=make_factory())
    before = {row["id"]: row for row in stored_rows(handle)}

    injection = injection_update(handle=handle, count=4)

    after = {row["id"]: row for row in stored_rows(handle)}
    changed = {row_id for row_id in before if before[row_id] != after[row_id]}
    assert changed == set(injection.details["ids"]) and len(changed) == 4
    for logged in injection.details["rows"]:
        row_id = logged["id"]
        assert after[row_id]["created_at"] == before[row_id]["created_at"], "an update leaves the cursor alone"
        for column, (old, new) in logged["changes"].items():
            assert before[row_id][column] == pytest.approx(old) and after[row_id][column] == pytest.approx(new)
        assert logged["changes"]["pv1math"][1] - logged["changes"]["pv1math"][0] == pytest.approx(UPDATE_PV_DELTA)
        assert {before[row_id]["st004d01t"], after[row_id]["st004d01t"]} <= {1, 2, 5, 7, 8, 9}


def test_deletes_remove_exactly_the_logged_rows(provision, make_factory):
    handle = provision(factory=make_factory())
    before = {row["id"]: row["cntstuid"] for row in stored_rows(handle)}

    injection = injection_delete(handle=handle, count=5)

    after = {row["id"] for row in stored_rows(handle)}
    assert set(before) - after == set(injection.details["ids"])
    assert injection.details["cntstuids"] == [before[row_id] for row_id in injection.details["ids"]]


@pytest.mark.parametrize("style", ["typed", "text"])
def test_bad_rows_carry_the_logged_problems(provision, make_factory, specs, style):
    handle = provision(factory=make_factory(), style=style)
    latest_cntstuid = stored_rows(handle)[-1]["cntstuid"]

    injection = injection_bad_rows(handle=handle, factory=make_factory(seed=99), specs=specs, count=14)

    rows = {row["id"]: row for row in stored_rows(handle, injection.details["ids"])}
    problems = {entry["problem"] for entry in injection.details["rows"]}
    expected = {"out_of_range_code", "duplicate_cntstuid", "null_keys", "negative_weight", "huge_weight",
                "absurd_scores"}
    if style == "text":
        expected.add("text_in_numeric")
    assert problems == expected
    for entry in injection.details["rows"]:
        row = rows[entry["id"]]
        if entry["problem"] == "text_in_numeric":
            assert row["escs"] == "not a number"
        elif entry["problem"] == "out_of_range_code":
            assert float(row["st004d01t"]) == 3
        elif entry["problem"] == "duplicate_cntstuid":
            assert row["cntstuid"] == latest_cntstuid
        elif entry["problem"] == "negative_weight":
            assert float(row["w_fstuwt"]) == -5
        elif entry["problem"] == "huge_weight":
            assert float(row["w_fstuwt"]) == 1e12
        elif entry["problem"] == "absurd_scores":
            assert {float(row[f"pv{m}math"]) for m in range(1, 11)} == {1e9}
        else:
            assert row["cnt"] is None and row["cntryid"] is None and row["cntstuid"] is None


def test_emptying_a_source_removes_every_row_and_logs_how_many(provision, make_factory):
    handle = provision(factory=make_factory(), rows=12)

    injection = source_empty(handle=handle)

    assert responses_count(engine=handle.engine, table=handle.table) == 0
    assert injection.kind == Injection.Kind.EMPTY and injection.details == {"rows_removed": 12}
    assert Injection.objects.filter(source_code="ALB").count() == 1


def test_deleting_chosen_ids_removes_them_with_the_random_ones(provision, make_factory):
    handle = provision(factory=make_factory(), rows=10)
    victim = stored_rows(handle)[3]["id"]

    injection = injection_delete(handle=handle, count=2, ids=[victim])

    remaining = {row["id"] for row in stored_rows(handle)}
    assert victim in injection.details["ids"] and len(injection.details["ids"]) == 3
    assert remaining.isdisjoint(injection.details["ids"]) and len(remaining) == 7


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_an_outage_makes_a_source_unreadable_for_everyone_until_it_ends(
        specs, make_factory, pg_url_template, sqlite_url_template, db, dialect):
    import sqlalchemy as sa

    from ingestion.models import Source
    from simulator.runner import Simulation, SyntheticSupply
    from simulator.services import shares_for, source_outage_begin, source_outage_end, students_insert

    template = pg_url_template if dialect == "postgresql" else sqlite_url_template
    down = source_provision(code="AUT", name="Austria", url_template=template, specs=specs, style="typed")
    up = source_provision(code="ALB", name="Albania", url_template=template, specs=specs, style="text")
    factory = make_factory()
    students_insert(handle=down, factory=factory, specs=specs, count=3)
    messages = []
    simulation = Simulation(handles={"AUT": down, "ALB": up}, provision=None, text_style=TextStyle(specs),
                            supply=SyntheticSupply(factory=factory, shares=shares_for(["AUT"], seed=1), seed=1),
                            seed=1, say=messages.append)

    undo = source_outage_begin(source=Source.objects.get(code="AUT"))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            responses_count(engine=down.engine, table=down.table)
        # The simulator's loop carries on with the other sources, and says once why it skips this one.
        batch = {"AUT": factory.students("AUT", 2), "ALB": factory.students("ALB", 4)}
        assert simulation.feed(batch) == 4
        assert simulation.feed({"AUT": factory.students("AUT", 2)}) == 0
        assert len([m for m in messages if m.startswith("AUT: cannot write")]) == 1
    finally:
        source_outage_end(source=Source.objects.get(code="AUT"))
    assert "ALLOW_CONNECTIONS true" in undo if dialect == "postgresql" else "RENAME TO responses" in undo

    assert simulation.feed({"AUT": factory.students("AUT", 2)}) == 2
    assert messages[-1] == "AUT: the source accepts rows again"
    assert responses_count(engine=down.engine, table=down.table) == 5
    assert responses_count(engine=up.engine, table=up.table) == 4
    rows = stored_rows(up)
    assert all(isinstance(row["cntryid"], str) for row in rows)  # written in the source's own (text) style


def test_a_session_ended_in_the_middle_of_an_insert_fails_it_alone_and_quietly(provision, make_factory, caplog):
    """An outage that begins while the simulator inserts (the chaos scenario's source-outage step can land there):
    the insert fails with the server's own error, the dead connection is dropped rather than pooled (no error logged
    by the pool) and the next insert works."""
    import threading

    import psycopg2
    from sqlalchemy import text

    factory = make_factory()
    handle = provision(rows=0)
    students = factory.students("ALB", 3)
    locker = handle.engine.connect()
    locker.execute(text(f'LOCK TABLE "{handle.table.name}" IN ACCESS EXCLUSIVE MODE'))  # the insert waits on it
    failures = []

    def insert():
        try:
            responses_insert(engine=handle.engine, table=handle.table, rows=students)
        except Exception as exc:  # noqa: BLE001 - what the insert raised is the point
            failures.append(exc)

    inserter = threading.Thread(target=insert)
    inserter.start()
    waiting = None
    watcher = handle.engine.connect().execution_options(isolation_level="AUTOCOMMIT")  # a fresh view each query
    for _ in range(100):
        waiting = watcher.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event_type = 'Lock'")).scalar()
        if waiting:
            break
        threading.Event().wait(0.1)
    assert waiting, "the insert never waited on the table"
    watcher.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting})
    watcher.close()
    locker.rollback()
    locker.close()
    inserter.join(timeout=30)

    assert len(failures) == 1 and isinstance(failures[0], psycopg2.OperationalError)
    assert not [record for record in caplog.records if record.name.startswith("sqlalchemy.pool")]
    assert len(responses_insert(engine=handle.engine, table=handle.table, rows=students)) == 3

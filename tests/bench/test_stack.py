"""bench/stack.py's freshness observer: a row is served at the first API answer that counts it."""

from bench.stack import FreshnessObserver, procfile_commands


def test_rows_are_served_in_created_order_at_the_first_answer_counting_them():
    observer = object.__new__(FreshnessObserver)
    observer.base_counts = {"ALB": 10, "ARG": 5}
    observer.created_by_country = {"ALB": [101.0, 100.0, 102.0], "ARG": [100.5]}
    observer.api_answers = [(100.8, {"ALB": 10, "ARG": 5}),  # nothing new yet
                            (101.5, {"ALB": 12, "ARG": 5}),  # ALB's two oldest
                            (103.0, {"ALB": 14, "ARG": 6})]  # ALB beyond its known rows: capped at 3
    assert sorted(observer.api_delays()) == [0.5, 1.0, 1.5, 2.5]


def test_the_stack_runs_the_procfiles_own_command_lines():
    commands = procfile_commands()
    assert {"web", "ingest", "metrics", "beat"} <= set(commands)
    assert commands["web"].startswith("granian ") and "${WEB_THREADS:-64}" in commands["web"]


def test_stopping_a_process_also_ends_what_its_group_left_behind(tmp_path):
    import sys
    import time

    import psutil

    from bench.stack import Processes

    leader_code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    with Processes(tmp_path / "log") as processes:
        leader = processes.start([sys.executable, "-c", leader_code])
        deadline = time.monotonic() + 10
        while not psutil.Process(leader.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = psutil.Process(leader.pid).children()
        processes.stop(leader)  # SIGTERM ends the leader at once; its child would live on
        assert leader.returncode is not None and not processes.started
        # The kill is sent by then; give the kernel a moment to end it (an unreaped zombie counts as ended).
        _, alive = psutil.wait_procs([child], timeout=10)
        assert all(process.status() == psutil.STATUS_ZOMBIE for process in alive)

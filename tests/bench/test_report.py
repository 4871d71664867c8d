"""bench/report.py: RESULTS.md shows each benchmark's latest full run, with the figures and the command."""

import json

from bench.report import latest_runs, previous_sections, render


def record(bench: str, at: str, quick: bool, **figures) -> str:
    return json.dumps({"bench": bench, "at": at, "quick": quick, "machine": "test box", "what": f"{bench} test",
                       **figures})


def test_a_full_run_is_preferred_to_a_newer_quick_one_and_the_newest_full_run_wins():
    lines = [record("ingest", "1", False, ratio=0.4), record("ingest", "2", False, ratio=0.6),
             record("ingest", "3", True, ratio=0.9), record("api", "4", True, ratio=0.8), ""]
    runs = latest_runs(lines)
    assert runs["ingest"]["ratio"] == 0.6
    assert runs["api"]["quick"] is True  # no full run of it: the quick one stands, and says so


def test_the_report_lists_every_figure_with_its_command_and_machine():
    text = render(latest_runs([record("ingest", "1", False, pipe_rows_per_second=8438, ratio_pipeline_over_pipe=0.5),
                               record("api", "2", True, ratio_304=0.81)]))
    assert "| pipe_rows_per_second | 8,438 |" in text and "| ratio_pipeline_over_pipe | 0.5 |" in text
    assert "`.venv/bin/python -m bench.ingest`" in text and "`.venv/bin/python -m bench.api --quick`" in text
    assert "## api (quick run)" in text and "test box" in text
    assert text.index("## ingest") < text.index("## api")


def test_a_benchmark_not_run_again_keeps_its_previous_section_and_a_new_run_replaces_its_own():
    earlier = render(latest_runs([record("ingest", "1", False, ratio_pipeline_over_pipe=0.3),
                                  record("metrics", "1", False, ratio=0.94)]))
    text = render(latest_runs([record("ingest", "2", False, ratio_pipeline_over_pipe=0.45)]),
                  previous_sections(earlier))
    assert "| ratio_pipeline_over_pipe | 0.45 |" in text and "| ratio_pipeline_over_pipe | 0.3 |" not in text
    assert "| ratio | 0.94 |" in text and text.index("## ingest") < text.index("## metrics")
    assert previous_sections(text).keys() == {"ingest", "metrics"}


def test_a_quick_run_does_not_replace_a_previous_full_section():
    earlier = render(latest_runs([record("api", "1", False, ratio_304=0.91)]))
    text = render(latest_runs([record("api", "2", True, ratio_304=0.5)]), previous_sections(earlier))
    assert "| ratio_304 | 0.91 |" in text and "(quick run)" not in text

"""Write bench/RESULTS.md from bench/results.jsonl: for every benchmark, the figures of its latest run, each next to
the baseline measured in the same run, the ratio, the target, the machine and the command that reproduces it.

    .venv/bin/python -m bench.report          # `make bench` runs it after the benchmarks
    BENCH_NOTE="..." .venv/bin/python -m bench.report    # with a note on the conditions of the runs

A full run is preferred to a `--quick` one of the same benchmark, whichever is newer; a quick figure says so. A
benchmark with no run in bench/results.jsonl (which is local to a machine) keeps its section of the previous
RESULTS.md, dates and all, so that re-running some benchmarks does not erase the others' figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.jsonl"
REPORT = ROOT / "bench" / "RESULTS.md"
ORDER = ("ingest", "freshness", "metrics", "api", "scale", "load", "pixel", "workers", "analysis", "estimators", "simulate")
# Record fields that describe the run rather than being figures of it.
CONTEXT_FIELDS = {"bench", "at", "quick", "machine", "what", "command"}


def latest_runs(lines: list[str]) -> dict[str, dict]:
    """The latest full run of each benchmark, or its latest quick run when it never ran in full."""
    runs: dict[str, dict] = {}
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        name = record.get("bench")
        if not name:
            continue
        kept = runs.get(name)
        if kept is None or record.get("quick") is False or kept.get("quick") is not False:
            runs[name] = record
    return runs


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, separators=(", ", ": ")) + "`"
    return str(value)


def section(name: str, record: dict) -> str:
    command = record.get("command") or f".venv/bin/python -m bench.{name}" + (" --quick" if record.get("quick") else "")
    lines = [
        f"## {name}" + (" (quick run)" if record.get("quick") else ""),
        "",
        record.get("what", ""),
        "",
        f"Run {record.get('at', '?')} on {record.get('machine', '?')}, by `{command}`.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key, value in record.items():
        if key not in CONTEXT_FIELDS:
            lines.append(f"| {key} | {_value(value)} |")
    return "\n".join(lines) + "\n"


def previous_sections(text: str) -> dict[str, str]:
    """The sections of an earlier RESULTS.md by benchmark name ("## ingest" or "## ingest (quick run)")."""
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        name = chunk.split(maxsplit=1)[0]
        sections[name] = "## " + chunk.rstrip("\n") + "\n"
    return sections


def render(runs: dict[str, dict], previous: dict[str, str] | None = None) -> str:
    previous = previous or {}
    known = {**previous, **runs}
    names = [n for n in ORDER if n in known] + sorted(n for n in known if n not in ORDER)
    head = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.report`) from `bench/results.jsonl`. Every ratio compares two "
        "figures measured in the same run on the same machine (machines here are shared and noisy: ratios, not "
        "absolute figures, are what carries from one run to another). Each section names the command that "
        "reproduces it.",
        "",
    ]
    if note := os.environ.get("BENCH_NOTE"):  # what the figures cannot show by themselves, e.g. a loaded machine
        head += [f"**Note.** {note}", "", ""]
    if not names:
        head.append("No benchmark has run yet: `make bench` (or `make bench BENCH_ARGS=--quick`).\n")
    return "\n".join(head) + "\n".join(section(name, runs[name]) if _newer_is_better(name, runs, previous)
                                        else previous[name] for name in names)


def _newer_is_better(name: str, runs: dict[str, dict], previous: dict[str, str]) -> bool:
    """A run on this machine replaces the previous section, unless it is a quick run and the section a full one."""
    if name not in runs:
        return False
    kept = previous.get(name)
    return not (runs[name].get("quick") and kept is not None and "(quick run)" not in kept.splitlines()[0])


def main() -> None:
    lines = RESULTS.read_text().splitlines() if RESULTS.exists() else []
    previous = previous_sections(REPORT.read_text()) if REPORT.exists() else {}
    REPORT.write_text(render(latest_runs(lines), previous))
    print(f"wrote {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

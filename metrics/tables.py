"""Every answer of the API as one tidy table (`?format=csv`): one row per country x group x figure, the same columns
for the open analyses, the metrics document behind the dashboard's charts and a variable's distribution, so one
reader (Excel, `pandas.read_csv`) takes any of them. Pure functions of the JSON documents: a CSV says exactly what
the JSON of the same URL says."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

from metrics.estimators import Z_95

COLUMNS = ("kind", "country", "group", "group_label", "figure", "versus", "estimate", "se", "ci_low", "ci_high",
           "students", "schools", "flagged", "flag_reason", "significant", "undefined")
ALL_STUDENTS = ("all", "all students")
AVERAGE = "AVERAGE"


def row(kind: str, country: str, group: tuple[str, str], figure: str, versus: str, estimate: dict) -> dict:
    value, se = estimate.get("value"), estimate.get("se")
    has_ci = value is not None and se is not None
    return {"kind": kind, "country": country, "group": group[0], "group_label": group[1], "figure": figure,
            "versus": versus, "estimate": value, "se": se,
            "ci_low": value - Z_95 * se if has_ci else None, "ci_high": value + Z_95 * se if has_ci else None,
            "students": _first(estimate, "students", "n_students", "countries"),
            "schools": _first(estimate, "schools", "n_schools"),
            "flagged": estimate.get("flagged"), "flag_reason": estimate.get("flag_reason"),
            "significant": estimate.get("significant"), "undefined": estimate.get("undefined")}


def _first(estimate: dict, *names: str):
    return next((estimate[name] for name in names if name in estimate), None)


def csv_bytes(rows: Sequence[dict]) -> bytes:
    """A CSV that opens as-is in Excel and pandas: UTF-8 with a byte-order mark, a header, empty cells for null."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for line in rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in line.items()})
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


# --- Open analyses ---------------------------------------------------------------------------------------------

def _group_text(document: dict, group: list) -> tuple[str, str]:
    if not group:
        return ALL_STUDENTS
    labels = []
    for breakdown, code in zip(document["breakdown"], group):
        label = next((g["label"] for g in breakdown["groups"] if g["code"] == code), str(code))
        labels.append(f"{breakdown['variable']}={label}")
    return "|".join(str(code) for code in group), "; ".join(labels)


def analysis_rows(document: dict) -> list[dict]:
    """An analysis: estimates, then averages, then every difference with what it is taken against."""
    rows = []
    for country, result in document["countries"].items():
        for cell in result["cells"]:
            group = _group_text(document, cell["group"])
            rows += [row("estimate", country, group, figure, "", estimate)
                     for figure, estimate in cell["figures"].items()]
        for diff in result["within_country_differences"]:
            rows.append(row("group difference", country, _group_text(document, diff["group"]), diff["figure"],
                            _group_text(document, diff["versus"])[1], diff))
    for average in document["averages"]:
        rows.append(row("average", average["of"].upper() if average["of"] == "oecd" else AVERAGE,
                        _group_text(document, average["group"]), average["figure"], "", average))
    for comparison in document["comparisons"]:
        rows.append(row("country difference", comparison["country"], _group_text(document, comparison["group"]),
                        comparison["figure"], comparison["versus"], comparison))
    return rows


# --- The metrics document (every chart of the dashboard but the explorer's) -------------------------------------

# The first part of every figure name (`scores.READ.mean`, `background.escs`, `submissions_by_hour_of_day.09:00`).
METRICS_FIGURE_ROOTS = ("n_students", "n_schools", "scores", "background", "submissions",
                        "submissions_by_hour_of_day")


def _figures(node: dict, path: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """(dotted name, estimate) of every estimate and plain number in a statistics tree, in document order."""
    for key, value in node.items():
        name = (*path, key)
        if isinstance(value, dict) and "value" in value and "se" in value:
            yield ".".join(name), value
        elif isinstance(value, dict):
            yield from _figures(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield ".".join(name), {"value": value}


def _wanted(figures: Sequence[str]):
    return lambda name: not figures or any(name == f or name.startswith(f + ".") for f in figures)


def metrics_rows(document: dict, figures: Sequence[str] = ()) -> list[dict]:
    """The metrics document: each country's figures (estimates, counts, submissions per hour), then the average of
    the countries shown, then each country's mean score against that average. `figures`: only those names and the
    names under them (`scores.READ` is every reading figure); empty, all."""
    wanted = _wanted(figures)
    rows = []
    for country, country_document in document["by_country"].items():
        if country_document is None:
            continue
        tree = {**country_document["statistics"],
                "submissions_by_hour_of_day": country_document["submissions_by_hour_of_day"]}
        rows += [row("estimate", country, ALL_STUDENTS, name, "", estimate)
                 for name, estimate in _figures(tree) if wanted(name)]
    if document["average"]:
        rows += [row("average", AVERAGE, ALL_STUDENTS, name, "", estimate)
                 for name, estimate in _figures(document["average"]) if wanted(name)]
    for domain, differences in document["mean_score_versus_average"].items():
        name = f"scores.{domain}.mean"
        if wanted(name):
            rows += [row("country difference", country, ALL_STUDENTS, name, AVERAGE, difference)
                     for country, difference in differences.items()]
    return rows


# --- A variable's distribution (the variable explorer) -----------------------------------------------------------

def distribution_rows(document: dict) -> list[dict]:
    """A distribution: per country, each category's weighted percent (its code as the group) or the continuous
    summaries, then each kind of missing answer's weighted percent of all students."""
    variable = document["variable"]["name"]
    rows = []
    for result in document["countries"]:
        country = result["country"]
        for category in result.get("categories", []):
            group = (str(category["value"]), f"{variable}={category['label']}")
            rows.append(row("estimate", country, group, "weighted_percent", "", category["weighted_percent"]))
        for figure, estimate in result.get("continuous", {}).items():
            rows.append(row("estimate", country, ALL_STUDENTS, figure, "", estimate))
        for missing in result["missing"]:
            rows.append(row("missing", country, (missing["reason"], f"{variable} {missing['reason']}"),
                            "weighted_percent_of_all", "",
                            {"value": missing["weighted_percent_of_all"], "students": missing["students"]}))
    return rows

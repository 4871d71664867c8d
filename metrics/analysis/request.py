"""What an analysis is, and how the API's query parameters become one (or a 400 saying what is allowed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from codebook.catalogue import Kind, VariableSpec
from pisa_site.errors import BadInput

# Plausible-value domains a target may name: the three main domains, the reading subscales and global competence.
PV_DOMAINS = ("READ", "MATH", "SCIE", "RCLI", "RCUN", "RCER", "RTSN", "RTML", "GLCM")
# The PISA 2018 proficiency levels: (name, lower bound), lowest first; the scale's subscales use reading's.
READING_LEVELS = (("1c", 189.33), ("1b", 262.04), ("1a", 334.75), ("2", 407.47), ("3", 480.18), ("4", 552.89),
                  ("5", 625.61), ("6", 698.32))
LEVELS = {
    "READ": READING_LEVELS,
    "MATH": (("1", 357.77), ("2", 420.07), ("3", 482.38), ("4", 544.68), ("5", 606.99), ("6", 669.30)),
    "SCIE": (("1b", 260.54), ("1a", 334.94), ("2", 409.54), ("3", 484.14), ("4", 558.73), ("5", 633.33),
             ("6", 707.93)),
    **{subscale: READING_LEVELS for subscale in ("RCLI", "RCUN", "RCER", "RTSN", "RTML")},
}
PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
STATISTICS = {
    "mean": "weighted mean",
    "sd": "standard deviation",
    "percentiles": f"percentiles {', '.join(map(str, PERCENTILES))}",
    "percent": "percentage in each category of a categorical target",
    "levels": "proficiency-level distribution of a domain and the share at or above each level",
    "correlation": "weighted Pearson correlation with `predictor`",
    "slope": "regression slope on `predictor`, with 100 x R^2",
}
QUARTERS_SUFFIX = ":quarters"
MAX_BREAKDOWN_VARIABLES = 2
MAX_CELLS = 100  # groups of a breakdown (crossed) per country: beyond this a chart is unreadable and the work large
MAX_COUNTRIES = 100
QUERY_PARAMETERS = ("statistic", "target", "by", "countries", "compare", "predictor", "format")


@dataclass(frozen=True)
class Breakdown:
    variable: str
    quarters: bool = False  # national quarters of a continuous variable, instead of its categories

    @property
    def label(self) -> str:
        return self.variable + (QUARTERS_SUFFIX if self.quarters else "")


@dataclass(frozen=True)
class AnalysisSpec:
    statistic: str
    target: str
    by: tuple[Breakdown, ...]
    countries: tuple[str, ...]
    compare: tuple[str, ...]  # "average", "oecd" and/or country codes
    predictor: str | None = None

    @property
    def target_is_domain(self) -> bool:
        return self.target in PV_DOMAINS

    def as_dict(self) -> dict:
        return {"statistic": self.statistic, "target": self.target, "by": [b.label for b in self.by],
                "countries": list(self.countries), "compare": list(self.compare), "predictor": self.predictor}

    @classmethod
    def from_dict(cls, data: Mapping) -> AnalysisSpec:
        """The inverse of `as_dict` (a task receives the analysis as JSON)."""
        by = tuple(Breakdown(label[: -len(QUARTERS_SUFFIX)], True) if label.endswith(QUARTERS_SUFFIX)
                   else Breakdown(label) for label in data["by"])
        return cls(statistic=data["statistic"], target=data["target"], by=by, countries=tuple(data["countries"]),
                   compare=tuple(data["compare"]), predictor=data.get("predictor"))

    @property
    def key(self) -> str:
        """A short stable name of the analysis (the same question asked in any spelling has one key)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def part(self) -> AnalysisSpec:
        """What one country's part depends on: the analysis without its countries and comparisons (every question
        that differs only in those shares the countries' parts)."""
        return AnalysisSpec(statistic=self.statistic, target=self.target, by=self.by, countries=(), compare=(),
                            predictor=self.predictor)

    @property
    def part_key(self) -> str:
        return self.part.key


def _spec_named(name: str, specs: Mapping[str, VariableSpec], what: str) -> VariableSpec:
    spec = specs.get(name) or specs.get(name.upper())
    if spec is None:
        raise BadInput(f"{what}: unknown variable {name[:60]!r}: not in the codebook")
    return spec


def _list(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def analysis_parse(query: Mapping[str, str], *, specs: Sequence[VariableSpec], known_countries: set[str],
                   countries_with_data: Sequence[str]) -> AnalysisSpec:
    """The analysis a query asks for; BadInput naming what is wrong and what is allowed."""
    unknown = sorted(set(query) - set(QUERY_PARAMETERS))
    if unknown:
        raise BadInput(f"unknown parameter(s) {', '.join(unknown)}: allowed are {', '.join(QUERY_PARAMETERS)}")
    by_name = {spec.name: spec for spec in specs}
    statistic = (query.get("statistic") or "mean").lower()
    if statistic not in STATISTICS:
        raise BadInput(f"statistic {statistic[:30]!r} is not one of: {', '.join(STATISTICS)}")
    target = (query.get("target") or "").strip()
    if not target:
        raise BadInput(f"target is required: a domain ({', '.join(PV_DOMAINS)}) or a codebook variable")
    target = target.upper() if target.upper() in PV_DOMAINS else _spec_named(target, by_name, "target").name
    target_spec = None if target in PV_DOMAINS else by_name[target]
    _check_target(statistic, target, target_spec)

    predictor = None
    if statistic in ("correlation", "slope"):
        if not query.get("predictor"):
            raise BadInput(f"statistic {statistic} needs predictor: a continuous codebook variable such as ESCS")
        predictor_spec = _spec_named(query["predictor"].strip(), by_name, "predictor")
        if predictor_spec.kind != Kind.CONTINUOUS:
            raise BadInput(f"predictor {predictor_spec.name} is {predictor_spec.kind}: it must be continuous")
        predictor = predictor_spec.name
    elif query.get("predictor"):
        raise BadInput(f"predictor applies to correlation and slope, not to {statistic}")

    breakdowns = tuple(_breakdown(part, by_name) for part in _list(query.get("by")))
    if len(breakdowns) > MAX_BREAKDOWN_VARIABLES:
        raise BadInput(f"by names {len(breakdowns)} variables: at most {MAX_BREAKDOWN_VARIABLES} (crossed)")
    if len({b.variable for b in breakdowns}) < len(breakdowns):
        raise BadInput("by names the same variable twice")
    cells = 1
    for breakdown in breakdowns:
        cells *= 4 if breakdown.quarters else max(1, len(_categories(by_name[breakdown.variable])))
    if cells > MAX_CELLS:
        raise BadInput(f"by gives up to {cells} groups per country: at most {MAX_CELLS} (too many cells)")

    countries = [code.upper() for code in _list(query.get("countries"))] or list(countries_with_data)
    if len(countries) > MAX_COUNTRIES:
        raise BadInput(f"countries names {len(countries)} countries: at most {MAX_COUNTRIES}")
    bad = sorted(set(countries) - known_countries)
    if bad:
        raise BadInput(f"unknown country code(s): {', '.join(bad)[:200]}")
    compare = []
    for item in _list(query.get("compare")):
        item = item.lower() if item.lower() in ("average", "oecd") else item.upper()
        if item not in ("average", "oecd") and item not in countries:
            raise BadInput(f"compare {item[:20]!r}: say average, oecd or one of the countries asked for")
        compare.append(item)
    return AnalysisSpec(statistic=statistic, target=target, by=breakdowns, countries=tuple(dict.fromkeys(countries)),
                        compare=tuple(dict.fromkeys(compare)), predictor=predictor)


def _check_target(statistic: str, target: str, spec: VariableSpec | None) -> None:
    if statistic == "levels":
        if target not in LEVELS:
            raise BadInput(f"levels apply to a domain with proficiency levels ({', '.join(LEVELS)}), not {target}")
        return
    if statistic == "percent":
        if spec is None or spec.kind != Kind.CATEGORICAL or spec.is_text:
            raise BadInput(f"percent applies to a categorical codebook variable (such as IMMIG), not {target}"
                           + (" (for a domain, ask for levels)" if spec is None else ""))
        return
    if spec is not None and spec.kind != Kind.CONTINUOUS:
        raise BadInput(f"{statistic} applies to a domain or a continuous variable; {target} is {spec.kind}"
                       + (" (ask for percent)" if spec.kind == Kind.CATEGORICAL else ""))


def _breakdown(part: str, by_name: Mapping[str, VariableSpec]) -> Breakdown:
    quarters = part.lower().endswith(QUARTERS_SUFFIX)
    name = part[: -len(QUARTERS_SUFFIX)] if quarters else part
    spec = _spec_named(name, by_name, "by")
    if quarters:
        if spec.kind != Kind.CONTINUOUS:
            raise BadInput(f"by {spec.name}{QUARTERS_SUFFIX}: quarters apply to a continuous variable, "
                           f"{spec.name} is {spec.kind}")
        return Breakdown(spec.name, quarters=True)
    if spec.kind == Kind.CONTINUOUS:
        raise BadInput(f"by {spec.name}: a continuous variable breaks down into its national quarters only, "
                       f"say by={spec.name}{QUARTERS_SUFFIX}")
    if spec.kind != Kind.CATEGORICAL or spec.is_text:
        raise BadInput(f"by {spec.name} is {spec.kind}: a breakdown is a categorical codebook variable "
                       f"(such as ST004D01T or IMMIG) or a continuous one's quarters (ESCS{QUARTERS_SUFFIX})")
    return Breakdown(spec.name)


def _categories(spec: VariableSpec) -> list[float]:
    """The labelled answers of a categorical variable (missing codes are not groups)."""
    return sorted(float(value) for value in spec.value_labels if not spec.is_missing(value))

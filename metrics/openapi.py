"""OpenAPI descriptions of what the metrics API sends (docs/metrics.md explains the figures).

The documents are built as plain dicts and sent as cached bytes, so there are no serializers to read them from: these
JSON schemas say what they hold, and the schemathesis run (tests/pisa_site/test_api_schema.py) checks every answer
against them. Objects may gain keys; those listed as required are always there.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter

from metrics.selectors import COUNTRY_CODE, MAX_COUNTRIES


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            **extra}


NUMBER_OR_NULL = {"type": "number", "nullable": True}
STRING_OR_NULL = {"type": "string", "nullable": True}
TIMESTAMP_OR_NULL = {"type": "string", "format": "date-time", "nullable": True}
COUNT = {"type": "integer", "minimum": 0}
COUNTRY = {"type": "string", "pattern": f"^{COUNTRY_CODE}$"}
SCORE_STATISTICS = ["mean", "below_level2", "gender_gap", "escs_gradient", "escs_strength"]
BACKGROUND_STATISTICS = ["escs_mean", "learning_hours_per_week", "durecec_mean", "belong_mean", "girls_share"]

def _computing(name_field: str) -> dict:
    """A 202 answer: which countries are ready and which are still being computed by the analysis worker."""
    return _object({"status": {"type": "string", "enum": ["computing"]}, name_field: {"type": "string"},
                    "ready": {"type": "array", "items": COUNTRY}, "computing": {"type": "array", "items": COUNTRY},
                    "retry_after_seconds": COUNT})


COMPONENTS = {
    "Estimate": _object({
        "value": NUMBER_OR_NULL,
        "se": {**NUMBER_OR_NULL, "description": "standard error: 80 replicate weights, Rubin over plausible values"},
        "n_students": COUNT,
        "n_schools": COUNT,
        "flagged": {"type": "boolean", "description": "fewer than 30 students or 5 schools"},
        "flag_reason": STRING_OR_NULL,
        "note": STRING_OR_NULL,
    }),
    "DomainStatistics": _object(
        {name: ref("Estimate") for name in [*SCORE_STATISTICS, "p10", "p90"]}, required=SCORE_STATISTICS,
        description="p10 and p90 come from a periodic recomputation over every student; absent until the first"),
    "Statistics": _object({
        "n_students": COUNT,
        "n_schools": COUNT,
        "scores": _object({domain: ref("DomainStatistics") for domain in ("READ", "MATH", "SCIE")}),
        "background": _object({name: ref("Estimate") for name in BACKGROUND_STATISTICS}),
        "submissions": _object({"per_minute_last_hour": {"type": "number"}, "per_hour_last_24h": {"type": "number"}}),
    }),
    "Freshness": _object({"newest_created_at": TIMESTAMP_OR_NULL, "rows_loaded": COUNT, "quarantined": COUNT,
                          "stale": {**_object({"since": {"type": "string", "format": "date-time"},
                                               "reason": {"type": "string"}}), "nullable": True,
                                    "description": "set when the country's last refresh failed: these are its last "
                                                   "good figures, and the refresh is being retried"}}),
    "CountryDocument": _object({
        "country": COUNTRY,
        "name": {"type": "string"},
        "version": {"type": "integer"},
        "generated_at": {"type": "string", "format": "date-time"},
        "freshness": ref("Freshness"),
        "submissions_by_hour_of_day": {"type": "object", "additionalProperties": COUNT,
                                       "description": '"00:00" ... "23:00" (UTC) -> submissions'},
        "statistics": ref("Statistics"),
    }),
    "Metrics": _object({
        "generated_at": {"type": "string", "format": "date-time"},
        "countries": {"type": "array", "items": COUNTRY},
        "labels": _object({
            "domains": {"type": "object", "additionalProperties": {"type": "string"}},
            "variables": {"type": "object", "additionalProperties": {"type": "string"}},
            "gender_gap": {"type": "string"},
            "countries": {"type": "object", "additionalProperties": {"type": "string"}},
        }),
        "by_country": {"type": "object", "additionalProperties": {**ref("CountryDocument"), "nullable": True},
                       "description": "null for a known country without data yet"},
        "average": {"allOf": [ref("Statistics")], "nullable": True,
                    "description": "unweighted mean of the countries with data (OECD average method)"},
        "average_of": {"type": "array", "items": COUNTRY},
        "mean_score_versus_average": {
            "type": "object", "description": (
                "per domain, each country's mean score minus the average shown, with its SE (the country is part of "
                "the average: docs/analysis.md) and whether it is significant at 5 %; empty under two countries"),
            "additionalProperties": {"type": "object", "additionalProperties": _object({
                "value": {"type": "number"}, "se": {"type": "number"},
                "significant": {"type": "boolean", "nullable": True}})}},
    }),
    "CountryList": _object({"results": {"type": "array", "items": _object({
        "code": COUNTRY, "name": {"type": "string"}, "n_students": COUNT, "n_schools": COUNT,
        "freshness": ref("Freshness"), "version": {"type": "integer"},
    })}}),
    "Distribution": _object({
        "variable": _object({"name": {"type": "string"}, "label": {"type": "string"}, "kind": {"type": "string"},
                             "format_spss": {"type": "string"}}),
        "note": {"type": "string"},
        "computed_at": {"type": "object", "additionalProperties": {"type": "number"},
                        "description": "country -> when its distribution was computed (epoch seconds)"},
        "countries": {"type": "array", "items": _object({
            "country": COUNTRY,
            "students": COUNT,
            "valid": COUNT,
            "missing": {"type": "array", "items": _object({
                "reason": {"type": "string"}, "students": COUNT, "weighted_percent_of_all": NUMBER_OR_NULL})},
            "categories": {"type": "array", "items": _object({
                "value": {"anyOf": [{"type": "number"}, {"type": "string"}]},
                "label": {"type": "string"},
                "students": COUNT,
                "weighted_percent": ref("Estimate"),
            }), "description": "categorical and text variables"},
            "continuous": {**_object({name: ref("Estimate") for name in ("mean", "sd", "p10", "p50", "p90")}),
                           "description": "numeric variables"},
        }, required=["country", "students", "valid", "missing"])},
    }),
    "AnalysisEstimate": _object({
        "value": NUMBER_OR_NULL, "se": NUMBER_OR_NULL, "students": COUNT, "schools": COUNT,
        "flagged": {"type": "boolean", "description": "fewer than 30 students or 5 schools"},
        "flag_reason": STRING_OR_NULL,
        "undefined": {**STRING_OR_NULL, "description": "why value is null (one student, no variation, no student)"},
    }),
    "AnalysisDifference": _object({
        "value": NUMBER_OR_NULL, "se": NUMBER_OR_NULL,
        "significant": {"type": "boolean", "nullable": True, "description": "|difference| > 1.96 SE"},
        "undefined": STRING_OR_NULL,
    }, required=["value", "se", "significant"]),
    "Analysis": _object({
        "analysis": _object({"statistic": {"type": "string"}, "target": {"type": "string"},
                             "by": {"type": "array", "items": {"type": "string"}},
                             "countries": {"type": "array", "items": COUNTRY},
                             "compare": {"type": "array", "items": {"type": "string"}},
                             "predictor": STRING_OR_NULL}),
        "key": {"type": "string"},
        "figures": {"type": "array", "items": {"type": "string"}},
        "breakdown": {"type": "array", "items": _object({
            "variable": {"type": "string"}, "label": {"type": "string"},
            "groups": {"type": "array", "items": _object({"code": {"type": "number"}, "label": {"type": "string"}})}})},
        "countries": {"type": "object", "additionalProperties": _object({
            "students": COUNT, "oecd_member": {"type": "boolean"},
            "cells": {"type": "array", "items": _object({
                "group": {"type": "array", "items": {"type": "number"}},
                "figures": {"type": "object", "additionalProperties": ref("AnalysisEstimate")}})},
            "within_country_differences": {"type": "array", "items": {"allOf": [ref("AnalysisDifference"), _object({
                "group": {"type": "array", "items": {"type": "number"}},
                "versus": {"type": "array", "items": {"type": "number"}}, "figure": {"type": "string"}})]}},
            "missing_breakdown": {"type": "object"},
        }, required=["students", "oecd_member", "cells", "within_country_differences"])},
        "averages": {"type": "array", "items": _object({
            "of": {"type": "string", "enum": ["average", "oecd"]}, "group": {"type": "array"},
            "figure": {"type": "string"}, "value": NUMBER_OR_NULL, "se": NUMBER_OR_NULL, "countries": COUNT})},
        "comparisons": {"type": "array", "items": {"allOf": [ref("AnalysisDifference"), _object({
            "country": COUNTRY, "versus": {"type": "string"}, "group": {"type": "array"},
            "figure": {"type": "string"}})]}},
        "computed_at": {"type": "object", "additionalProperties": {"type": "number"}},
    }, required=["analysis", "key", "figures", "countries", "averages", "comparisons"]),
    "AnalysisComputing": _computing("key"),
    "DistributionComputing": _computing("variable"),
}

FORAGE_RESPONSES = {
    "submissions": _object({"count": COUNT}),
    "submissions-over-time": _object({"datasets": {"type": "array", "items": _object({
        "id": {"type": "string", "enum": ["Submissions"]},
        "data": {"type": "array", "items": _object({"x": {"type": "string", "pattern": "^[0-2][0-9]:00$"},
                                                     "y": COUNT})},
    })}}),
    "learning-hours": _object({"datasets": {"type": "array", "items": _object({
        "country": COUNTRY, "hours": NUMBER_OR_NULL})}}),
    "escs": _object({"datasets": {"type": "array", "items": _object({"id": COUNTRY, "value": NUMBER_OR_NULL})}}),
    "early-education-belonging": _object({"datasets": {"type": "array", "items": _object({
        "id": COUNTRY,
        "data": {"type": "array", "items": _object({"x": NUMBER_OR_NULL, "y": NUMBER_OR_NULL, "submissions": COUNT})},
    })}}),
}

COUNTRIES_PATTERN = f"^({COUNTRY_CODE}(,{COUNTRY_CODE})*)?$"


def countries_parameter(description: str) -> OpenApiParameter:
    return OpenApiParameter(
        "countries", {"type": "string", "pattern": COUNTRIES_PATTERN,
                      "maxLength": MAX_COUNTRIES * 9 - 1},  # 100 codes of up to 8 letters and their commas
        description=f"{description} Comma-separated upper-case PISA country codes, e.g. ALB,ARG; at most "
                    f"{MAX_COUNTRIES}. A code that is neither in the codebook nor has data is a 400.",
        required=False)

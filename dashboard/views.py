"""The dashboard page: one template; every figure on it comes from the project's API, polled by its scripts (dashboard/static/dashboard/js/)."""

from __future__ import annotations

from django.shortcuts import render
from django.urls import reverse

from dashboard.selectors import MAP_POINTS, country_map_codes

POLL_SECONDS = 1
# No answer from the API for this long: the page says it is unreachable (one missed poll is not an outage).
UNREACHABLE_AFTER_SECONDS = 3
# A source with no successful sync for this long (they run every second) makes the page say its data may be stale.
STALE_AFTER_SECONDS = 30
# Where the explorer (js/explorer.js) puts the variable's name in the distribution URL.
VARIABLE_PLACEHOLDER = "__name__"


def dashboard_page(request):
    config = {
        "pollSeconds": POLL_SECONDS,
        "unreachableAfterSeconds": UNREACHABLE_AFTER_SECONDS,
        "staleAfterSeconds": STALE_AFTER_SECONDS,
        "urls": {
            "metrics": reverse("metrics"),
            "countries": reverse("country-list"),
            "sources": reverse("source-status-list"),
            "variables": reverse("codebook-variable-list"),
            "distribution": reverse("variable-distribution", kwargs={"name": VARIABLE_PLACEHOLDER}),
            "analyses": reverse("analyses"),
        },
        "mapCodes": country_map_codes(),
        "mapPoints": MAP_POINTS,
    }
    return render(request, "dashboard/index.html", {"dashboard_config": config})

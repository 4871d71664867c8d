"""The dashboard page: one template; every figure on it comes from the project's API, polled by dashboard.js."""

from __future__ import annotations

from django.shortcuts import render
from django.urls import reverse

from dashboard.selectors import MAP_POINTS, country_map_codes

POLL_SECONDS = 1
# No answer from the API for this long: the page says it is unreachable (one missed poll is not an outage).
UNREACHABLE_AFTER_SECONDS = 3
# A source whose newest loaded row is this far behind its database, or with no successful sync for this long.
STALE_AFTER_SECONDS = 30


def dashboard_page(request):
    config = {
        "pollSeconds": POLL_SECONDS,
        "unreachableAfterSeconds": UNREACHABLE_AFTER_SECONDS,
        "staleAfterSeconds": STALE_AFTER_SECONDS,
        "urls": {
            "metrics": reverse("metrics"),
            "countries": reverse("country-list"),
            "sources": "/api/v1/sources/",
            "variables": reverse("codebook-variable-list"),
            "distribution": "/api/v1/variables/{name}/distribution/",
        },
        "mapCodes": country_map_codes(),
        "mapPoints": MAP_POINTS,
    }
    return render(request, "dashboard/index.html", {"dashboard_config": config})

"""The dashboard page: one template; every figure on it comes from the project's API, polled by its scripts (dashboard/static/dashboard/js/)."""

from __future__ import annotations

import re

from django.conf import settings
from django.shortcuts import render
from django.urls import reverse

from dashboard.selectors import MAP_POINTS, country_map_codes

POLL_SECONDS = 1
# With the change stream up (it pushes the metrics and the sources' status), the page still polls this often: a
# safety net, and how soon the page notices the API is gone while the stream server still answers.
STREAMING_POLL_SECONDS = 5
# No answer from the API for this long: the page says it is unreachable (one missed poll is not an outage).
UNREACHABLE_AFTER_SECONDS = 3
# A source with no successful sync for this long (they run every second) makes the page say its data may be stale.
STALE_AFTER_SECONDS = 30
# Where the explorer (js/explorer.js) puts the variable's name in the distribution URL.
VARIABLE_PLACEHOLDER = "__name__"


def stream_url(request) -> str | None:
    """Where this page opens the change stream (settings.STREAM_URL / STREAM_PORT), or None: it polls."""
    if settings.STREAM_URL:
        return settings.STREAM_URL
    if settings.STREAM_PORT:
        host = re.sub(r":\d+$", "", request.get_host())
        return f"//{host}:{settings.STREAM_PORT}{reverse('stream')}"
    return None


def dashboard_page(request):
    config = {
        "pollSeconds": POLL_SECONDS,
        "streamingPollSeconds": STREAMING_POLL_SECONDS,
        "unreachableAfterSeconds": UNREACHABLE_AFTER_SECONDS,
        "staleAfterSeconds": STALE_AFTER_SECONDS,
        "urls": {
            "metrics": reverse("metrics"),
            "countries": reverse("country-list"),
            "sources": reverse("source-status-list"),
            "variables": reverse("codebook-variable-list"),
            "distribution": reverse("variable-distribution", kwargs={"name": VARIABLE_PLACEHOLDER}),
            "analyses": reverse("analyses"),
            "stream": stream_url(request),
        },
        "mapCodes": country_map_codes(),
        "mapPoints": MAP_POINTS,
    }
    return render(request, "dashboard/index.html", {"dashboard_config": config})

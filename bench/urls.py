"""bench/wsgi.py's URLs: the project's, plus two baselines that answer constant bytes with no work at all.

The project's patterns are spliced in, not `include`d: an include would put the polled URLs one resolver deeper than
in pisa_site/urls.py, a cost (a nested resolve and its ResolverMatch) production does not pay. The baselines come
first, so they are resolved by the first pattern tried, as the polled URLs are in production.
"""

import functools

from django.http import HttpResponse
from django.urls import path

from bench.common import CONSTANT_LARGE_BYTES
from pisa_site.urls import urlpatterns as project_urlpatterns

CONSTANT = b'{"constant": true}'
# As large as the 20-country metrics body, so that a 200's cost of moving bytes is compared like for like.
CONSTANT_LARGE = b'{"padding": "' + b"x" * (CONSTANT_LARGE_BYTES - 15) + b'"}'


def constant(request):
    return HttpResponse(CONSTANT, content_type="application/json")


def constant_large(request):
    return HttpResponse(CONSTANT_LARGE, content_type="application/json")


@functools.cache
def _padding(size: int) -> bytes:
    return b'{"padding": "' + b"x" * max(size - 15, 0) + b'"}'


def constant_of(request, size: int):
    """`size` bytes of body (bench.load's floor for a URL whose answers are that large)."""
    return HttpResponse(_padding(min(size, 10_000_000)), content_type="application/json")


urlpatterns = [
    path("bench/constant/", constant),
    path("bench/constant-large/", constant_large),
    path("bench/constant-of/<int:size>/", constant_of),
    *project_urlpatterns,
]

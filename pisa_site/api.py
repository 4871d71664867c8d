"""What every API view shares: the check of the query parameters it takes, and the shape of an error.

Every query parameter is validated: a name the URL does not take, or one given twice, is a 400 that says so, rather
than being ignored (a misspelt `?contries=ALB` would otherwise silently answer for every country).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Collection

from django.http import HttpResponse, HttpResponseNotModified, JsonResponse, QueryDict
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from pisa_site.compression import GZIP_MIN_BYTES, accepts_gzip, gzip_once, weak
from pisa_site.errors import BadInput, NotFound

MAX_NAMES_SHOWN = 5
MAX_NAME_LENGTH = 40
CACHE_CONTROL = "no-cache"


class ErrorSerializer(serializers.Serializer):
    """The body of every 400 and 404 the API answers with (OpenAPI component `Error`)."""

    error = serializers.CharField(help_text="What was wrong with the request, in words")


# What the views that answer with an ETag declare in the OpenAPI schema.
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="The ETag of the answer you hold: 304 Not Modified, with no body, until the data changes")
ETAG_HEADERS = [
    OpenApiParameter("ETag", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 304],
                     description="Send it back in If-None-Match"),
    OpenApiParameter("Cache-Control", {"type": "string", "enum": ["no-cache"]}, OpenApiParameter.HEADER,
                     response=[200, 304], description="Keep the answer, but revalidate it every time"),
]
NOT_MODIFIED = OpenApiResponse(description="Not modified since the ETag sent in If-None-Match (no body)")


# DRF reads `?format=json|api` itself (and refuses other values with a 404) on the DRF views.
DRF_QUERY_PARAMETERS = ("format",)


def query_problem(query: QueryDict, allowed: Collection[str], *,
                  unmentioned: Collection[str] = DRF_QUERY_PARAMETERS) -> str | None:
    """Why the API refuses these query parameters, or None when it takes them: names it does not know (DRF's own
    `format` switch aside, see `DRF_QUERY_PARAMETERS`), or a name given more than once."""
    unknown = []
    for name, values in query.lists():
        if name not in allowed:
            unknown.append(name)
        elif len(values) > 1:
            return f"{_shown(name)} is given {len(values)} times: give it once"
    if not unknown:
        return None
    names = ", ".join(_shown(name) for name in unknown[:MAX_NAMES_SHOWN]) + (" ..." if len(unknown) > MAX_NAMES_SHOWN
                                                                          else "")
    takes = ", ".join(sorted(set(allowed) - set(unmentioned))) or "no query parameters"
    return f"unknown query parameter(s): {names} (this URL takes {takes})"


def _shown(name: str) -> str:
    return repr(name if len(name) <= MAX_NAME_LENGTH else name[:MAX_NAME_LENGTH] + "...")


class PublicApi(APIView):
    """Read-only, anonymous, no session or CSRF work on the hot path."""

    authentication_classes: list = []
    permission_classes = [AllowAny]


class FormatParameterIsOurs(DefaultContentNegotiation):
    """For views that read `?format=` themselves (json or csv, refused with a 400 otherwise): DRF's negotiation
    would answer an unknown format with a 404 of its own."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class StaffPermission(BasePermission):
    """Active staff holding `StaffApi.required_permission` (superusers hold every permission)."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_active and user.is_staff and user.has_perm(view.required_permission))


class StaffApi(APIView):
    """Read-only, for staff holding `required_permission`: logged in to the admin (its session cookie) or sending
    HTTP Basic credentials (a script). Anonymous callers get a 401, others a 403, both as `{"error": ...}`."""

    authentication_classes = [BasicAuthentication, SessionAuthentication]  # Basic first: its 401 says how to log in
    permission_classes = [StaffPermission]
    required_permission = ""



def fast_path(api_class: type[APIView]):
    """Serve a polled endpoint with a plain Django view (fast path: no DRF request wrapping, content negotiation or
    permission checks, about 65 us a request) while `api_class`, whose `get` does the same, describes it in the
    OpenAPI schema (drf-spectacular reads `cls` on the URL's callback). Its refusals answer as a DRF view's do."""

    def decorate(function):
        if inspect.iscoroutinefunction(function):  # an async view (the stream), served as such under ASGI
            @functools.wraps(function)
            async def view(request, *args, **kwargs):
                try:
                    return await function(request, *args, **kwargs)
                except (BadInput, NotFound) as exc:
                    return refusal_response(exc)
        else:
            @functools.wraps(function)
            def view(request, *args, **kwargs):
                try:
                    return function(request, *args, **kwargs)
                except (BadInput, NotFound) as exc:
                    return refusal_response(exc)

        view.cls = api_class
        view.initkwargs = {}
        view.csrf_exempt = True
        return view

    return decorate


def refusal_response(exc: BadInput | NotFound) -> JsonResponse:
    return JsonResponse({"error": str(exc)}, status=404 if isinstance(exc, NotFound) else 400)


def exception_handler(exc, context):
    """The one error path of the DRF views (settings.REST_FRAMEWORK): a domain refusal is a 400 or a 404, and DRF's own
    errors (authentication, permissions, parsing) keep their status; every one answers `{"error": message}`."""
    if isinstance(exc, (BadInput, NotFound)):
        return refusal_response(exc)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        response.data = {"error": str(response.data["detail"])}
    return response


def query_check(query: QueryDict, allowed: Collection[str], *,
                unmentioned: Collection[str] = DRF_QUERY_PARAMETERS) -> None:
    """Raise BadInput when the API does not take these query parameters (see `query_problem`)."""
    if problem := query_problem(query, allowed, unmentioned=unmentioned):
        raise BadInput(problem)


def not_modified_or(request, etag: str, build) -> Response:
    """A DRF view's answer with an ETag: an empty 304 when the client holds `etag`, else `build()`."""
    if request.headers.get("If-None-Match") == etag:
        response = Response(status=304)
    else:
        response = build()
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL  # clients may keep it, but must revalidate
    return response


def method_not_allowed() -> JsonResponse:
    return JsonResponse({"error": "method not allowed"}, status=405)


ANSWER_FORMATS = ("json", "csv")


def answer_format(query: QueryDict) -> str:
    """`?format=`: json (when absent) or csv (the tidy table of metrics/tables.py), else (empty too) a 400."""
    form = query.get("format", "json")
    if form not in ANSWER_FORMATS:
        raise BadInput(f"format {form[:20]!r}: say json or csv")
    return form


def cached_csv(request, etag: str, body, *, filename: str) -> HttpResponse:
    """`cached_json` for a CSV body: a download named `filename`."""
    response = cached_json(request, etag, body)
    if response.status_code == 200:
        response["Content-Type"] = "text/csv; charset=utf-8"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def cached_json(request, etag: str, body) -> HttpResponse:
    """200 with `body` (bytes, or a function making them), gzipped once per ETag for a client that accepts it
    (pisa_site/compression.py), or an empty 304 when the client holds `etag` (either form)."""
    # META, not request.headers: that builds a dict of every header on first use, for the one header wanted here.
    # A substring test: the client's W/"x" (a gzipped answer's) holds "x", and so does a list of ETags.
    gzipped = accepts_gzip(request.META.get("HTTP_ACCEPT_ENCODING", ""))
    if etag in request.META.get("HTTP_IF_NONE_MATCH", ""):
        response = HttpResponseNotModified()
    else:
        content = body() if callable(body) else body
        gzipped = gzipped and len(content) >= GZIP_MIN_BYTES
        response = HttpResponse(gzip_once(etag, content) if gzipped else content, content_type="application/json")
        if gzipped:
            response["Content-Encoding"] = "gzip"
    response["ETag"] = weak(etag) if gzipped else etag
    response["Vary"] = "Accept-Encoding"
    response["Cache-Control"] = CACHE_CONTROL
    return response

"""The metrics API. Thin: parse parameters, ask the selectors, answer 200 with cached bytes or 304.

Every response carries a strong ETag and `Cache-Control: no-cache`, so a dashboard polling every second revalidates
each time and mostly gets an empty `304 Not Modified`.
"""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseNotModified, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from metrics import selectors

COUNTRIES_PARAMETER = OpenApiParameter(
    "countries", OpenApiTypes.STR, description="Comma-separated upper-case country codes, e.g. ALB,ARG. "
    "Default: every country with data.", required=False)
CACHE_CONTROL = "no-cache"


def bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


def cached_json(request, etag: str, body) -> HttpResponse:
    # META, not request.headers: that builds a dict of every header on first use, for the one header wanted here.
    if etag in request.META.get("HTTP_IF_NONE_MATCH", ""):
        response = HttpResponseNotModified()
    else:
        response = HttpResponse(body() if callable(body) else body, content_type="application/json")
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL
    return response


class PublicApi(APIView):
    """Read-only, anonymous, no session or CSRF work on the hot path."""

    authentication_classes: list = []
    permission_classes = [AllowAny]


def fast_path(api_class: type[APIView]):
    """Serve a polled endpoint with a plain Django view (fast path: no DRF request wrapping, content negotiation or
    permission checks, about 65 us a request) while `api_class`, whose `get` does the same, describes it in the
    OpenAPI schema (drf-spectacular reads `cls` on the URL's callback)."""

    def decorate(function):
        function.cls = api_class
        function.initkwargs = {}
        function.csrf_exempt = True
        return function

    return decorate


def _query(request) -> str:
    return request.META.get("QUERY_STRING", "")


def _metrics(request) -> HttpResponse:
    try:
        countries, etag = selectors.view_lookup("metrics", _query(request), lambda: request.GET.get("countries"),
                                                with_labels=True)
    except selectors.InvalidParameter as exc:
        return bad_request(str(exc))
    return cached_json(request, etag, lambda: selectors.metrics_view(countries, etag))


class MetricsApi(PublicApi):
    @extend_schema(
        parameters=[COUNTRIES_PARAMETER],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="Every statistic of the countries shown, "
                                        "their average, labels and freshness (docs/metrics.md)"),
                   304: OpenApiResponse(description="Not modified since the ETag sent in If-None-Match"),
                   400: OpenApiResponse(OpenApiTypes.OBJECT, description="Bad parameter")},
    )
    def get(self, request):
        return _metrics(request)


@fast_path(MetricsApi)
def metrics_fast(request):
    if request.method != "GET":
        return JsonResponse({"error": "method not allowed"}, status=405)
    return _metrics(request)


class CountryListApi(PublicApi):
    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="Countries with data")})
    def get(self, request):
        return JsonResponse({"results": selectors.countries_overview()})


class CountryDetailApi(PublicApi):
    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="One country's statistics"),
                              404: OpenApiResponse(OpenApiTypes.OBJECT, description="No data for that country")})
    def get(self, request, code: str):
        document = selectors.country_document(code.upper())
        if document is None:
            return JsonResponse({"error": f"no data for country {code!r}"}, status=404)
        return JsonResponse(document)


def _forage(request, chart: str) -> HttpResponse:
    every_country = chart in selectors.FORAGE_ALL_COUNTRIES
    try:
        countries, etag = selectors.view_lookup(
            f"forage:{chart}", "" if every_country else _query(request),
            lambda: None if every_country else request.GET.get("countries"), with_labels=False)
    except selectors.InvalidParameter as exc:
        return bad_request(str(exc))
    return cached_json(request, etag, lambda: selectors.forage_bytes(chart, countries, etag))


class ForageApi(PublicApi):
    """The course dashboard's five URLs, field for field (shared/forage/API.md)."""

    chart: str = ""

    @extend_schema(parameters=[COUNTRIES_PARAMETER],
                   responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 304: OpenApiResponse(),
                              400: OpenApiResponse(OpenApiTypes.OBJECT)})
    def get(self, request):
        return _forage(request, self.chart)


def forage_fast(chart: str):
    @fast_path(ForageApi)
    def view(request):
        if request.method != "GET":
            return JsonResponse({"error": "method not allowed"}, status=405)
        return _forage(request, chart)

    view.initkwargs = {"chart": chart}
    return view


class VariableDistributionApi(PublicApi):
    @extend_schema(parameters=[COUNTRIES_PARAMETER],
                   responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="Weighted distribution by country"),
                              304: OpenApiResponse(),
                              400: OpenApiResponse(OpenApiTypes.OBJECT, description="Bad country list"),
                              404: OpenApiResponse(OpenApiTypes.OBJECT, description="Not a codebook variable")})
    def get(self, request, name: str):
        try:
            countries = selectors.countries_parse(request.GET.get("countries"))
        except selectors.InvalidParameter as exc:
            return bad_request(str(exc))
        try:
            etag = selectors.distribution_etag(name, countries)
        except selectors.UnknownVariable as exc:
            return JsonResponse({"error": str(exc)}, status=404)
        return cached_json(request, etag, lambda: selectors.distribution_bytes(name, countries, etag))

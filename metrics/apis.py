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
    if etag in request.headers.get("If-None-Match", ""):
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


class MetricsApi(PublicApi):
    @extend_schema(
        parameters=[COUNTRIES_PARAMETER],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="Every statistic of the countries shown, "
                                        "their average, labels and freshness (docs/metrics.md)"),
                   304: OpenApiResponse(description="Not modified since the ETag sent in If-None-Match"),
                   400: OpenApiResponse(OpenApiTypes.OBJECT, description="Bad parameter")},
    )
    def get(self, request):
        try:
            countries = selectors.countries_parse(request.GET.get("countries"))
        except selectors.InvalidParameter as exc:
            return bad_request(str(exc))
        etag = selectors.metrics_etag(countries)
        return cached_json(request, etag, lambda: selectors.metrics_view(countries, etag))


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


class ForageApi(PublicApi):
    """The course dashboard's five URLs, field for field (shared/forage/API.md)."""

    chart: str = ""

    @extend_schema(parameters=[COUNTRIES_PARAMETER],
                   responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 304: OpenApiResponse(),
                              400: OpenApiResponse(OpenApiTypes.OBJECT)})
    def get(self, request):
        raw = None if self.chart in selectors.FORAGE_ALL_COUNTRIES else request.GET.get("countries")
        try:
            countries = selectors.countries_parse(raw)
        except selectors.InvalidParameter as exc:
            return bad_request(str(exc))
        etag = selectors.forage_etag(self.chart, countries)
        return cached_json(request, etag, lambda: selectors.forage_bytes(self.chart, countries, etag))


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

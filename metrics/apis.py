"""The metrics API. Thin: parse parameters, ask the selectors, answer 200 with cached bytes or 304.

Every response carries a strong ETag and `Cache-Control: no-cache`, so a dashboard polling every second revalidates
each time and mostly gets an empty `304 Not Modified`.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema

from metrics import selectors, services
from metrics.openapi import FORAGE_RESPONSES, countries_parameter, ref
from pisa_site import stream
from pisa_site.edge import edge_mark
from pisa_site.errors import BadInput, NotFound
from pisa_site.api import (ETAG_HEADERS, FormatParameterIsOurs, IF_NONE_MATCH, NOT_MODIFIED, ErrorSerializer, PublicApi,
                           answer_format, cached_csv, cached_json, fast_path, method_not_allowed, query_check)

COUNTRIES_PARAMETER = countries_parameter("Absent or empty: every country with data.")
COUNTRIES_ONLY = frozenset({"countries"})
COUNTRIES_AND_FORMAT = frozenset({"countries", "format"})
METRICS_PARAMETERS = frozenset({"countries", "format", "figures"})
FORMAT_PARAMETER = OpenApiParameter("format", str, enum=["json", "csv"], description=(
    "csv: the same answer as a tidy table, one row per country x group x figure "
    "(docs/metrics.md, 'Every answer as a CSV')"))
FIGURES_PARAMETER = OpenApiParameter("figures", str, description=(
    "format=csv only: the figures to keep, comma-separated dotted names and every figure under them "
    "(scores.READ.mean, scores.MATH, background.escs, submissions_by_hour_of_day); absent: all"))


def csv_response(description: str) -> dict:
    return {(200, "text/csv"): OpenApiResponse({"type": "string"}, description=description)}


BAD_REQUEST = OpenApiResponse(ErrorSerializer, description="A query parameter the API does not take, or a bad value")


# How long the edge (pisa_site/edge.py) may keep a polled answer at most: changes of its countries drop it at once;
# this bounds what is not announced (a codebook label edited in the admin).
EDGE_MAX_AGE_SECONDS = 1.0


def _query(request) -> str:
    return request.META.get("QUERY_STRING", "")


def _metrics(request) -> HttpResponse:
    if request.GET:
        query_check(request.GET, METRICS_PARAMETERS, unmentioned=())
        if answer_format(request.GET) == "csv":
            return _metrics_csv(request)
        if "figures" in request.GET:
            raise BadInput("figures: only with format=csv (the JSON is always the whole document)")
    asked = request.GET.get("countries")
    countries, etag = selectors.view_lookup("metrics", _query(request), lambda: asked, with_labels=True)
    response = cached_json(request, etag, lambda: selectors.metrics_view(countries, etag))
    edge_mark(request, response, countries=countries if asked else None, max_age=EDGE_MAX_AGE_SECONDS)
    return response


def _metrics_csv(request) -> HttpResponse:
    figures = selectors.metrics_figures_parse(request.GET.get("figures"))
    countries, etag = selectors.view_lookup(f"metrics:csv:{','.join(figures)}", _query(request),
                                            lambda: request.GET.get("countries"), with_labels=True)
    return cached_csv(request, etag, lambda: selectors.metrics_csv_bytes(countries, figures),
                      filename="pisa-metrics.csv")


class MetricsApi(PublicApi):
    content_negotiation_class = FormatParameterIsOurs

    @extend_schema(
        parameters=[COUNTRIES_PARAMETER, FORMAT_PARAMETER, FIGURES_PARAMETER, IF_NONE_MATCH, *ETAG_HEADERS],
        responses={(200, "application/json"): OpenApiResponse(ref("Metrics"), description=(
                       "Every statistic of the countries shown, their average, labels and freshness "
                       "(docs/metrics.md)")),
                   **csv_response("format=csv: the figures as a tidy table"), 304: NOT_MODIFIED, 400: BAD_REQUEST},
    )
    def get(self, request):
        return _metrics(request)


@fast_path(MetricsApi)
def metrics_fast(request):
    if request.method != "GET":
        return method_not_allowed()
    return _metrics(request)


STREAM_RETRY_AFTER_SECONDS = 5


class MetricsStreamApi(PublicApi):
    @extend_schema(
        operation_id="v1_stream",
        parameters=[countries_parameter("The countries whose changes to announce; absent or empty: every country.")],
        responses={(200, "text/event-stream"): OpenApiResponse({"type": "string"}, description=(
                       "Server-sent events (docs/scaling.md, 'The stream'): `ready` once; then `metrics` "
                       "`{\"countries\": [...], \"etag\": ..., \"gzip\": ...}` within milliseconds of a change to "
                       "those countries' documents, `gzip` being the base64 gzip of the metrics URL's answer for them "
                       "and `etag` its ETag (absent when it could not be built: GET the metrics URL); `sources` "
                       "`{\"etag\": ..., \"gzip\": ...}` (GET /api/v1/sources/'s answer) every 5 s when it changed; "
                       "`resync` after a gap in which changes may have been missed (GET again); and `heartbeat` "
                       "every 5 s on a quiet stream")),
                   400: BAD_REQUEST,
                   404: OpenApiResponse(ErrorSerializer, description=(
                       "Asked of the WSGI server: the stream has its own server (STREAM_PORT or STREAM_URL)")),
                   503: OpenApiResponse(ErrorSerializer, description=(
                       "This web process holds its most streams, or cannot reach Redis: poll instead, and try the "
                       "stream again after Retry-After"))},
    )
    def get(self, request):  # pragma: no cover - the schema's; the URL serves metrics_stream
        raise NotImplementedError


@fast_path(MetricsStreamApi)
async def metrics_stream(request):
    """Tells a dashboard when a document it shows changed (pisa_site/stream.py); served by the ASGI workers."""
    if request.method != "GET":
        return method_not_allowed()
    countries = await sync_to_async(selectors.stream_countries_parse)(request.GET)
    if not isinstance(request, ASGIRequest):  # a WSGI thread would be held for as long as the viewer watches
        raise NotFound("the stream is served by the stream server (gunicorn pisa_site.asgi --worker-class asgi, "
                       "on STREAM_PORT: docs/scaling.md), not by this one")
    hub = stream.change_hub()
    viewer = stream.Viewer(countries)
    if hub.full() or not await hub.join(viewer):
        response = JsonResponse({"error": "no stream available here now: poll the metrics URL"}, status=503)
        response["Retry-After"] = str(STREAM_RETRY_AFTER_SECONDS)
        return response
    response = StreamingHttpResponse(stream.viewer_events(hub, viewer), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx and the like: pass each event on at once
    # Public data, no credentials: any page may listen, the dashboard included when the stream has its own port.
    response["Access-Control-Allow-Origin"] = "*"
    return response


class CountryListApi(PublicApi):
    @extend_schema(operation_id="v1_countries_list",
                   responses={200: OpenApiResponse(ref("CountryList"), description="Countries with data"),
                              400: BAD_REQUEST})
    def get(self, request):
        return _country_list(request)


def _country_list(request) -> HttpResponse:
    if request.GET:
        query_check(request.GET, ())
    # Polled like the metrics (the freshness monitors every 50 ms): made once per set of versions and labels.
    _, etag = selectors.view_lookup("countries", "", lambda: None, with_labels=True)
    response = cached_json(request, etag, lambda: selectors.countries_overview_bytes(etag))
    edge_mark(request, response, countries=None, max_age=EDGE_MAX_AGE_SECONDS)
    return response


@fast_path(CountryListApi)
def country_list_fast(request):
    if request.method != "GET":
        return method_not_allowed()
    return _country_list(request)


class CountryDetailApi(PublicApi):
    @extend_schema(responses={200: OpenApiResponse(ref("CountryDocument"), description="One country's statistics"),
                              400: BAD_REQUEST,
                              404: OpenApiResponse(ErrorSerializer, description="No data for that country")})
    def get(self, request, code: str):
        query_check(request.GET, ())
        document = selectors.country_document(code.upper())
        if document is None:
            raise NotFound(f"no data for country {code[:60]!r}")
        return JsonResponse(document)


def _forage(request, chart: str) -> HttpResponse:
    if request.GET:
        query_check(request.GET, COUNTRIES_ONLY)
    every_country = chart in selectors.FORAGE_ALL_COUNTRIES
    if every_country and (raw := request.GET.get("countries")):
        selectors.countries_parse(raw)  # checked like everywhere else, but these two charts are over every country
    countries, etag = selectors.view_lookup(
        f"forage:{chart}", "" if every_country else _query(request),
        lambda: None if every_country else request.GET.get("countries"), with_labels=False)
    return cached_json(request, etag, lambda: selectors.forage_bytes(chart, countries, etag))


class ForageApi(PublicApi):
    """The course dashboard's five URLs, field for field (shared/forage/API.md)."""

    chart: str = ""

    def get(self, request):
        return _forage(request, self.chart)


def _forage_api(chart: str) -> type[ForageApi]:
    """ForageApi as the schema describes `chart`: its own response shape, and what `countries` means for it."""
    if chart in selectors.FORAGE_ALL_COUNTRIES:
        countries = countries_parameter("Accepted for the course dashboard's sake and checked, but this chart is "
                                        "always over every country with data.")
    else:
        countries = COUNTRIES_PARAMETER

    @extend_schema(
        operation_id=f"forage_{chart.replace('-', '_')}", summary=f"The course dashboard's {chart} chart",
        parameters=[countries, IF_NONE_MATCH, *ETAG_HEADERS],
        responses={200: OpenApiResponse(FORAGE_RESPONSES[chart]), 304: NOT_MODIFIED, 400: BAD_REQUEST},
    )
    def get(self, request):  # a function of its own: extend_schema annotates the function it decorates
        return _forage(request, self.chart)

    return type(f"Forage{chart.title().replace('-', '')}Api", (ForageApi,), {"chart": chart, "get": get})


FORAGE_APIS = {chart: _forage_api(chart) for chart in selectors.FORAGE_CHARTS}


def forage_fast(chart: str):
    @fast_path(FORAGE_APIS[chart])
    def view(request):
        if request.method != "GET":
            return method_not_allowed()
        return _forage(request, chart)

    view.initkwargs = {"chart": chart}
    return view


DISTRIBUTION_RETRY_AFTER_SECONDS = 2
COMPUTING = OpenApiResponse(ref("DistributionComputing"), description=(
    "Some countries' distribution is being computed (by the analysis worker, never in the request): ask again "
    "after Retry-After seconds"))


class VariableDistributionApi(PublicApi):
    content_negotiation_class = FormatParameterIsOurs

    @extend_schema(parameters=[COUNTRIES_PARAMETER, FORMAT_PARAMETER, IF_NONE_MATCH, *ETAG_HEADERS],
                   responses={(200, "application/json"): OpenApiResponse(
                                  ref("Distribution"), description="Weighted distribution by country"),
                              **csv_response("format=csv: the distribution as a tidy table"),
                              202: COMPUTING, 304: NOT_MODIFIED, 400: BAD_REQUEST,
                              404: OpenApiResponse(ErrorSerializer, description="Not a codebook variable")})
    def get(self, request, name: str):
        query_check(request.GET, COUNTRIES_AND_FORMAT, unmentioned=())
        form = answer_format(request.GET)
        countries = selectors.countries_parse(request.GET.get("countries"))
        variable, entries, due = selectors.distribution_lookup(name, countries)
        if due:
            services.distributions_request(variable=variable["name"], countries=due)
        computing = [country for country in countries if country not in entries]
        if computing:
            response = JsonResponse({"status": "computing", "variable": variable["name"],
                                     "ready": [c for c in countries if c in entries], "computing": computing,
                                     "retry_after_seconds": DISTRIBUTION_RETRY_AFTER_SECONDS}, status=202)
            response["Retry-After"] = str(DISTRIBUTION_RETRY_AFTER_SECONDS)
            response["Cache-Control"] = "no-store"
            return response
        etag = selectors.distribution_etag(variable, countries, entries, form=form)
        if form == "csv":
            return cached_csv(request, etag, lambda: selectors.distribution_csv_bytes(variable, countries, entries),
                              filename=f"pisa-distribution-{variable['name']}.csv")
        return cached_json(request, etag, lambda: selectors.distribution_bytes(variable, countries, entries, etag))


ANALYSIS_RETRY_AFTER_SECONDS = 1
ANALYSIS_PARAMETERS = [
    OpenApiParameter("statistic", str, description="mean (default), sd, percentiles, percent, levels, correlation, "
                     "slope"),
    OpenApiParameter("target", str, required=True, description="a domain (READ, MATH, SCIE, RCLI, RCUN, RCER, RTSN, "
                     "RTML, GLCM) or a codebook variable: continuous for mean/sd/percentiles/correlation/slope, "
                     "categorical for percent"),
    OpenApiParameter("by", str, description="up to two categorical variables, crossed (IMMIG,ST004D01T), or a "
                     "continuous variable's national quarters (ESCS:quarters)"),
    countries_parameter("Absent or empty: every country with data."),
    OpenApiParameter("compare", str, description="average (of the countries shown), oecd (the OECD average) and/or "
                     "country codes: each country's difference from them, with its SE and significance"),
    OpenApiParameter("predictor", str, description="correlation and slope: a continuous variable such as ESCS"),
    FORMAT_PARAMETER,
]


class AnalysisApi(PublicApi):
    content_negotiation_class = FormatParameterIsOurs

    @extend_schema(parameters=[*ANALYSIS_PARAMETERS, IF_NONE_MATCH, *ETAG_HEADERS],
                   responses={(200, "application/json"): OpenApiResponse(ref("Analysis"), description=(
                                  "Estimates, averages and differences (docs/analysis.md)")),
                              **csv_response("format=csv: the same as a tidy table"),
                              202: OpenApiResponse(ref("AnalysisComputing"), description=(
                                  "Being computed by the analysis worker: ask again after Retry-After seconds")),
                              304: NOT_MODIFIED, 400: BAD_REQUEST})
    def get(self, request):
        return _analyses(request)


@fast_path(AnalysisApi)
def analyses_fast(request):
    if request.method != "GET":
        return method_not_allowed()
    return _analyses(request)


def _analyses(request) -> HttpResponse:
    form, query = request.GET.get("format", "json"), request.META.get("QUERY_STRING", "")
    remembered = selectors.analysis_remembered(query, form)
    if remembered is not None:
        spec, entries, etag = remembered
    else:
        spec = selectors.analysis_parse(request.GET)
        answer_format(request.GET)
        entries, missing, due = selectors.analysis_lookup(spec)
        if missing or due:
            missing = services.analysis_entries_bring_up_to_date(spec=spec, entries=entries, missing=missing,
                                                                 due=due)
        if missing:
            response = JsonResponse({"status": "computing", "key": spec.key,
                                     "ready": sorted(entries), "computing": missing,
                                     "retry_after_seconds": ANALYSIS_RETRY_AFTER_SECONDS}, status=202)
            response["Retry-After"] = str(ANALYSIS_RETRY_AFTER_SECONDS)
            response["Cache-Control"] = "no-store"
            return response
        etag = selectors.analysis_etag(spec, entries, form=form)
        selectors.analysis_remember(query, form, spec, entries, etag)
    if form == "csv":
        return cached_csv(request, etag, lambda: selectors.analysis_csv_bytes(spec, entries, etag),
                          filename=f"pisa-analysis-{spec.key}.csv")
    return cached_json(request, etag, lambda: selectors.analysis_bytes(spec, entries, etag))

"""GET /api/v1/sources/: each source's ingestion status (no passwords: URLs are shown with the password hidden), and,
for staff, GET /api/v1/sources/{code}/quarantine/: the rows it could not load, with their reasons and values.

Fast path: every dashboard polls this every second, so each web process renders the list at most once every
INGEST_STATUS_CACHE_SECONDS (0.5 s) and answers everyone in between with the same bytes (or a 304 for its ETag).
A status is therefore at most that much older than the warehouse's, on top of the sync that wrote it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from ingestion.layout import raw_values
from ingestion.selectors import (quarantined_row_get, quarantined_row_list, source_get,
                                 source_statuses)
from ingestion.services import SourceNotFoundError
from pisa_site.api import (DRF_QUERY_PARAMETERS, ETAG_HEADERS, IF_NONE_MATCH, NOT_MODIFIED, ErrorSerializer, PublicApi,
                           StaffApi, cached_json, fast_path, method_not_allowed, query_check)
from pisa_site.compression import gzip_once, weak
from pisa_site.edge import edge_mark
from pisa_site.errors import BadInput
from pisa_site.errors import NotFound as DomainNotFound
from pisa_site.etags import strong_etag
from pisa_site.snapshots import ProcessSnapshot


class SourceStatusSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    url = serializers.CharField(help_text="SQLAlchemy URL with the password hidden")
    poll_interval_seconds = serializers.FloatField()
    rows_loaded = serializers.IntegerField()
    quarantined_count = serializers.IntegerField()
    source_row_count = serializers.IntegerField(allow_null=True)
    newest_created_at = serializers.DateTimeField(allow_null=True)
    lag_seconds = serializers.FloatField(
        help_text="0 when every source row is in the warehouse (or quarantined), else the age of the oldest not loaded")
    rows_behind = serializers.IntegerField(help_text="Source rows not loaded yet")
    idle_seconds = serializers.FloatField(allow_null=True,
                                          help_text="Age of the newest row loaded: a quiet source's grows; not lag")
    last_success_at = serializers.DateTimeField(allow_null=True)
    last_batch_size = serializers.IntegerField()
    last_batch_seconds = serializers.FloatField()
    rows_per_second = serializers.FloatField(allow_null=True)
    figures_error = serializers.CharField(
        allow_blank=True, help_text="Why this country's figures could not be refreshed: they are served as they last "
                                    "were, marked stale, until a refresh succeeds (retried). Empty when fresh.")
    figures_stale_since = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    last_error_at = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    retry_at = serializers.DateTimeField(allow_null=True)


@dataclass(frozen=True)
class RenderedStatuses:
    body: bytes
    etag: str
    expires_at: float  # time.monotonic()


def rendered_statuses() -> RenderedStatuses:
    return _rendered.get()


def _render(_previous: RenderedStatuses | None) -> RenderedStatuses:
    read_at = time.monotonic()
    body = JSONRenderer().render(SourceStatusSerializer(source_statuses(), many=True).data)
    etag = strong_etag(body)
    return RenderedStatuses(body=body, etag=etag, expires_at=read_at + settings.INGEST_STATUS_CACHE_SECONDS)


# One thread of a process renders; the others wait for its bytes.
_rendered: ProcessSnapshot[RenderedStatuses] = ProcessSnapshot(
    _render, lambda rendered: time.monotonic() < rendered.expires_at)


def rendered_statuses_forget() -> None:
    _rendered.forget()


def statuses_pushed(_countries, _fresh) -> tuple[str, bytes]:
    """What the change stream pushes to every viewer (pisa_site/stream.py): the ETag and gzip of GET /sources/."""
    rendered = rendered_statuses()
    return weak(rendered.etag), gzip_once(rendered.etag, rendered.body)


def _statuses(request):
    if request.GET:
        query_check(request.GET, ())
    rendered = rendered_statuses()
    response = cached_json(request, rendered.etag, rendered.body)
    # The same bytes for everyone until the process renders again: kept by the edge as long, whatever changes.
    edge_mark(request, response, countries=(), max_age=max(0.0, rendered.expires_at - time.monotonic()))
    return response


class SourceStatusListApi(PublicApi):
    @extend_schema(parameters=[IF_NONE_MATCH, *ETAG_HEADERS],
                   responses={200: SourceStatusSerializer(many=True), 304: NOT_MODIFIED,
                              400: OpenApiResponse(ErrorSerializer, description="A query parameter (it takes none)")})
    def get(self, request):
        return _statuses(request)


@fast_path(SourceStatusListApi)
def source_status_list_fast(request):
    if request.method != "GET":
        return method_not_allowed()
    return _statuses(request)


# --- Quarantine (staff) ------------------------------------------------------------------------------------------
# Whole student responses, so not public (docs/security.md): staff allowed to view quarantined rows in the admin.

class QuarantinedRowSerializer(serializers.Serializer):
    source_row_id = serializers.IntegerField(help_text="The row's `id` in the source table")
    cntstuid = serializers.CharField(allow_blank=True, help_text="The row's CNTSTUID as read, empty when it is missing or not a number")
    reasons = serializers.ListField(child=serializers.CharField(), help_text="Every reason it could not load")
    first_seen_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(help_text="The last sync that read it (and quarantined it again)")


class QuarantinedRowDetailSerializer(QuarantinedRowSerializer):
    values = serializers.SerializerMethodField()

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "nullable": True},
                          "description": "All 1,118 variables in codebook order, as the source holds them (null "
                                         "for NULL, the source's own spelling otherwise: `NA` stays `NA`)"})
    def get_values(self, row) -> dict:
        return raw_values(row.raw)


class QuarantinedRowPageSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Quarantined rows of the source, on every page")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = QuarantinedRowSerializer(many=True)


BIGINT_MAX = 2**63 - 1


class QuarantinePagination(PageNumberPagination):
    page_size = 50


QUARANTINE_ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="Not logged in: send HTTP Basic credentials or the admin's "
                                                      "session cookie"),
    403: OpenApiResponse(ErrorSerializer, description="Logged in, but not staff allowed to view quarantined rows"),
}


def _source(code: str):
    try:
        return source_get(code=code)
    except SourceNotFoundError:
        raise DomainNotFound(f"no source with code {code[:60]!r}") from None


class QuarantinedRowListApi(StaffApi):
    """A source's quarantined rows, 50 a page, in source order, each with every reason it could not load; staff
    allowed to view quarantined rows only (HTTP Basic, or the admin's session)."""

    required_permission = "ingestion.view_quarantinedrow"

    class FilterSerializer(serializers.Serializer):
        page = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000,
                                        help_text="Page of 50 rows, from 1")

    PARAMETERS = frozenset({"page", *DRF_QUERY_PARAMETERS})

    @extend_schema(
        operation_id="v1_sources_quarantine_list",
        parameters=[FilterSerializer],
        responses={200: QuarantinedRowPageSerializer, **QUARANTINE_ERRORS,
                   400: OpenApiResponse(ErrorSerializer, description="A query parameter the API does not take, or a "
                                                                     "bad page number"),
                   404: OpenApiResponse(ErrorSerializer, description="No such source, or a page past the last one")},
        summary="A source's quarantined rows, in source order, with every reason (staff)",
    )
    def get(self, request: Request, code: str) -> Response:
        query_check(request.query_params, self.PARAMETERS)
        filters = self.FilterSerializer(data=request.query_params)
        if not filters.is_valid():
            raise BadInput("page: " + " ".join(str(m) for m in filters.errors["page"]))
        source = _source(code)
        paginator = QuarantinePagination()
        try:
            page = paginator.paginate_queryset(quarantined_row_list(source=source), request, view=self)
        except NotFound:
            raise DomainNotFound(f"page {filters.validated_data['page']} is past the last page") from None
        return paginator.get_paginated_response(QuarantinedRowSerializer(page, many=True).data)


class QuarantinedRowDetailApi(StaffApi):
    """One quarantined row: its reasons and all 1,118 values as the source holds them; staff allowed to view
    quarantined rows only (HTTP Basic, or the admin's session)."""

    required_permission = "ingestion.view_quarantinedrow"

    @extend_schema(
        operation_id="v1_sources_quarantine_row",
        parameters=[OpenApiParameter("source_row_id", OpenApiTypes.INT, OpenApiParameter.PATH,
                                     description="The row's `id` in the source table")],
        responses={200: QuarantinedRowDetailSerializer, **QUARANTINE_ERRORS,
                   400: OpenApiResponse(ErrorSerializer, description="A query parameter (it takes none)"),
                   404: OpenApiResponse(ErrorSerializer, description="No such source, or the row is not in "
                                                                     "quarantine")},
        summary="One quarantined row with its reasons and all 1,118 values (staff)",
    )
    def get(self, request: Request, code: str, source_row_id: str) -> Response:
        query_check(request.query_params, DRF_QUERY_PARAMETERS)
        source = _source(code)
        # Not a number, or beyond bigint (PostgreSQL would refuse to compare with it): no such row.
        if not (source_row_id.isascii() and source_row_id.isdigit()) or int(source_row_id) > BIGINT_MAX:
            raise DomainNotFound(f"row {source_row_id[:60]!r} of {source.code} is not in quarantine: ids are whole "
                                 "numbers")
        row = quarantined_row_get(source=source, source_row_id=int(source_row_id))
        return Response(QuarantinedRowDetailSerializer(row).data)

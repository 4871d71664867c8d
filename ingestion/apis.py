"""GET /api/v1/sources/: each source's ingestion status (no passwords: URLs are shown with the password hidden).

Fast path: every dashboard polls this every second, so each web process renders the list at most once every
INGEST_STATUS_CACHE_SECONDS (0.5 s) and answers everyone in between with the same bytes (or a 304 for its ETag).
A status is therefore at most that much older than the warehouse's, on top of the sync that wrote it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer

from ingestion.selectors import source_statuses
from pisa_site.api import (ETAG_HEADERS, IF_NONE_MATCH, NOT_MODIFIED, ErrorSerializer, PublicApi, bad_request,
                            cached_json, fast_path, method_not_allowed, query_problem)


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
    seconds_behind = serializers.FloatField(allow_null=True)
    last_success_at = serializers.DateTimeField(allow_null=True)
    last_batch_size = serializers.IntegerField()
    last_batch_seconds = serializers.FloatField()
    rows_per_second = serializers.FloatField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    last_error_at = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    retry_at = serializers.DateTimeField(allow_null=True)


@dataclass(frozen=True)
class RenderedStatuses:
    body: bytes
    etag: str
    expires_at: float  # time.monotonic()


_rendered: RenderedStatuses | None = None
_render_lock = threading.Lock()  # one thread of a process renders; the others wait for its bytes


def rendered_statuses() -> RenderedStatuses:
    rendered = _rendered
    if rendered is not None and time.monotonic() < rendered.expires_at:
        return rendered
    with _render_lock:
        return _render_if_expired()


def _render_if_expired() -> RenderedStatuses:
    global _rendered
    if _rendered is not None and time.monotonic() < _rendered.expires_at:
        return _rendered
    read_at = time.monotonic()
    body = JSONRenderer().render(SourceStatusSerializer(source_statuses(), many=True).data)
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    _rendered = RenderedStatuses(body=body, etag=etag, expires_at=read_at + settings.INGEST_STATUS_CACHE_SECONDS)
    return _rendered


def rendered_statuses_forget() -> None:
    global _rendered
    _rendered = None


def _statuses(request):
    if request.GET and (problem := query_problem(request.GET, ())):
        return bad_request(problem)
    rendered = rendered_statuses()
    return cached_json(request, rendered.etag, rendered.body)


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

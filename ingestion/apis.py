"""GET /api/v1/sources/: each source's ingestion status (no passwords: URLs are shown with the password hidden)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from ingestion.selectors import source_statuses
from pisa_site.api import DRF_QUERY_PARAMETERS, ErrorSerializer, query_problem


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


class SourceStatusListApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: SourceStatusSerializer(many=True),
                              400: OpenApiResponse(ErrorSerializer, description="A query parameter (it takes none)")})
    def get(self, request):
        if problem := query_problem(request.query_params, DRF_QUERY_PARAMETERS):
            return Response({"error": problem}, status=400, headers={"Cache-Control": "no-store"})
        data = SourceStatusSerializer(source_statuses(), many=True).data
        return Response(data, headers={"Cache-Control": "no-store"})

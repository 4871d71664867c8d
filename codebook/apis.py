"""Read-only codebook API: /api/v1/codebook/variables/ (search, filter, paginated) and .../variables/{name}/.

Responses carry an ETag built from the labels version, so a client polling with If-None-Match gets a cheap 304
until a label changes, and the new label the moment it does (nothing is cached server-side).
"""

from __future__ import annotations

import hashlib

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from codebook.catalogue import Kind, Section
from codebook.decoding import missing_reason_of
from codebook.models import ValueLabel, Variable
from codebook.selectors import labels_version, variable_get, variable_list


def json_code(value_label: ValueLabel) -> int | float | str:
    """A code as JSON shows it best: 1 rather than 1.0 for numeric codes, text codes as they are."""
    number = value_label.numeric_value
    if number is None:
        return value_label.value
    return int(number) if number.is_integer() else number


class VariableOutputSerializer(serializers.ModelSerializer):
    na_range = serializers.SerializerMethodField()

    class Meta:
        model = Variable
        fields = ["name", "label", "section", "kind", "format_spss", "na_values", "na_range"]

    def get_na_range(self, variable: Variable) -> list[float] | None:
        return list(variable.na_range) if variable.na_range else None


class ValueLabelOutputSerializer(serializers.ModelSerializer):
    value = serializers.SerializerMethodField()
    missing_reason = serializers.SerializerMethodField()

    class Meta:
        model = ValueLabel
        fields = ["value", "label", "is_missing", "missing_reason"]

    def get_value(self, value_label: ValueLabel) -> int | float | str:
        return json_code(value_label)

    def get_missing_reason(self, value_label: ValueLabel) -> str | None:
        if not value_label.is_missing:
            return None
        # The file's label says why, even after staff translated the label shown to users.
        return missing_reason_of(json_code(value_label), value_label.imported_label)


class VariableDetailOutputSerializer(VariableOutputSerializer):
    value_labels = ValueLabelOutputSerializer(many=True)

    class Meta(VariableOutputSerializer.Meta):
        fields = [*VariableOutputSerializer.Meta.fields, "value_labels"]


def labels_etag(request: Request) -> str:
    """Changes with the labels version and with the request (path and query)."""
    digest = hashlib.sha1(request.get_full_path().encode()).hexdigest()[:16]
    return f'"codebook-{labels_version()}-{digest}"'


def not_modified_or(request: Request, build) -> Response:
    etag = labels_etag(request)
    if request.headers.get("If-None-Match") == etag:
        response = Response(status=status.HTTP_304_NOT_MODIFIED)
    else:
        response = build()
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"  # clients may keep it, but must revalidate: labels change live
    return response


class VariableListApi(APIView):
    permission_classes = [AllowAny]

    class FilterSerializer(serializers.Serializer):
        search = serializers.CharField(required=False, allow_blank=True, max_length=100)
        section = serializers.ChoiceField(choices=Section.CHOICES, required=False, allow_blank=True)
        kind = serializers.ChoiceField(choices=Kind.CHOICES, required=False, allow_blank=True)

    @extend_schema(
        parameters=[FilterSerializer, OpenApiParameter("page", int)],
        responses=VariableOutputSerializer(many=True),
        summary="PISA variables in codebook order; search matches name or label",
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)

        def build() -> Response:
            paginator = PageNumberPagination()
            page = paginator.paginate_queryset(variable_list(**filters.validated_data), request, view=self)
            return paginator.get_paginated_response(VariableOutputSerializer(page, many=True).data)

        return not_modified_or(request, build)


class VariableDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=VariableDetailOutputSerializer, summary="One PISA variable with its value labels")
    def get(self, request: Request, name: str) -> Response:
        variable = variable_get(name=name)
        if variable is None:
            raise Http404(f"No variable {name} in the codebook.")
        return not_modified_or(request, lambda: Response(VariableDetailOutputSerializer(variable).data))

"""Read-only codebook API: /api/v1/codebook/variables/ (search, filter, paginated) and .../variables/{name}/.

Responses carry an ETag built from the labels version, so a client polling with If-None-Match gets a cheap 304
until a label changes, and the new label the moment it does (nothing is cached server-side).
"""

from __future__ import annotations


from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from codebook.catalogue import Kind, Section
from codebook.decoding import missing_reason_of
from codebook.models import ValueLabel, Variable
from codebook.selectors import labels_version, variable_get, variable_list
from pisa_site.api import (DRF_QUERY_PARAMETERS, ETAG_HEADERS, IF_NONE_MATCH, NOT_MODIFIED, ErrorSerializer, PublicApi,
                           not_modified_or, query_check)
from pisa_site.errors import BadInput
from pisa_site.errors import NotFound as DomainNotFound
from pisa_site.etags import strong_etag


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

    # Not the `int | float | str` hint: it becomes a oneOf an integer matches twice (integer and number).
    @extend_schema_field({"anyOf": [{"type": "number"}, {"type": "string"}],
                          "description": "The code: a number for numeric variables, text for text ones"})
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


class VariablePageSerializer(serializers.Serializer):
    """One page of the list, as DRF's PageNumberPagination sends it."""

    count = serializers.IntegerField(help_text="Variables matching, on every page")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = VariableOutputSerializer(many=True)


def labels_etag(request: Request) -> str:
    """Changes with the labels version and with the request (path and query)."""
    return strong_etag(f"codebook|{labels_version()}|{request.get_full_path()}")


def field_errors(errors: dict) -> str:
    """DRF's per-field errors in one line: `kind: "colour" is not a valid choice.`"""
    return "; ".join(f"{name}: {' '.join(str(message) for message in messages)}" for name, messages in errors.items())


BAD_REQUEST = OpenApiResponse(ErrorSerializer, description="A query parameter the API does not take, or a bad value")


class VariableListApi(PublicApi):

    class FilterSerializer(serializers.Serializer):
        search = serializers.CharField(required=False, allow_blank=True, max_length=100)
        section = serializers.ChoiceField(choices=Section.CHOICES, required=False, allow_blank=True)
        kind = serializers.ChoiceField(choices=Kind.CHOICES, required=False, allow_blank=True)
        page = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000,
                                        help_text="Page of 50 variables, from 1")

    PARAMETERS = frozenset({"search", "section", "kind", "page", *DRF_QUERY_PARAMETERS})

    @extend_schema(
        operation_id="v1_codebook_variables_list",
        parameters=[FilterSerializer, IF_NONE_MATCH, *ETAG_HEADERS],
        responses={200: VariablePageSerializer, 304: NOT_MODIFIED, 400: BAD_REQUEST,
                   404: OpenApiResponse(ErrorSerializer, description="A page past the last one")},
        summary="PISA variables in codebook order; search matches name or label",
    )
    def get(self, request: Request) -> Response:
        query_check(request.query_params, self.PARAMETERS)
        if request.query_params.get("page") == "":  # DRF reads a blank number as absent; the schema says integer
            raise BadInput("page: a valid integer is required (or leave it out for the first page)")
        filters = self.FilterSerializer(data=request.query_params)
        if not filters.is_valid():
            raise BadInput(field_errors(filters.errors))
        criteria = {name: value for name, value in filters.validated_data.items() if name != "page"}

        def build() -> Response:
            paginator = PageNumberPagination()
            try:
                page = paginator.paginate_queryset(variable_list(**criteria), request, view=self)
            except NotFound:
                raise DomainNotFound(f"page {filters.validated_data['page']} is past the last page") from None
            return paginator.get_paginated_response(VariableOutputSerializer(page, many=True).data)

        return not_modified_or(request, labels_etag(request), build)


class VariableDetailApi(PublicApi):

    @extend_schema(parameters=[IF_NONE_MATCH, *ETAG_HEADERS],
                   responses={200: VariableDetailOutputSerializer, 304: NOT_MODIFIED, 400: BAD_REQUEST,
                              404: OpenApiResponse(ErrorSerializer, description="Not a codebook variable")},
                   summary="One PISA variable with its value labels")
    def get(self, request: Request, name: str) -> Response:
        query_check(request.query_params, DRF_QUERY_PARAMETERS)
        variable = variable_get(name=name)
        if variable is None:
            raise DomainNotFound(f"no variable {name[:60]!r} in the codebook")
        return not_modified_or(request, labels_etag(request),
                               lambda: Response(VariableDetailOutputSerializer(variable).data))

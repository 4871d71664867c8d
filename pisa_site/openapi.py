"""drf-spectacular hooks: the OpenAPI components the apps describe as JSON schemas (metrics/openapi.py)."""

from __future__ import annotations


def components_append(result: dict, generator, request, public) -> dict:
    """Postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]): add the components views refer to with
    `{"$ref": "#/components/schemas/..."}`."""
    from metrics.openapi import COMPONENTS

    result.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
    return result

"""Reading a source: what the reader learns of its table besides the rows."""

from __future__ import annotations

import pytest

from ingestion.extract import SourceReader
from ingestion.layout import pisa_variables

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_typed_source_says_which_variables_it_holds_as_numbers_and_a_text_source_none(source_db):
    typed, text = source_db("ALB"), source_db("ARG", style="text")
    variables = pisa_variables()

    held = SourceReader(typed.source, variables).variables_held_as_numbers

    numeric = {spec.name for spec in variables if not spec.is_text}
    assert held == numeric
    assert "CNT" not in held and "ESCS" in held
    assert SourceReader(text.source, variables).variables_held_as_numbers == frozenset()

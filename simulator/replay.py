"""Reading a real PISA student file (SPSS .sav or CSV) in chunks, as typed rows keyed by lower-case column name."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

from codebook.catalogue import VariableSpec
from simulator.students import typed_value

CHUNK_ROWS = 1_000


class ReplayFileError(ValueError):
    pass


def _typed_number(spec: VariableSpec, value):
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if spec.is_text:
        return str(value)
    number = float(value)
    return int(number) if spec.decimals == 0 and number.is_integer() else number


def _check_columns(path: Path, names: list[str], specs: list[VariableSpec]) -> None:
    present = {name.upper() for name in names}
    if "CNT" not in present:
        raise ReplayFileError(f"{path} has no CNT column: it cannot be split into per-country sources")
    known = sum(1 for spec in specs if spec.name.upper() in present)
    if known < len(specs) // 2:
        raise ReplayFileError(
            f"{path} has only {known} of the codebook's {len(specs)} variables: is it a PISA 2018 student file?"
        )


def _csv_chunks(path: Path, specs: list[VariableSpec]) -> Iterator[list[dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, reader.fieldnames or [], specs)
        by_upper = {name.upper(): name for name in reader.fieldnames or []}
        columns = [(spec.name.lower(), spec, by_upper.get(spec.name.upper())) for spec in specs]
        chunk = []
        for record in reader:
            chunk.append({
                column: typed_value(spec, record[source]) if source else None for column, spec, source in columns
            })
            if len(chunk) == CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _sav_chunks(path: Path, specs: list[VariableSpec]) -> Iterator[list[dict]]:
    import pyreadstat

    _, meta = pyreadstat.read_sav(str(path), metadataonly=True)
    _check_columns(path, meta.column_names, specs)
    by_upper = {name.upper(): name for name in meta.column_names}
    columns = [(spec.name.lower(), spec, by_upper.get(spec.name.upper())) for spec in specs]
    # user_missing keeps PISA's missing codes as values (as in the sources), rather than turning them into NaN.
    for data, _ in pyreadstat.read_file_in_chunks(
        pyreadstat.read_sav, str(path), chunksize=CHUNK_ROWS, user_missing=True, output_format="dict",
        usecols=[source for _, _, source in columns if source],
    ):
        lists = {name: list(values) for name, values in data.items()}
        size = len(next(iter(lists.values()))) if lists else 0
        yield [
            {column: _typed_number(spec, lists[source][index]) if source else None for column, spec, source in columns}
            for index in range(size)
        ]


def replay_chunks(path: Path, specs: list[VariableSpec]) -> Iterator[list[dict]]:
    """Chunks of typed rows from a .sav or .csv student file; a clear error for anything else."""
    if not path.exists():
        raise ReplayFileError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".sav":
        return _sav_chunks(path, specs)
    if suffix == ".csv":
        return _csv_chunks(path, specs)
    raise ReplayFileError(f"{path}: replay reads .sav or .csv files, not {suffix or 'files without a suffix'}")

"""Reads for the simulator: the codebook it builds rows from, the control row, the fault log, source sizes."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings
from sqlalchemy import func, select

from codebook.catalogue import VariableSpec, read_codebook_csv
from simulator.models import Injection, SimulatorControl


class CodebookMissingError(FileNotFoundError):
    pass


@lru_cache(maxsize=4)
def _specs_from(path: Path) -> tuple[VariableSpec, ...]:
    return tuple(read_codebook_csv(path))


def codebook_specs() -> list[VariableSpec]:
    """The 1,118 variables, from the codebook CSV (`PISA_CODEBOOK_PATH`)."""
    path = Path(settings.PISA_CODEBOOK_PATH)
    if not path.exists():
        raise CodebookMissingError(
            f"the PISA codebook is not at {path}: set PISA_CODEBOOK_PATH to where it is"
        )
    return list(_specs_from(path))


def simulator_control_get() -> SimulatorControl:
    control, _ = SimulatorControl.objects.get_or_create(pk=SimulatorControl.SINGLETON_ID)
    return control


def injection_list(*, source_code: str | None = None, limit: int = 20) -> list[Injection]:
    injections = Injection.objects.all()
    if source_code:
        injections = injections.filter(source_code=source_code)
    return list(injections[:limit])


def source_max_value(*, handle, column: str):
    """The largest value of a column in a source (e.g. the last CNTSTUID handed out), as a number or None."""
    with handle.engine.connect() as connection:
        value = connection.execute(select(func.max(handle.table.c[column]))).scalar()
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None

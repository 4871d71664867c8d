"""Reads of the codebook, for the other apps (ingestion, metrics, the API) and the admin."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Prefetch, Q, QuerySet

from codebook.catalogue import VariableSpec
from codebook.models import ValueLabel, Variable
from codebook.services import LABELS_VERSION_KEY, labels_version_seed
from pisa_site.snapshots import ProcessSnapshot


def labels_version() -> int:
    """A number that changes whenever any label or the codebook changes (kept in Redis, shared by every process).

    Put it in the key or ETag of anything that shows labels, and the next read after an edit rebuilds it.
    """
    version = cache.get(LABELS_VERSION_KEY)
    if version is None:
        cache.add(LABELS_VERSION_KEY, labels_version_seed(), timeout=None)
        version = cache.get(LABELS_VERSION_KEY)
    return int(version)


@dataclass(frozen=True)
class _SpecsSnapshot:
    version: int
    specs: list[VariableSpec]
    by_name: dict[str, VariableSpec]
    # name -> {missing code: its label as imported}: says why a code is missing even once staff translated it
    missing_code_labels: dict[str, dict]




def variable_specs() -> list[VariableSpec]:
    """Every variable as a VariableSpec (labels as staff edited them), in codebook order.

    Built once per process and rebuilt when `labels_version()` moves, so it costs one Redis GET per call.
    Do not mutate the returned list: it is shared.
    """
    return _current_snapshot().specs


def variable_spec_map() -> dict[str, VariableSpec]:
    """`variable_specs()` by variable name (as the codebook spells it, e.g. "NatCen")."""
    return _current_snapshot().by_name


def missing_code_labels() -> dict[str, dict]:
    """Variable name -> {user-missing code: its label in the imported file}, e.g. {"ST004D01T": {9.0: "No Response"}}.

    The reason a code is missing is read from these, not from the labels shown to users, which staff may translate.
    """
    return _current_snapshot().missing_code_labels


def _current_snapshot() -> _SpecsSnapshot:
    return _specs.get()


def _snapshot_from_database(_previous: _SpecsSnapshot | None) -> _SpecsSnapshot:
    version = labels_version()  # before the read: a later edit moves it, and the next call rebuilds
    labels: dict[int, list[ValueLabel]] = {}
    for value_label in ValueLabel.objects.order_by("variable_id", "numeric_value", "value"):
        labels.setdefault(value_label.variable_id, []).append(value_label)
    specs = []
    missing_labels = {}
    for variable in Variable.objects.order_by("position"):
        is_text = variable.is_text
        missing_labels[variable.name] = {
            (value_label.value if is_text else value_label.numeric_value): value_label.imported_label
            for value_label in labels.get(variable.pk, []) if value_label.is_missing
        }
        specs.append(VariableSpec(
            name=variable.name,
            label=variable.label,
            format_spss=variable.format_spss,
            value_labels={
                (value_label.value if is_text else value_label.numeric_value): value_label.label
                for value_label in labels.get(variable.pk, [])
            },
            na_values=tuple(str(value) if is_text else float(value) for value in variable.na_values),
            na_range=variable.na_range,
        ))
    return _SpecsSnapshot(version=version, specs=specs, by_name={spec.name: spec for spec in specs},
                          missing_code_labels=missing_labels)


def country_names() -> dict[str, str]:
    """PISA country code (CNT) -> name, from CNT's value labels: {"FRA": "France", "QCI": "B-S-J-Z (China)", ...}."""
    spec = variable_spec_map().get("CNT")
    return dict(spec.value_labels) if spec else {}


def variable_list(*, search: str = "", section: str = "", kind: str = "") -> QuerySet[Variable]:
    """Variables in codebook order whose name or label contains `search`, optionally of one section and kind."""
    variables = Variable.objects.order_by("position")
    if search:
        variables = variables.filter(Q(name__icontains=search) | Q(label__icontains=search))
    if section:
        variables = variables.filter(section=section)
    if kind:
        variables = variables.filter(kind=kind)
    return variables


def variable_get(*, name: str) -> Variable | None:
    """One variable with its value labels; the name matches whatever its case (warehouse columns are lower case).
    None for no such variable, including a name no variable can have (PostgreSQL text cannot hold NUL)."""
    if "\x00" in name:
        return None
    variables = Variable.objects.prefetch_related(
        Prefetch("value_labels", queryset=ValueLabel.objects.order_by("numeric_value", "value")))
    # The exact spelling first, should a file ever hold two names that differ only in case.
    return variables.filter(name=name).first() or variables.filter(name__iexact=name).first()


# Rebuilt when `labels_version()` moves: one Redis GET per call.
_specs: ProcessSnapshot[_SpecsSnapshot] = ProcessSnapshot(
    _snapshot_from_database, lambda snapshot: snapshot.version == labels_version())


"""Writes to the codebook: importing a codebook file, staff edits of labels, and the labels version they bump."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.core.cache import cache
from django.db import connection, transaction

from codebook.catalogue import VariableSpec, read_codebook
from codebook.models import LabelEdit, ValueLabel, Variable

BULK_BATCH_SIZE = 1000
PROGRESS_EVERY_VARIABLES = 200
LABELS_VERSION_KEY = "codebook:labels-version"
IMPORT_LOCK_ID = 0x0C0DEB00C  # any constant unique to this lock among the project's advisory locks

ProgressCallback = Callable[[int, int], None]


def labels_version_bump() -> int:
    """Tell every cache keyed by the labels version (API ETags, metrics, in-process specs) that labels changed."""
    try:
        return cache.incr(LABELS_VERSION_KEY)
    except ValueError:  # the key is gone (first use, Redis flushed): restart from a value never used before
        cache.add(LABELS_VERSION_KEY, labels_version_seed(), timeout=None)
        return cache.incr(LABELS_VERSION_KEY)


def labels_version_seed() -> int:
    """Where the counter starts when Redis has none: the clock in microseconds, so a flushed counter never repeats
    a version a process may still hold a cache for."""
    return time.time_ns() // 1000


def value_text(value: float | str) -> str:
    """The canonical text of a code as stored in ValueLabel.value: 1.0 -> "1", 0.5 -> "0.5", "FRA" -> "FRA"."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class ImportReport:
    """What a codebook import did. Names are `VARIABLE` for variable labels and `VARIABLE=code` for value labels."""

    variables_added: list[str] = field(default_factory=list)
    variables_changed: list[str] = field(default_factory=list)
    variables_unchanged: int = 0
    # In the database but not in the file: kept as they are (ingested data may refer to them).
    variables_not_in_file: list[str] = field(default_factory=list)
    value_labels_added: int = 0
    value_labels_changed: int = 0
    value_labels_removed: int = 0
    edits_kept: list[str] = field(default_factory=list)
    edits_overwritten: list[str] = field(default_factory=list)

    @property
    def changed_anything(self) -> bool:
        return bool(self.variables_added or self.variables_changed or self.value_labels_added
                    or self.value_labels_changed or self.value_labels_removed or self.edits_overwritten)

    def summary(self) -> str:
        lines = [
            f"variables: {len(self.variables_added)} added, {len(self.variables_changed)} changed, "
            f"{self.variables_unchanged} unchanged",
            f"value labels: {self.value_labels_added} added, {self.value_labels_changed} changed, "
            f"{self.value_labels_removed} removed",
            f"staff edits: {len(self.edits_kept)} kept, {len(self.edits_overwritten)} overwritten",
        ]
        if self.edits_kept:
            lines.append("  kept (use --overwrite-edits to replace them): " + ", ".join(self.edits_kept[:20])
                         + (" ..." if len(self.edits_kept) > 20 else ""))
        if self.variables_not_in_file:
            lines.append(f"not in the file, left as they are: {len(self.variables_not_in_file)} variable(s): "
                         + ", ".join(self.variables_not_in_file[:20])
                         + (" ..." if len(self.variables_not_in_file) > 20 else ""))
        return "\n".join(lines)


def codebook_load_file(*, path: Path | str, overwrite_edits: bool = False,
                       progress: ProgressCallback | None = None) -> ImportReport:
    """Import a codebook file (.sav, or the CSV layout). A malformed file raises CodebookFormatError, changing
    nothing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no codebook file at {path}")
    return codebook_import(specs=read_codebook(path), overwrite_edits=overwrite_edits, progress=progress)


def codebook_load_if_empty(*, path: Path | str, progress: ProgressCallback | None = None) -> ImportReport | None:
    """Import the codebook at `path` when the codebook is empty and the file exists (what `make run` does).
    None when there was nothing to do."""
    if Variable.objects.exists() or not Path(path).is_file():
        return None
    return codebook_load_file(path=path, progress=progress)


@transaction.atomic
def codebook_import(*, specs: list[VariableSpec], overwrite_edits: bool = False,
                    progress: ProgressCallback | None = None) -> ImportReport:
    """Bring the codebook in line with `specs` (file order), in one transaction, with bulk writes.

    Idempotent: importing the same specs again changes nothing. A label staff edited is kept (and reported) unless
    `overwrite_edits`; the file's label is still remembered as `imported_label`.
    """
    report = ImportReport()
    with connection.cursor() as cursor:
        # Two imports at once would each see the other's variables as absent; the second waits for the first.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [IMPORT_LOCK_ID])
    existing = {variable.name: variable for variable in Variable.objects.all()}
    labels_by_variable: dict[int, dict[str, ValueLabel]] = {}
    for value_label in ValueLabel.objects.filter(variable__in=existing.values()):
        labels_by_variable.setdefault(value_label.variable_id, {})[value_label.value] = value_label

    new_variables: list[Variable] = []
    changed_variables: list[Variable] = []
    pending_labels: list[tuple[Variable, VariableSpec]] = []
    in_file = set()
    for position, spec in enumerate(specs):
        in_file.add(spec.name)
        variable = existing.get(spec.name)
        if variable is None:
            variable = _variable_from_spec(spec, position)
            new_variables.append(variable)
            report.variables_added.append(spec.name)
        elif _variable_update(variable, spec, position, overwrite_edits, report):
            changed_variables.append(variable)
            report.variables_changed.append(spec.name)
        else:
            report.variables_unchanged += 1
        pending_labels.append((variable, spec))
        if progress and (position + 1) % PROGRESS_EVERY_VARIABLES == 0:
            progress(position + 1, len(specs))

    # Variables the file does not have keep their place, after the file's own.
    for offset, name in enumerate(sorted(set(existing) - in_file, key=lambda name: existing[name].position)):
        variable = existing[name]
        report.variables_not_in_file.append(name)
        if variable.position != len(specs) + offset:
            variable.position = len(specs) + offset
            changed_variables.append(variable)

    Variable.objects.bulk_create(new_variables, batch_size=BULK_BATCH_SIZE)
    Variable.objects.bulk_update(
        changed_variables,
        ["position", "label", "imported_label", "label_edited", "section", "kind", "format_spss", "na_values",
         "na_range_low", "na_range_high"],
        batch_size=BULK_BATCH_SIZE,
    )
    _value_labels_import(pending_labels, labels_by_variable, overwrite_edits, report)
    if progress:
        progress(len(specs), len(specs))
    if report.changed_anything or changed_variables:  # a reorder alone changes variable_specs() too
        transaction.on_commit(labels_version_bump)
    return report


def _variable_from_spec(spec: VariableSpec, position: int) -> Variable:
    low, high = spec.na_range or (None, None)
    return Variable(
        name=spec.name, position=position, label=spec.label, imported_label=spec.label, section=spec.section,
        kind=spec.kind, format_spss=spec.format_spss, na_values=list(spec.na_values), na_range_low=low,
        na_range_high=high,
    )


def _variable_update(variable: Variable, spec: VariableSpec, position: int, overwrite_edits: bool,
                     report: ImportReport) -> bool:
    """Apply the file's description to an existing variable; True when anything changed."""
    wanted = _variable_from_spec(spec, position)
    changed = False
    for attribute in ("position", "section", "kind", "format_spss", "na_values", "na_range_low", "na_range_high",
                      "imported_label"):
        if getattr(variable, attribute) != getattr(wanted, attribute):
            setattr(variable, attribute, getattr(wanted, attribute))
            changed = True
    if variable.label_edited and not overwrite_edits:
        report.edits_kept.append(spec.name)
    elif variable.label != spec.label or variable.label_edited:
        if variable.label_edited:
            report.edits_overwritten.append(spec.name)
        variable.label, variable.label_edited = spec.label, False
        changed = True
    return changed


def _value_labels_import(pending: list[tuple[Variable, VariableSpec]],
                         labels_by_variable: dict[int, dict[str, ValueLabel]], overwrite_edits: bool,
                         report: ImportReport) -> None:
    to_create: list[ValueLabel] = []
    to_update: list[ValueLabel] = []
    to_delete: list[int] = []
    for variable, spec in pending:
        current = labels_by_variable.get(variable.pk, {}) if variable.pk else {}
        wanted = set()
        for code, label in spec.value_labels.items():
            value = value_text(code)
            wanted.add(value)
            is_missing = spec.is_missing(code)
            value_label = current.get(value)
            if value_label is None:
                to_create.append(ValueLabel(
                    variable=variable, value=value, numeric_value=None if spec.is_text else float(code),
                    label=label, imported_label=label, is_missing=is_missing,
                ))
                continue
            if _value_label_update(value_label, f"{variable.name}={value}", label, is_missing, overwrite_edits,
                                   report):
                to_update.append(value_label)
        for value, value_label in current.items():
            if value in wanted:
                continue
            if value_label.label_edited and not overwrite_edits:
                report.edits_kept.append(f"{variable.name}={value}")
            else:
                to_delete.append(value_label.pk)
    ValueLabel.objects.bulk_create(to_create, batch_size=BULK_BATCH_SIZE)
    ValueLabel.objects.bulk_update(to_update, ["label", "imported_label", "label_edited", "is_missing"],
                                   batch_size=BULK_BATCH_SIZE)
    ValueLabel.objects.filter(pk__in=to_delete).delete()
    report.value_labels_added += len(to_create)
    report.value_labels_changed += len(to_update)
    report.value_labels_removed += len(to_delete)


def _value_label_update(value_label: ValueLabel, name: str, label: str, is_missing: bool, overwrite_edits: bool,
                        report: ImportReport) -> bool:
    changed = False
    if value_label.is_missing != is_missing or value_label.imported_label != label:
        value_label.is_missing, value_label.imported_label = is_missing, label
        changed = True
    if value_label.label_edited and not overwrite_edits:
        report.edits_kept.append(name)
    elif value_label.label != label or value_label.label_edited:
        if value_label.label_edited:
            report.edits_overwritten.append(name)
        value_label.label, value_label.label_edited = label, False
        changed = True
    return changed


@transaction.atomic
def variable_label_edit(*, variable: Variable, label: str, user) -> LabelEdit | None:
    """A member of staff relabels a variable: recorded, kept across re-imports, shown everywhere within seconds.
    None when the label is the same as before."""
    variable = Variable.objects.select_for_update().get(pk=variable.pk)
    if variable.label == label:
        return None
    edit = LabelEdit.objects.create(variable=variable, old_label=variable.label, new_label=label, edited_by=user)
    variable.label, variable.label_edited = label, True
    variable.save(update_fields=["label", "label_edited", "updated_at"])
    transaction.on_commit(labels_version_bump)
    return edit


@transaction.atomic
def value_label_edit(*, value_label: ValueLabel, label: str, user) -> LabelEdit | None:
    """A member of staff relabels one code of a variable (e.g. 1 = "Female" -> "Fille"); as variable_label_edit."""
    value_label = ValueLabel.objects.select_for_update().select_related("variable").get(pk=value_label.pk)
    if value_label.label == label:
        return None
    edit = LabelEdit.objects.create(variable=value_label.variable, value_label=value_label, value=value_label.value,
                                    old_label=value_label.label, new_label=label, edited_by=user)
    value_label.label, value_label.label_edited = label, True
    value_label.save(update_fields=["label", "label_edited"])
    transaction.on_commit(labels_version_bump)
    return edit

"""Proof that the warehouse holds exactly what the sources hold: the selector behind `manage.py verify`.

For each source, every row is classified by its id and by the MD5 of its 1,118 values:

- **loaded**: the warehouse has a student from this row with the same content;
- **quarantined**: the row is in quarantine with the content the source has now (counted apart: not an error);
- **superseded**: a duplicate CNTSTUID whose later row is the student (counted apart), as long as a student with that
  CNTSTUID is still in the warehouse;
- **missing**: in the source, not accounted for in any of those ways;
- **extra**: in the warehouse (student, quarantine or duplicate record) but no longer in the source;
- **differing**: the same id with other content (a student or a quarantined row the source has changed since);
- **duplicated**: one source row accounted for more than once (two students, or a student and a quarantined row);
- **in flight**: one of the above at first that matched within the settle time (a row committed, updated or deleted
  while the comparison ran, which the pipeline caught up with): counted apart, not an error. Only what still differs
  once the settle time is over is a loss, an extra, a difference or a duplicate.

Source rows are rendered exactly as the extractor renders them (`SourceReader`, `COPY (SELECT ...) TO STDOUT` on
PostgreSQL) and hashed by `ingestion.transform.line_digest`, as the reconciliation hashes them, so typed and
all-text ('NA') sources compare alike. The warehouse side hashes the stored `raw` itself (`md5(raw)` in SQL) rather than trusting
`raw_md5`, and also checks `raw_md5`.

Memory stays flat whatever the size of a source: both sides are walked together in ascending id ranges, each range
ending at the `VERIFY_BATCH_ROWS`-th next id of whichever side reaches it first, so no range holds more than that many
rows of any one table (about 8 MB of source lines).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import sqlalchemy as sa
from django.db.models import Exists, OuterRef
from django.db.models.functions import MD5

from ingestion.extract import SourceReader, SourceUnavailable, source_error_text
from ingestion.layout import pisa_variables
from ingestion.models import DuplicateStudent, QuarantinedRow, Source, Student
from ingestion.services import SourceNotFoundError
from ingestion.transform import line_digest

# Rows compared per step and side: ~4 KB of COPY text each, so a step reads ~8 MB from the source.
VERIFY_BATCH_ROWS = 2000
# Ids listed per kind of problem in a report (the counts are always complete).
EXAMPLE_IDS = 10
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1

PROBLEM_KINDS = ("missing", "extra", "differing", "duplicated")
# Ids of problems kept for the settle rechecks; beyond that many, the rest are reported as they were first found.
MAX_RECHECKED_IDS = 100_000
SETTLE_RECHECK_SECONDS = 1.0

Progress = Callable[[int], None]


@dataclass
class SourceVerification:
    """How one source compares with the warehouse. Counts are of source row ids."""

    code: str
    source_rows: int = 0
    loaded: int = 0
    quarantined: int = 0
    superseded: int = 0
    missing: int = 0
    extra: int = 0
    differing: int = 0
    duplicated: int = 0
    in_flight: int = 0
    error: str = ""
    examples: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    problem_ids: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list), repr=False)

    def note(self, kind: str, row_id: int) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if kind in PROBLEM_KINDS:
            if len(self.examples[kind]) < EXAMPLE_IDS:
                self.examples[kind].append(row_id)
            if sum(map(len, self.problem_ids.values())) < MAX_RECHECKED_IDS:
                self.problem_ids[kind].append(row_id)

    @property
    def problems(self) -> int:
        return sum(getattr(self, kind) for kind in PROBLEM_KINDS)

    @property
    def ok(self) -> bool:
        return not self.error and self.problems == 0

    def as_dict(self) -> dict:
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("examples", "problem_ids")}
        return {**counts, "ok": self.ok, "examples": {kind: ids for kind, ids in self.examples.items() if ids}}


@dataclass
class Verification:
    sources: list[SourceVerification]

    @property
    def total(self) -> SourceVerification:
        total = SourceVerification(code="total")
        for result in self.sources:
            for name in ("source_rows", "loaded", "quarantined", "superseded", "in_flight", *PROBLEM_KINDS):
                setattr(total, name, getattr(total, name) + getattr(result, name))
        failed = [result.code for result in self.sources if result.error]
        total.error = f"{len(failed)} source(s) could not be read: {', '.join(failed)}" if failed else ""
        return total

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.sources)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "total": self.total.as_dict(), "sources": [s.as_dict() for s in self.sources]}


def sources_to_verify(*, codes: Iterable[str] | None = None) -> list[Source]:
    """The named sources (enabled or not), or every enabled source."""
    if not codes:
        return list(Source.objects.filter(enabled=True).order_by("code"))
    wanted = sorted({code.upper() for code in codes})
    found = list(Source.objects.filter(code__in=wanted).order_by("code"))
    unknown = sorted(set(wanted) - {source.code for source in found})
    if unknown:
        raise SourceNotFoundError(f"unknown source(s): {', '.join(unknown)} (see `manage.py sources list`)")
    return found


def verify_sources(
    *, sources: Iterable[Source], progress_for: Callable[[Source, int], Progress] | None = None,
    settle_seconds: float = 0,
) -> Verification:
    """Compare each source with the warehouse. `progress_for(source, total_rows)` returns a callback that is called
    with the number of source rows compared after each step. Problems get `settle_seconds` to resolve (see
    `source_verify`)."""
    return Verification(sources=[source_verify(source=source, progress_for=progress_for,
                                               settle_seconds=settle_seconds) for source in sources])


def source_verify(*, source: Source, progress_for: Callable[[Source, int], Progress] | None = None,
                  settle_seconds: float = 0) -> SourceVerification:
    """Compare a source with the warehouse. On a stack still being fed, a row committed a moment ago is not loaded
    yet: every problem found is compared again, id by id, until it matches (then it was in flight) or
    `settle_seconds` have passed since the comparison ended (then it is real)."""
    result = SourceVerification(code=source.code)
    reader = SourceReader(source, pisa_variables())
    try:
        snapshot = reader.snapshot()
        progress = progress_for(source, snapshot.row_count) if progress_for else None
        low = _BIGINT_MIN
        while True:
            high = _next_boundary(reader, source, low)
            compared = _compare_range(reader, source, low, _BIGINT_MAX if high is None else high, result)
            if progress:
                progress(compared)
            if high is None:
                break
            low = high
        if settle_seconds > 0:
            _settle(reader, source, result, time.monotonic() + settle_seconds)
    except SourceUnavailable as exc:
        result.error = str(exc)
    return result


def _settle(reader: SourceReader, source: Source, result: SourceVerification, deadline: float) -> None:
    """Compare the ids of the problems found again, once a second until none is left or `deadline`: those that
    match are in flight, and leave the problem counts."""
    while result.problem_ids and time.monotonic() < deadline:
        time.sleep(SETTLE_RECHECK_SECONDS)
        for kind, ids in list(result.problem_ids.items()):
            again = SourceVerification(code=source.code)
            lines = reader.lines_for_ids(sorted(ids))
            _compare(source, [line_digest(line) for line in lines], {"in": ids}, again)
            still = {row_id for problem in PROBLEM_KINDS for row_id in again.problem_ids.get(problem, ())}
            resolved = [row_id for row_id in ids if row_id not in still]
            setattr(result, kind, getattr(result, kind) - len(resolved))
            result.in_flight += len(resolved)
            result.examples[kind] = [row_id for row_id in result.examples[kind] if row_id in still]
            result.problem_ids[kind] = [row_id for row_id in ids if row_id in still]
            if not result.problem_ids[kind]:
                del result.problem_ids[kind]


def _next_boundary(reader: SourceReader, source: Source, low: int) -> int | None:
    """The highest id of the next step after `low`: the VERIFY_BATCH_ROWS-th id after it on whichever side (source,
    students, quarantine, duplicates) comes first; None when every side has fewer rows left (the last step)."""
    skip = VERIFY_BATCH_ROWS - 1
    candidates = [
        _source_nth_id_after(reader, low, skip),
        *(next(iter(queryset.filter(**{f"{column}__gt": low}).order_by(column)
                    .values_list(column, flat=True)[skip:skip + 1]), None)
          for queryset, column in _warehouse_sides(source)),
    ]
    present = [candidate for candidate in candidates if candidate is not None]
    return min(present) if present else None


def _warehouse_sides(source: Source):
    return ((Student.objects.filter(source=source), "source_row_id"),
            (QuarantinedRow.objects.filter(source=source), "source_row_id"),
            (DuplicateStudent.objects.filter(source=source), "superseded_row_id"))


def _source_nth_id_after(reader: SourceReader, low: int, skip: int) -> int | None:
    query = (sa.select(reader.id_column).select_from(reader.table).where(reader.id_column > low)
             .order_by(reader.id_column).offset(skip).limit(1))
    try:
        with reader.engine.connect() as connection:
            return connection.execute(query).scalar()
    except sa.exc.SQLAlchemyError as exc:
        raise SourceUnavailable(source_error_text(exc, reader.source.url)) from None  # the cause may quote the URL


def _compare_range(reader: SourceReader, source: Source, low: int, high: int, result: SourceVerification) -> int:
    """Classify every id in (low, high] on either side; the number of source rows in the range."""
    digests = [line_digest(line) for line in reader.lines_in_id_range(low + 1, high)]
    result.source_rows += len(digests)
    _compare(source, digests, {"gt": low, "lte": high}, result)
    return len(digests)


def _compare(source: Source, digests: list[tuple[int, str]], ids: dict, result: SourceVerification) -> None:
    """Classify every source row (`digests`: (id, MD5)) and every warehouse row whose id matches `ids` (Django
    lookups on the id column: {"gt": low, "lte": high}, or {"in": [...]})."""
    in_source = dict(digests)

    def of(column: str) -> dict:
        return {f"{column}__{lookup}": value for lookup, value in ids.items()}

    students: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for row_id, stored_md5, content_md5 in (
            Student.objects.filter(source=source, **of("source_row_id"))
            .annotate(content_md5=MD5("raw")).values_list("source_row_id", "raw_md5", "content_md5")):
        students[row_id].append((stored_md5, content_md5))
    quarantined = dict(
        QuarantinedRow.objects.filter(source=source, **of("source_row_id"))
        .annotate(content_md5=MD5("raw")).values_list("source_row_id", "content_md5"))
    # A superseded row is accounted for only while another row of the same CNTSTUID is the student.
    represented = Student.objects.filter(source=source, cntstuid=OuterRef("cntstuid")).exclude(
        source_row_id=OuterRef("superseded_row_id"))
    superseded = dict(
        DuplicateStudent.objects.filter(source=source, **of("superseded_row_id"))
        .annotate(represented=Exists(represented)).values_list("superseded_row_id", "represented"))

    for row_id, digest in in_source.items():
        versions = students.get(row_id)
        if versions:
            if len(versions) > 1 or row_id in quarantined:
                result.note("duplicated", row_id)
            elif versions[0] == (digest, digest):
                result.note("loaded", row_id)
            else:
                result.note("differing", row_id)
        elif row_id in quarantined:
            result.note("quarantined" if quarantined[row_id] == digest else "differing", row_id)
        elif superseded.get(row_id):
            result.note("superseded", row_id)
        else:
            result.note("missing", row_id)
    for row_id in sorted((set(students) | set(quarantined) | set(superseded)) - set(in_source)):
        result.note("extra", row_id)


def describe(result: SourceVerification) -> str:
    """One line per source (and for the total), as the command and the chaos report print it."""
    if result.error and result.code != "total":
        return f"{result.code}: could not be read: {result.error}"
    return (f"{result.code}: {result.source_rows:,} source rows: {result.loaded:,} loaded, "
            f"{result.quarantined:,} quarantined, {result.superseded:,} superseded; "
            + ", ".join(f"{getattr(result, kind):,} {kind}" for kind in PROBLEM_KINDS)
            + (f" ({result.in_flight:,} in flight, matched within the settle time)" if result.in_flight else ""))

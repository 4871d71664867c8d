"""A clone with no ../shared/ beside it: the simulator generates from the shipped codebook and country means alone,
and what it generates is plausible (it loads, nothing quarantined)."""

from django.conf import settings

from codebook.catalogue import read_codebook_csv
from ingestion.extract import escape_copy_text
from ingestion.transform import transform
from simulator.students import StudentFactory


def test_rows_generated_without_the_sample_pass_every_rule_of_the_door():
    specs = read_codebook_csv(settings.SHIPPED_CODEBOOK_PATH)
    factory = StudentFactory(seed=3, specs=specs, sample_path=None, country_means_path=settings.SHIPPED_COUNTRY_MEANS_PATH)
    assert factory.coarse
    students = factory.students("ALB", 300)
    lines = ["\t".join([str(i + 1), "2026-12-01 10:00:00+00",
                        *(escape_copy_text(row.get(spec.name.lower())) for spec in specs)]).encode()
             for i, row in enumerate(students)]
    result = transform(lines, specs, country="ALB")
    assert [reasons for _, _, reasons, _ in result.quarantined][:3] == []
    assert len(result.good_index) == 300

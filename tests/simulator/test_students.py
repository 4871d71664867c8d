"""Synthetic students: shaped like the codebook says, re-keyed to their country, reproducible, on target means."""

from __future__ import annotations

import csv

import pytest

from codebook.catalogue import Kind
from simulator.students import TEXT_MISSING, TextStyle, UnknownCountryError, country_means, weighted_pv_mean

DOMAINS = ("MATH", "READ", "SCIE")


def test_every_row_has_the_codebook_columns_with_values_the_codebook_allows(make_factory, specs):
    rows = make_factory().students("ALB", 300) + make_factory(seed=8).students("DEU", 300)

    names = {spec.name.lower() for spec in specs}
    assert len(names) == 1118
    for row in rows:
        assert set(row) == names
        for spec in specs:
            value = row[spec.name.lower()]
            if value is None or spec.is_missing(value):
                continue
            if spec.is_text:
                assert isinstance(value, str) and len(value) <= spec.width, (spec.name, value)
            elif spec.decimals == 0:
                # The integer column types of a typed source table are chosen from these widths.
                assert isinstance(value, int) and abs(value) < 10**spec.width, (spec.name, value)
            else:
                assert isinstance(value, float), (spec.name, value)
            if spec.kind == Kind.CATEGORICAL:
                assert float(value) in spec.value_labels, (spec.name, value)


def test_missing_codes_and_gaps_of_the_sample_are_kept(make_factory, specs):
    rows = make_factory().students("ALB", 500)
    missing_codes = sum(1 for row in rows for spec in specs
                        if row[spec.name.lower()] is not None and spec.is_missing(row[spec.name.lower()]))
    system_missing = sum(1 for row in rows for value in row.values() if value is None)
    assert missing_codes > 0 and system_missing > 0


def test_students_are_rekeyed_to_their_country_and_grouped_into_schools(make_factory):
    factory = make_factory()
    rows = factory.students("ALB", 200) + factory.students("ALB", 200)

    assert {row["cnt"] for row in rows} == {"ALB"}
    assert {row["cntryid"] for row in rows} == {8}  # Albania's CNTRYID in the codebook's labels
    student_ids = [row["cntstuid"] for row in rows]
    assert len(set(student_ids)) == len(student_ids), "CNTSTUID must be unique across calls"
    assert all(800000 < cntstuid < 900000 for cntstuid in student_ids)
    schools = {row["cntschid"] for row in rows}
    assert 1 < len(schools) < len(rows) / 5, "students come in schools of several"
    assert all(row["stratum"].startswith("ALB") for row in rows), "national codes inside text are re-keyed too"
    assert {row["oecd"] for row in rows} == {0}, "Albania is not an OECD member (the sample's students all are)"


def test_final_and_replicate_weights_are_scaled_together(make_factory, sample_path, specs):
    from simulator.students import sample_records

    templates = {(row["w_fstuwt"], row["w_fsturwt1"], row["w_fsturwt2"]) for row in sample_records(sample_path, specs)}
    for row in make_factory().students("AUT", 50):
        ratios = [row[f"w_fsturwt{g}"] / row["w_fstuwt"] for g in (1, 2)]
        # Some template has the same replicate-to-final ratios: the school factor multiplied them all alike.
        assert any(abs(r1 / w - ratios[0]) < 1e-4 and abs(r2 / w - ratios[1]) < 1e-4 for w, r1, r2 in templates)


def test_the_same_seed_gives_the_same_students_and_another_seed_others(make_factory):
    first = make_factory(seed=11).students("BEL", 50)
    again = make_factory(seed=11).students("BEL", 50)
    other = make_factory(seed=12).students("BEL", 50)
    assert first == again
    assert [row["pv1math"] for row in first] != [row["pv1math"] for row in other]


@pytest.mark.parametrize("country", ["DEU", "COL", "CHL", "ALB", "ESP"])
def test_weighted_country_means_of_10000_students_land_near_the_published_ones(make_factory, means_path, country):
    """Tolerance 5 points: with 10,000 students, PV standard deviations near 90 and the weights' design effect
    (~1.5), the standard error of a weighted mean is about 1.2 points; 5 points is four of them, yet far smaller
    than the gaps between countries this test tells apart (COL's mathematics is 109 points below DEU's)."""
    published, oecd_average = country_means(means_path)
    rows = make_factory().students(country, 10_000)

    for domain in DOMAINS:
        # Independently of the factory: the published figure, else the OECD average of the file.
        target = published.get(country, {}).get(domain, oecd_average[domain])
        assert weighted_pv_mean(rows, domain) == pytest.approx(target, abs=5.0), domain


def test_countries_without_a_published_mean_aim_at_the_oecd_average_of_the_file(means_path, make_factory):
    with means_path.open() as handle:
        oecd = [row for row in csv.DictReader(handle) if row["math_se"]]  # OECD members come with standard errors
    oecd_math = sum(float(row["math_mean"]) for row in oecd) / len(oecd)
    reading = [float(row["read_mean"]) for row in oecd if row["read_mean"]]
    oecd_read = sum(reading) / len(reading)

    factory = make_factory()
    assert factory.target_means("ALB")["MATH"] == pytest.approx(oecd_math)
    assert factory.target_means("ESP")["READ"] == pytest.approx(oecd_read)  # Spain's reading was not published
    assert factory.target_means("ESP")["MATH"] == pytest.approx(481.392613)


def test_text_style_writes_missing_codes_and_gaps_as_na(make_factory, specs):
    typed = make_factory().students("CAN", 100)
    text_style = TextStyle(specs)
    for row in typed:
        converted = text_style.row(row)
        for spec in specs:
            column = spec.name.lower()
            assert isinstance(converted[column], str)
            if row[column] is None or spec.is_missing(row[column]):
                assert converted[column] == TEXT_MISSING
            elif not spec.is_text:
                assert float(converted[column]) == pytest.approx(row[column], abs=10 ** -spec.decimals)


def test_without_the_sample_it_still_works_from_the_codebook_alone(make_factory, specs):
    factory = make_factory(sample_path=None, country_means_path=None)
    rows = factory.students("BRA", 2_000)

    assert factory.coarse
    assert len({row["cntstuid"] for row in rows}) == 2_000
    assert weighted_pv_mean(rows, "MATH") == pytest.approx(500, abs=10)
    for spec in specs:
        value = rows[0][spec.name.lower()]
        if spec.kind == Kind.CATEGORICAL and value is not None and not spec.is_missing(value):
            assert float(value) in spec.value_labels


def test_an_unknown_country_is_refused_clearly(make_factory):
    with pytest.raises(UnknownCountryError, match="XYZ"):
        make_factory().students("XYZ", 1)

"""Reads for the dashboard page: the reference data the page needs besides the API (where countries are on a map)."""

from __future__ import annotations

from codebook.models import ValueLabel

# PISA participants the 1:110m world map has no polygon for (too small at that scale, or a region of a country),
# drawn as points instead: (latitude, longitude) of the city or the region's centre.
MAP_POINTS = {
    "HKG": (22.32, 114.17),   # Hong Kong
    "MAC": (22.20, 113.55),   # Macao
    "SGP": (1.35, 103.82),    # Singapore
    "MLT": (35.90, 14.45),    # Malta
    "KSV": (42.60, 20.90),    # Kosovo (no ISO 3166 numeric code)
    "QCI": (33.00, 119.00),   # Beijing, Shanghai, Jiangsu, Zhejiang (China)
    "QMC": (55.75, 37.62),    # Moscow City (Russia)
    "QMR": (55.50, 38.90),    # Moscow Region (Russia)
    "QRT": (55.80, 50.70),    # Tatarstan (Russia)
    "QAZ": (40.41, 49.87),    # Baku (Azerbaijan)
}


def country_map_codes() -> dict[str, int]:
    """PISA country code (CNT) -> ISO 3166 numeric code, the world map's feature ids.

    The codebook gives both per participant: CNT's value labels ("FRA" = "France") and CNTRYID's (250 = "France").
    They are joined on the labels as imported, which staff edits do not change.
    """
    numeric_by_name = {
        label.imported_label: int(label.numeric_value)
        for label in ValueLabel.objects.filter(variable__name="CNTRYID", is_missing=False, numeric_value__isnull=False)
    }
    return {
        label.value: numeric_by_name[label.imported_label]
        for label in ValueLabel.objects.filter(variable__name="CNT", is_missing=False)
        if label.imported_label in numeric_by_name and label.value not in MAP_POINTS
    }

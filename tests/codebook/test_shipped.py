"""The codebook and the published country means ship with the product: a clone without ../shared/ runs."""

import filecmp
from pathlib import Path

from django.conf import settings
from django.core.management import call_command

from codebook.catalogue import read_codebook_csv
from tests.conftest import shared_path


def test_the_shipped_codebook_is_the_shared_one_compressed():
    shipped = read_codebook_csv(settings.SHIPPED_CODEBOOK_PATH)
    assert len(shipped) == 1118 and shipped[0].name == "CNTRYID"
    assert shipped == read_codebook_csv(shared_path("pisa2018", "codebook.csv"))
    assert filecmp.cmp(settings.SHIPPED_COUNTRY_MEANS_PATH, shared_path("pisa2018", "oecd_2018_country_means.csv"),
                       shallow=False)


def test_packaging_gives_the_same_bytes_from_the_same_input(settings, tmp_path, capsys):
    shared_path("pisa2018", "codebook.csv")
    settings.SHIPPED_CODEBOOK_PATH = tmp_path / "codebook.csv.gz"
    settings.SHIPPED_COUNTRY_MEANS_PATH = tmp_path / "means.csv"
    call_command("package_reference_data")
    assert "1,118 variables" in capsys.readouterr().out
    shipped = Path(__file__).resolve().parents[2] / "codebook" / "data" / "pisa2018_codebook.csv.gz"
    assert settings.SHIPPED_CODEBOOK_PATH.read_bytes() == shipped.read_bytes()  # the committed file is up to date

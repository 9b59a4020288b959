"""The asid command line."""

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from astro_asid.catalog import read_catalog
from astro_asid.cli import main


def test_detectors_lists_builtins(capsys):
    assert main(["detectors"]) == 0
    out = capsys.readouterr().out
    for name in ("peaks", "dao", "log", "tsmap"):
        assert name in out
    assert "astro_asid" in out


def test_find_writes_catalog_regions_plot(tmp_path, bright_image):
    data, wcs, pos = bright_image
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.fits"
        fits.PrimaryHDU(data, header=wcs.to_header()).writeto(p)
        paths.append(str(p))
    out = str(tmp_path / "{stem}.ecsv")
    reg = str(tmp_path / "{stem}.reg")
    png = str(tmp_path / "{stem}.png")
    assert main(["find", *paths, "-d", "peaks", "-o", out, "--regions", reg, "--plot", png,
                 "-q"]) == 0
    cat = read_catalog(tmp_path / "img0.ecsv")
    assert len(cat) == 5
    assert (tmp_path / "img1.reg").read_text().count("circle") == 5
    assert (tmp_path / "img1.png").stat().st_size > 1000


def test_find_needs_stem_for_many_files(tmp_path):
    with pytest.raises(SystemExit):
        main(["find", "a.fits", "b.fits", "-o", "cat.ecsv"])


def test_find_bad_file_reports_and_fails(tmp_path, capsys):
    assert main(["find", str(tmp_path / "missing.fits")]) == 1
    assert "missing.fits" in capsys.readouterr().err


def test_find_characterizer_options(tmp_path, bright_image, capsys):
    data, wcs, pos = bright_image
    p = tmp_path / "img.fits"
    fits.PrimaryHDU(data, header=wcs.to_header()).writeto(p)
    assert main(["find", str(p), "-d", "peaks", "--no-characterize", "-q",
                 "-o", str(tmp_path / "c.ecsv")]) == 0
    assert np.all(read_catalog(tmp_path / "c.ecsv")["source_prob"].mask)
    # a characteriser that cannot be read is reported, not a traceback
    assert main(["find", str(p), "-d", "peaks", "--characterizer",
                 str(tmp_path / "none"), "-q"]) == 1
    assert "none" in capsys.readouterr().err


def test_demo_runs(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "precision=" in out and "recall=" in out
    # the shipped deep detector runs, not the toy fallback, and is characterised
    assert "Detector 'asid-unet'" in out
    assert "Characterised by 'characterize-fermi-lat'" in out
    assert png.stat().st_size > 1000


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "astro_asid", "--version"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "astro_asid" in res.stdout

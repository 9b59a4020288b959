"""The output catalog: schema, validation, ECSV/FITS round trips, regions."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable, vstack

from astro_asid.catalog import (
    CATALOG_COLUMNS, build_catalog, empty_catalog, read_catalog, to_regions, validate_candidates,
    validate_catalog, write_catalog,
)
from astro_asid.core import as_sky_image
from astro_asid.utils.exceptions import PluginError

from helpers import make_wcs


@pytest.fixture
def image():
    return as_sky_image(np.ones((5, 64, 64)), make_wcs(), instrument="fermi-lat",
                        energy_edges=[0.5, 1, 2, 7, 20, 200] * u.GeV)


@pytest.fixture
def cat(image):
    cands = QTable({"x_centroid": [3.0, 10.0, 40.0], "y_centroid": [5.0, 20.0, 60.0],
                    "score": [0.2, 0.9, 0.5], "x_err": [0.3, 0.2, np.nan],
                    "y_err": [0.4, 0.2, np.nan], "flux": [10, 20, 5] * u.ct,
                    "flux_err": [3, 4, 2] * u.ct, "ts": [5.0, 80.0, 20.0]})
    return build_catalog(validate_candidates(cands, image.shape), image, meta={"detector": "x"})


def test_schema_and_order(cat):
    assert list(cat.colnames[:len(CATALOG_COLUMNS)]) == list(CATALOG_COLUMNS)
    assert "ts" in cat.colnames
    assert list(cat["score"]) == [0.9, 0.5, 0.2]
    assert list(cat["id"]) == [1, 2, 3]
    assert isinstance(cat["sky_centroid"], SkyCoord)
    assert cat["sky_centroid"].frame.name == "galactic"
    assert cat["sky_centroid_err"].shape == (3, 2)
    # 0.2 px of 10/64 deg pixels
    np.testing.assert_allclose(cat["sky_centroid_err"][0].unmasked.to_value(u.deg),
                               [0.2 * 10 / 64] * 2, rtol=1e-3)
    assert cat["sky_centroid_err"].mask[1].all()  # unknown errors are masked, not invented
    assert cat["flux"].unit == u.ct
    assert cat.meta["class_names"] == ["AGN", "PSR", "FAKE"]
    assert cat["class_prob"].shape == (3, 3) and cat["class_prob"].mask.all()
    assert cat["source_prob"].mask.all()
    assert cat.meta["flux_band"] == "0.5-200 GeV"
    validate_catalog(cat)


def test_pixel_to_sky_matches_wcs(cat, image):
    c = SkyCoord.from_pixel(10.0, 20.0, image.wcs, origin=0)
    assert cat["sky_centroid"][0].separation(c) < 1e-8 * u.deg


def test_class_prob_filled(image):
    cands = QTable({"x_centroid": [3.0], "y_centroid": [5.0], "score": [0.2],
                    "class_prob": [[0.1, 0.7, 0.2]], "source_prob": [0.8]})
    cat = build_catalog(cands, image)
    assert cat["class_label"][0] == "PSR"
    assert cat["source_prob"][0] == 0.8
    with pytest.raises(PluginError, match="2 classes but class_names has 3"):
        build_catalog(QTable({"x_centroid": [3.0], "y_centroid": [5.0], "score": [0.2],
                              "class_prob": [[0.5, 0.5]]}), image)


@pytest.mark.parametrize("cands, match", [
    ([1, 2], "not an astropy Table"),
    (QTable({"x_centroid": [1.0], "score": [0.5]}), "y_centroid"),
    (QTable({"x_centroid": [np.nan], "y_centroid": [1.0], "score": [0.5]}), "non-finite"),
    (QTable({"x_centroid": [1.0], "y_centroid": [1.0], "score": [1.5]}), "outside 0..1"),
    (QTable({"x_centroid": [100.0], "y_centroid": [1.0], "score": [0.5]}), "outside the"),
])
def test_validate_candidates_names_origin(cands, match):
    with pytest.raises(PluginError, match=match):
        validate_candidates(cands, (64, 64), origin="detector 'bad' (from pkg)")
    with pytest.raises(PluginError, match="bad"):
        validate_candidates(cands, (64, 64), origin="detector 'bad' (from pkg)")


def test_empty_catalog_stacks(cat):
    empty = empty_catalog(wcs=make_wcs(), class_names=["AGN", "PSR", "FAKE"], flux_unit=u.ct)
    validate_catalog(empty)
    assert len(empty) == 0 and set(CATALOG_COLUMNS) <= set(empty.colnames)
    both = vstack([empty, cat[list(CATALOG_COLUMNS)]])
    assert len(both) == len(cat)


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_round_trip(cat, tmp_path, suffix):
    path = tmp_path / f"cat{suffix}"
    write_catalog(cat, path)
    back = read_catalog(path)
    assert isinstance(back["sky_centroid"], SkyCoord)
    assert back["sky_centroid"].frame.name == "galactic"
    assert np.all(back["sky_centroid"].separation(cat["sky_centroid"]) < 1e-9 * u.deg)
    assert back["sky_centroid_err"].unit == u.deg
    assert back["flux"].unit == u.ct
    np.testing.assert_array_equal(back["sky_centroid_err"].mask, cat["sky_centroid_err"].mask)
    assert back["class_prob"].shape == (3, 3)
    assert back.meta["class_names"] == ["AGN", "PSR", "FAKE"]
    validate_catalog(back)
    with pytest.raises(OSError):
        write_catalog(cat, path)  # no silent overwrite


def test_unknown_format(cat, tmp_path):
    with pytest.raises(ValueError, match="unknown catalog format"):
        write_catalog(cat, tmp_path / "cat.txt")


def test_validate_catalog_errors(cat):
    bad = cat.copy()
    bad.remove_column("flux")
    with pytest.raises(ValueError, match="flux"):
        validate_catalog(bad)
    bad = cat.copy()
    bad["score"] = bad["score"][::-1]
    with pytest.raises(ValueError, match="sorted"):
        validate_catalog(bad)


def test_regions(cat, tmp_path):
    path = tmp_path / "cat.reg"
    regs = to_regions(cat, path)
    assert len(regs) == 3
    text = path.read_text()
    assert "galactic" in text and text.count("circle") == 3
    # 2 sigma of the larger error, or 0.1 deg where unknown
    assert regs[0].radius.to_value(u.deg) == pytest.approx(2 * 0.2 * 10 / 64, rel=1e-3)
    assert regs[1].radius.to_value(u.deg) == pytest.approx(0.1)
    from regions import Regions
    assert len(Regions.read(path, format="ds9")) == 3

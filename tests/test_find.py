"""find_sources: the end-to-end contract, bad detectors, empty results, ASIDStarFinder."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import QTable
from photutils.utils.exceptions import NoDetectionsWarning

from astro_asid import ASIDStarFinder, find_sources
from astro_asid.catalog import CATALOG_COLUMNS, validate_catalog
from astro_asid.detection import Detector
from astro_asid.utils.exceptions import PluginError

from helpers import make_wcs, point_sources


class FixedDetector(Detector):
    """Returns what it was given (for contract tests)."""

    name = "fixed-test"

    def __init__(self, table=None):
        self.table = table

    def detect(self, image):
        return self.table


def _nearest_match(cat, positions):
    x = np.asarray(cat["x_centroid"].value)
    y = np.asarray(cat["y_centroid"].value)
    d = np.hypot(x[:, None] - positions[:, 0], y[:, None] - positions[:, 1])
    return d.min(axis=0)


def test_find_sources_recovers_injected(bright_image):
    data, wcs, pos = bright_image
    cat = find_sources(data, wcs, detector="peaks")
    validate_catalog(cat)
    assert set(CATALOG_COLUMNS) <= set(cat.colnames)
    assert np.all(_nearest_match(cat, pos) < 0.5)
    assert cat.meta["detector"] == "peaks" and cat.meta["detector_origin"] == "astro_asid"
    assert "astro_asid_version" in cat.meta
    # sky positions are the WCS of the pixel positions
    sky = SkyCoord.from_pixel(cat["x_centroid"].value, cat["y_centroid"].value, wcs, origin=0)
    assert np.all(cat["sky_centroid"].separation(sky) < 1e-8 * u.deg)


def test_fits_path_input(tmp_path, bright_image):
    data, wcs, pos = bright_image
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(data.astype(">f4"), header=wcs.to_header()).writeto(path)
    cat = find_sources(str(path), detector="peaks")
    assert np.all(_nearest_match(cat, pos) < 0.5)


def test_cube_input(bright_image):
    data, wcs, pos = bright_image
    cube = np.stack([data / 2, data / 2])
    cat = find_sources(cube, wcs, detector="dao", energy_edges=[1, 10, 100] * u.GeV)
    assert np.all(_nearest_match(cat, pos) < 0.5)
    assert cat.meta["energy_edges"] == [1, 10, 100]


def test_nothing_found_gives_empty_schema(wcs64):
    cat = find_sources(np.ones((64, 64)), wcs64, detector="peaks")
    assert len(cat) == 0
    validate_catalog(cat)
    assert set(CATALOG_COLUMNS) <= set(cat.colnames)


def test_masked_region_has_no_sources(bright_image):
    data, wcs, pos = bright_image
    mask = np.zeros(data.shape, bool)
    mask[:32, :32] = True   # hides the source at (12.3, 15.6)
    cat = find_sources(data, wcs, detector="peaks", mask=mask)
    x = cat["x_centroid"].value
    y = cat["y_centroid"].value
    assert not np.any((x < 31.5) & (y < 31.5))
    assert len(cat) == 4


def test_counts_detector_rejects_negative(wcs64):
    with pytest.raises(ValueError, match="needs counts.*negative"):
        find_sources(-np.ones((64, 64)), wcs64, detector="tsmap")


def test_unknown_detector_and_option(wcs64):
    with pytest.raises(ValueError, match="unknown detector"):
        find_sources(np.ones((64, 64)), wcs64, detector="nope")
    with pytest.raises(TypeError):
        find_sources(np.ones((64, 64)), wcs64, detector="peaks", bogus=3)


@pytest.mark.parametrize("table, match", [
    (None, "not an astropy Table"),
    (QTable({"x": [1.0]}), "required column"),
    (QTable({"x_centroid": [1.0], "y_centroid": [1.0], "score": [7.0]}), "outside 0..1"),
])
def test_bad_plugin_output_names_plugin(wcs64, table, match):
    with pytest.raises(PluginError, match=f"fixed-test.*{match}|{match}") as info:
        find_sources(np.ones((64, 64)), wcs64, detector=FixedDetector(table))
    assert "fixed-test" in str(info.value)


def test_crashing_plugin_is_named(wcs64):
    class Crash(Detector):
        name = "crash-test"

        def detect(self, image):
            raise ZeroDivisionError("boom")

    with pytest.raises(PluginError, match="crash-test.*ZeroDivisionError: boom"):
        find_sources(np.ones((64, 64)), wcs64, detector=Crash())


def test_instance_with_options_rejected(wcs64):
    with pytest.raises(TypeError, match="options cannot be combined"):
        find_sources(np.ones((64, 64)), wcs64, detector=FixedDetector(), nsigma=3)


def test_starfinder_drop_in(bright_image):
    data, _, pos = bright_image
    finder = ASIDStarFinder("peaks")
    stars = finder(data)
    assert {"id", "x_centroid", "y_centroid", "score"} <= set(stars.colnames)
    assert np.all(_nearest_match(stars, pos) < 0.5)
    with pytest.warns(NoDetectionsWarning):
        assert finder(np.ones((64, 64))) is None
    mask = np.zeros(data.shape, bool)
    mask[:32, :32] = True
    assert len(finder(data, mask=mask)) == 4
    with pytest.raises(ValueError, match="2-D"):
        finder(np.ones((2, 8, 8)))


def test_healpix_array_with_nside_dispatches_to_fermi_adapter():
    import healpy as hp

    npix = hp.nside2npix(16)
    cube = np.random.default_rng(0).poisson(2.0, (5, npix)).astype(float)
    cat = find_sources(cube, nside=16, detector="tsmap", ts_threshold=1e6, tiles=[0, 1])
    validate_catalog(cat)
    assert len(cat) == 0 and cat["sky_centroid"].frame.name == "galactic"


def test_builtin_adapters_registered():
    from astro_asid.plugins import get_registry

    assert {"fermi-healpix", "gammapy-map"} <= set(get_registry().adapters.names())


def test_catalog_to_gammapy_models(bright_image):
    from astro_asid.catalog import to_gammapy_models

    data, wcs, _ = bright_image
    cat = find_sources(data, wcs, detector="peaks")
    models = to_gammapy_models(cat)
    assert len(models) == len(cat)


def test_sky_image_without_wcs(wcs64):
    """A SkyImage made without a WCS: a clear error, or the wcs= given alongside."""
    from astro_asid import SkyImage
    data = np.random.default_rng(2).normal(100.0, 5.0, (64, 64)).astype(np.float32)
    data[30:33, 30:33] += 300.0
    with pytest.raises(ValueError, match="no celestial WCS"):
        find_sources(SkyImage(data[np.newaxis]), detector="peaks")
    with pytest.raises(ValueError, match="no celestial WCS"):
        find_sources(SkyImage(data[np.newaxis]), detector="peaks", instrument="optical")
    cat = find_sources(SkyImage(data[np.newaxis]), wcs64, detector="peaks")
    assert len(cat) >= 1 and np.all(np.isfinite(cat["sky_centroid"].spherical.lon.deg))

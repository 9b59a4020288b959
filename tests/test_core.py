"""Input normalisation: every supported input type and every documented rejection."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, NDData
from astropy.wcs import WCS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from astro_asid import SkyImage, as_sky_image
from astro_asid.utils.exceptions import ASIDInputWarning

from helpers import make_wcs


def test_numpy_2d(wcs64):
    img = as_sky_image(np.ones((64, 64)), wcs64)
    assert isinstance(img, SkyImage)
    assert img.data.shape == (1, 64, 64) and img.data.dtype == np.float32
    assert img.n_bands == 1 and img.shape == (64, 64)
    assert not img.mask.any()


def test_cube_and_energy_edges(wcs64):
    img = as_sky_image(np.ones((5, 64, 64)), wcs64,
                       energy_edges=[0.5, 1, 2, 7, 20, 200] * u.GeV)
    assert img.n_bands == 5
    assert img.energy_edges.unit == u.GeV


@pytest.mark.parametrize("edges, match", [
    ([0.5, 1, 2] * u.GeV, "need 6 energy edges"),
    ([0.5, 1, 2, 7, 20, 200] * u.m, "energy units"),
    ([0.5, 1, 1, 7, 20, 200] * u.GeV, "increase"),
])
def test_bad_energy_edges(wcs64, edges, match):
    with pytest.raises(ValueError, match=match):
        as_sky_image(np.ones((5, 64, 64)), wcs64, energy_edges=edges)


def test_masked_array_quantity_nddata(wcs64):
    data = np.arange(64 * 64, dtype=float).reshape(64, 64)
    m = np.zeros_like(data, bool)
    m[0, :] = True
    img = as_sky_image(np.ma.MaskedArray(data, m), wcs64)
    assert img.mask[0, 0].all() and np.isnan(img.data[0, 0, 0])
    img = as_sky_image(data * u.ct, wcs64)
    assert img.unit == u.ct
    img = as_sky_image(NDData(data, wcs=wcs64, mask=m, unit="adu"))
    assert img.unit == u.adu and img.mask[0, 0, 5] and img.wcs is not None
    img = as_sky_image(CCDData(data, wcs=wcs64, unit="electron"))
    assert img.unit == u.electron


def test_fits_path_hdulist_hdu_big_endian(tmp_path, wcs64):
    data = np.arange(64 * 64, dtype=">f8").reshape(64, 64)  # big-endian as FITS stores it
    hdu = fits.PrimaryHDU(data, header=wcs64.to_header())
    hdu.header["BUNIT"] = "count"
    path = tmp_path / "img.fits"
    hdu.writeto(path)
    for obj in (str(path), path, fits.open(path), hdu):
        img = as_sky_image(obj)
        assert img.data.dtype == np.dtype("float32") and img.data.dtype.isnative
        np.testing.assert_allclose(img.data[0], data)
        assert img.wcs.wcs.ctype[0] == "GLON-CAR"
    assert as_sky_image(path).meta["filename"] == str(path)
    assert as_sky_image(path).unit == u.ct


def test_fits_extension_and_compressed(tmp_path, wcs64):
    data = np.random.default_rng(0).poisson(3, (64, 64)).astype(np.int32)
    hdul = fits.HDUList([fits.PrimaryHDU(),
                         fits.CompImageHDU(data, header=wcs64.to_header())])
    path = tmp_path / "comp.fits"
    hdul.writeto(path)
    img = as_sky_image(path)
    np.testing.assert_array_equal(img.data[0], data)


def test_wcs_with_energy_axis_is_reduced_to_celestial():
    w = WCS(naxis=3)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR", "ENERGY"]
    img = as_sky_image(np.ones((3, 10, 10)), w)
    assert img.wcs.naxis == 2


def test_nan_pixels_are_masked(wcs64):
    data = np.ones((64, 64))
    data[3, 4] = np.nan
    img = as_sky_image(data, wcs64)
    assert img.mask[0, 3, 4] and img.mask.sum() == 1


def test_inf_pixels_warn(wcs64):
    data = np.ones((64, 64))
    data[3, 4] = np.inf
    with pytest.warns(ASIDInputWarning, match="infinite"):
        img = as_sky_image(data, wcs64)
    assert img.mask[0, 3, 4]


@pytest.mark.parametrize("data, exc, match", [
    (np.zeros((0, 5)), ValueError, "empty"),
    (np.full((8, 8), np.nan), ValueError, "every pixel"),
    (np.ones((2, 2, 8, 8)), ValueError, "4 dimensions"),
    (np.ones(8), ValueError, "1 dimensions"),
    (np.ones((1, 8)), ValueError, "at least 2x2"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "numeric"),
    (np.ones((4, 4)) * 1j, TypeError, "complex"),
    ({"a": 1}, TypeError, "type dict"),
])
def test_rejections(data, exc, match):
    with pytest.raises(exc, match=match):
        as_sky_image(data, make_wcs(shape=(8, 8)))


def test_float32_overflow_rejected(wcs64):
    with pytest.raises(ValueError, match="float32 range"):
        as_sky_image(np.full((64, 64), 1e300), wcs64)


def test_all_masked_rejected(wcs64):
    with pytest.raises(ValueError, match="every pixel"):
        as_sky_image(np.ones((64, 64)), wcs64, mask=np.ones((64, 64), bool))


def test_mask_shape_and_dtype(wcs64):
    with pytest.raises(ValueError, match="mask of shape"):
        as_sky_image(np.ones((64, 64)), wcs64, mask=np.zeros((3, 3), bool))
    with pytest.raises(TypeError, match="boolean"):
        as_sky_image(np.ones((64, 64)), wcs64, mask=np.zeros((64, 64)))


def test_non_celestial_wcs_rejected():
    w = WCS(naxis=2)
    w.wcs.ctype = ["WAVE", "TIME"]
    with pytest.raises(ValueError, match="not celestial"):
        as_sky_image(np.ones((8, 8)), w)


def test_wcs_shape_mismatch_rejected(wcs64):
    wcs64.pixel_shape = (32, 32)
    with pytest.raises(ValueError, match="shape"):
        as_sky_image(np.ones((64, 64)), wcs64)


def test_missing_wcs(tmp_path):
    with pytest.raises(ValueError, match="no celestial WCS"):
        as_sky_image(np.ones((8, 8)))
    assert as_sky_image(np.ones((8, 8)), require_wcs=False).wcs is None
    with pytest.raises(TypeError, match="astropy.wcs.WCS"):
        as_sky_image(np.ones((8, 8)), wcs="GLON")


def test_missing_file_and_table_hdu(tmp_path):
    with pytest.raises(FileNotFoundError):
        as_sky_image(tmp_path / "nope.fits")
    path = tmp_path / "tab.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=np.ones(3))])]).writeto(path)
    with pytest.raises(ValueError, match="no image HDU"):
        as_sky_image(path)


def test_check_counts(wcs64):
    img = as_sky_image(-np.ones((64, 64)), wcs64)
    with pytest.raises(ValueError, match="negative"):
        img.check_counts("tsmap")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
                  shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)))
def test_fuzz_only_documented_exceptions(data):
    """Any array either becomes a SkyImage or raises the documented ValueError/TypeError."""
    shape = data.shape[-2:] if data.ndim >= 2 else (2, 2)
    wcs = make_wcs(shape=shape if min(shape) > 0 else (2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ASIDInputWarning)
        try:
            img = as_sky_image(data, wcs)
        except (ValueError, TypeError):
            return
    assert img.data.ndim == 3 and img.data.dtype == np.float32
    assert np.isnan(img.data[img.mask]).all()
    assert np.isfinite(img.data[~img.mask]).all()
    assert not img.mask.all()

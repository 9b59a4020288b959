"""Tests of the optical CCD field simulator and of the optical FITS adapter."""

import io
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import median_filter

from astro_asid.core import SkyImage, as_sky_image
from astro_asid.instruments.optical import (estimate_background, header_meta,
                                            prepare_optical, read_optical, snr_image)
from astro_asid.simulate.optical import (CROWDING_LEVELS, OpticalField, OpticalSkySimulator,
                                         moffat_alpha, optical_wcs)
from astro_asid.utils.exceptions import ASIDInputWarning

TRUTH_KEYS = {"x", "y", "flux", "mag", "is_star", "r_eff", "sersic_n", "q", "snr", "saturated"}
M13_DIR = os.path.join(os.path.dirname(fits.__file__), "hdu", "compressed", "tests", "data")


def mad_std(x):
    x = np.asarray(x, float)
    return 1.4826 * np.median(np.abs(x - np.median(x)))


@pytest.fixture(scope="module")
def sparse_field():
    return OpticalSkySimulator(shape=(128, 128), crowding="sparse", seed=11).sample()


@pytest.fixture(scope="module")
def prepared_sparse(sparse_field):
    hdu = sparse_field.to_hdu(optical_wcs(sparse_field.image.shape))
    return prepare_optical(fits.HDUList([hdu]), box_size=32)


# -- simulator ------------------------------------------------------------------------------
def test_moffat_alpha_gives_half_maximum_at_half_fwhm():
    for fwhm, beta in [(2.0, 2.5), (3.7, 4.0), (5.0, 3.1)]:
        alpha = moffat_alpha(fwhm, beta)
        assert (1.0 + (fwhm / 2.0) ** 2 / alpha ** 2) ** (-beta) == pytest.approx(0.5)


def test_optical_wcs_centre_and_scale():
    w = optical_wcs((64, 96), pixel_scale_arcsec=0.4, center=(30.0, -10.0))
    assert w.has_celestial and list(w.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    assert w.pixel_shape == (96, 64)
    ra, dec = w.pixel_to_world_values((96 - 1) / 2.0, (64 - 1) / 2.0)
    assert ra == pytest.approx(30.0) and dec == pytest.approx(-10.0)
    np.testing.assert_allclose(np.abs(w.wcs.cdelt), 0.4 / 3600.0)


def test_simulator_reproducible_for_a_seed_and_varies_with_it():
    def one(seed):
        return OpticalSkySimulator(shape=(64, 80), crowding="moderate", seed=seed,
                                   trail_probability=1.0).sample()
    a, b, c = one(3), one(3), one(4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.artefact_mask, b.artefact_mask)
    assert set(a.truth) == TRUTH_KEYS
    for k in TRUTH_KEYS:
        np.testing.assert_array_equal(a.truth[k], b.truth[k])
    for k in ("x", "y", "npix"):
        np.testing.assert_array_equal(a.cosmic_rays[k], b.cosmic_rays[k])
    assert a.trails == b.trails and a.meta == b.meta
    assert not np.array_equal(a.image, c.image)
    assert a.meta["gain"] != c.meta["gain"]
    # a Generator is accepted as the seed and consumed
    rng = np.random.default_rng(3)
    d = OpticalSkySimulator(shape=(64, 80), crowding="moderate", seed=rng,
                            trail_probability=1.0).sample()
    np.testing.assert_array_equal(d.image, a.image)


def test_field_structure_and_truth_consistency(sparse_field):
    f = sparse_field
    assert isinstance(f, OpticalField)
    assert f.image.shape == (128, 128) and f.image.dtype == np.float32
    assert f.artefact_mask.shape == (128, 128) and f.artefact_mask.dtype == np.uint8
    assert f.saturated.shape == (128, 128) and f.saturated.dtype == bool
    t = f.truth
    lengths = {k: len(v) for k, v in t.items()}
    assert len(set(lengths.values())) == 1, lengths
    n = lengths["x"]
    assert n > 0 and t["is_star"].sum() > 0 and (~t["is_star"]).sum() > 0
    np.testing.assert_array_equal(~t["is_star"], t["r_eff"] > 0)
    gal = ~t["is_star"]
    assert np.all((t["r_eff"][gal] >= 0.8) & (t["r_eff"][gal] <= 6.0))
    assert np.all((t["sersic_n"][gal] >= 0.5) & (t["sersic_n"][gal] <= 4.0))
    assert np.all((t["q"][gal] >= 0.3) & (t["q"][gal] <= 1.0))
    np.testing.assert_array_equal(t["q"][~gal], 1.0)
    assert np.all((t["x"] >= -0.5) & (t["x"] < 127.5) & (t["y"] >= -0.5) & (t["y"] < 127.5))
    assert np.all(t["flux"] > 0) and np.all(t["snr"] > 0)
    np.testing.assert_allclose(t["mag"], f.meta["zeropoint"] - 2.5 * np.log10(t["flux"]))
    # matched-filter S/N grows with flux for the (same-PSF) stars
    s = t["is_star"]
    order = np.argsort(t["flux"][s])
    assert np.all(np.diff(t["snr"][s][order]) > 0)
    # the sky level: the image median is close to bias + sky
    m = f.meta
    assert np.median(f.image) == pytest.approx(m["bias"] + m["sky_adu"], abs=5 * m["rms_adu"])
    assert m["crowding"] == "sparse"
    lo, hi = CROWDING_LEVELS["sparse"]
    assert lo <= m["density"] <= hi
    tab = f.truth_table()
    assert len(tab) == n and set(tab.colnames) == TRUTH_KEYS


def test_star_flux_is_conserved_in_a_large_aperture():
    # Sum of (image - local sky) over the whole rendered stamp of isolated, bright,
    # unsaturated stars, compared with the truth flux in units of its expected error
    # (sky + read noise over the box, the star's shot noise, the sky estimate's error).
    sim = OpticalSkySimulator(shape=(256, 256), crowding="sparse", fwhm_range=(2.0, 2.5),
                              galaxy_density=(1e-4, 3e-4), cosmic_ray_density=(1e-7, 1e-7),
                              trail_probability=0.0, seed=21)
    z, ratio = [], []
    for _ in range(40):
        f = sim.sample()
        t, m = f.truth, f.meta
        h = int(np.ceil(3.0 * m["fwhm"])) + 2              # half side of a star's stamp
        edge = h + 8                                        # outer edge of the sky ring
        ny, nx = f.image.shape
        x, y, flux = t["x"], t["y"], t["flux"]
        ix_all, iy_all = np.rint(x), np.rint(y)
        # half side of every source's stamp (galaxies: 5 r_eff + PSF kernel)
        half = np.where(t["is_star"], h, np.ceil(5.0 * t["r_eff"]) + h + 1)
        for i in np.flatnonzero(t["is_star"] & ~t["saturated"] & (t["snr"] > 200)):
            ix, iy = int(ix_all[i]), int(iy_all[i])
            if not (edge <= ix < nx - edge and edge <= iy < ny - edge):
                continue
            cheb = np.maximum(np.abs(ix_all - ix), np.abs(iy_all - iy))
            cheb[i] = np.inf
            if np.any((cheb <= half + h + 1) & (flux > 2e-3 * flux[i])):
                continue                                    # a neighbour's stamp overlaps
            cut = f.image[iy - edge:iy + edge + 1, ix - edge:ix + edge + 1].astype(float)
            assert cut.max() < m["saturation"] + m["bias"]
            yy, xx = np.mgrid[-edge:edge + 1, -edge:edge + 1]
            r = np.maximum(np.abs(xx), np.abs(yy))
            ring, box = r > h + 1, r <= h
            sky = np.median(cut[ring])                      # sky has a +-5 % gradient
            assert sky == pytest.approx(m["bias"] + m["sky_adu"], rel=0.06)
            total = (cut[box] - sky).sum()
            rms = m["rms_adu"]
            sigma = np.sqrt(box.sum() * rms ** 2 + flux[i] / m["gain"]
                            + (box.sum() * 1.2533 * rms / np.sqrt(ring.sum())) ** 2)
            z.append((total - flux[i]) / sigma)
            ratio.append(total / flux[i])
    assert len(z) >= 5
    z = np.array(z)
    assert np.all(np.abs(z) < 4.5), z
    assert abs(z.mean()) < 4.5 / np.sqrt(len(z)), z
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)


def test_crowding_levels_are_ordered():
    sim = OpticalSkySimulator(shape=(128, 128), seed=5)
    means = {}
    for level in ("empty", "sparse", "moderate", "crowded"):
        fields = sim.sample_fields(3, crowding=level)
        assert all(f.meta["crowding"] == level for f in fields)
        means[level] = np.mean([f.truth["is_star"].sum() for f in fields])
        if level == "empty":
            for f in fields:
                assert f.truth["is_star"].sum() == 0 and f.meta["density"] == 0.0
                assert len(f.truth["x"]) > 0 and np.all(f.truth["r_eff"] > 0)
    assert means["empty"] == 0 < means["sparse"] < means["moderate"] < means["crowded"]
    # expected counts from the density ranges (128**2 px): 8-33, 49-164, 328-983
    assert 4 <= means["sparse"] <= 45
    assert 30 <= means["moderate"] <= 200
    assert 200 <= means["crowded"] <= 1100


def test_default_crowding_mixes_levels():
    sim = OpticalSkySimulator(shape=(32, 32), seed=2, galaxy_density=(0.0, 0.0))
    got = {sim.sample().meta["crowding"] for _ in range(20)}
    assert got == {"sparse", "moderate", "crowded"}


def test_pixel_noise_matches_rms_adu():
    sim = OpticalSkySimulator(shape=(128, 128), crowding="empty", galaxy_density=(1e-4, 2e-4),
                              cosmic_ray_density=(1e-5, 2e-5), trail_probability=0.0, seed=8)
    for f in sim.sample_fields(4):
        img = f.image.astype(float)
        resid = img - median_filter(img, size=9, mode="reflect")
        assert mad_std(resid) == pytest.approx(f.meta["rms_adu"], rel=0.15)
        # rms_adu is the sky + read-noise model in ADU
        m = f.meta
        assert m["rms_adu"] == pytest.approx(np.sqrt(m["sky_adu"] * m["gain"]
                                                     + m["read_noise"] ** 2) / m["gain"])


def test_cosmic_rays_and_trails_in_artefact_mask():
    sim = OpticalSkySimulator(shape=(96, 96), crowding="sparse", cosmic_ray_density=(1e-3, 2e-3),
                              trail_probability=1.0, seed=13)
    for f in sim.sample_fields(2):
        art = f.artefact_mask
        assert set(np.unique(art)) <= {0, 1, 2}
        cr = f.cosmic_rays
        n = len(cr["x"])
        assert n == len(cr["y"]) == len(cr["npix"]) > 0
        assert np.all((cr["npix"] >= 1) & (cr["npix"] <= 8))
        n_cr_pix = int((art == 1).sum())
        assert 1 <= n_cr_pix <= cr["npix"].sum()
        for x, y in zip(cr["x"], cr["y"]):
            ix, iy = int(np.rint(x)), int(np.rint(y))
            assert (art[max(iy - 1, 0):iy + 2, max(ix - 1, 0):ix + 2] == 1).any()
        # cosmic-ray pixels carry extra charge
        assert np.median(f.image[art == 1]) > np.median(f.image) + 2 * f.meta["rms_adu"]
        assert len(f.trails) == 1 and (art == 2).sum() > 0
        tr = f.trails[0]
        assert {"x0", "y0", "x1", "y1", "peak_snr"} <= set(tr)
        assert 3.0 <= tr["peak_snr"] <= 50.0
    no_art = OpticalSkySimulator(shape=(64, 64), crowding="sparse", trail_probability=0.0,
                                 seed=13).sample_fields(3)
    assert all(f.trails == [] and not (f.artefact_mask == 2).any() for f in no_art)


def test_saturated_pixels_are_clipped_at_the_saturation_level():
    sim = OpticalSkySimulator(shape=(64, 64), crowding="crowded", seed=3)
    f = sim.sample()
    assert f.saturated.any()
    level = np.float32(f.meta["saturation"] + f.meta["bias"])
    np.testing.assert_array_equal(f.image[f.saturated], level)
    assert f.image.max() == level
    assert not (f.image[~f.saturated] >= level).any()
    assert f.truth["saturated"].any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown crowding 'dense'"):
        OpticalSkySimulator(crowding="dense")
    with pytest.raises(ValueError, match="unknown crowding 'galaxy'"):
        OpticalSkySimulator(crowding=["sparse", "galaxy"])
    with pytest.raises(ValueError, match="sides >= 16"):
        OpticalSkySimulator(shape=(8, 128))
    with pytest.raises(ValueError, match=r"shape must be \(ny, nx\)"):
        OpticalSkySimulator(shape=(64, 64, 3))


def test_sample_rejects_unknown_crowding_override():
    sim = OpticalSkySimulator(shape=(32, 32), seed=0)
    with pytest.raises(ValueError, match="unknown crowding 'dense'"):
        sim.sample(crowding="dense")


def test_to_hdu_writes_detector_keywords_and_wcs(sparse_field):
    f = sparse_field
    hdu = f.to_hdu(optical_wcs(f.image.shape))
    buf = io.BytesIO()
    hdu.writeto(buf)
    buf.seek(0)
    with fits.open(buf) as hdul:
        hdr = hdul[0].header
        np.testing.assert_array_equal(hdul[0].data, f.image)
    m = f.meta
    assert hdr["GAIN"] == pytest.approx(m["gain"])
    assert hdr["RDNOISE"] == pytest.approx(m["read_noise"])
    assert hdr["SATURATE"] == pytest.approx(m["saturation"] + m["bias"])
    assert hdr["MAGZP"] == pytest.approx(m["zeropoint"])
    assert hdr["SEEING"] == pytest.approx(m["fwhm"])
    w = WCS(hdr)
    assert w.has_celestial and list(w.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    ra, dec = w.pixel_to_world_values(63.5, 63.5)
    assert ra == pytest.approx(150.0) and dec == pytest.approx(2.0)
    # without a WCS: the keywords, no celestial axes
    bare = f.to_hdu()
    assert "GAIN" in bare.header and "CTYPE1" not in bare.header


# -- adapter: background --------------------------------------------------------------------
def test_estimate_background_flat_gaussian():
    rng = np.random.default_rng(0)
    data = 100.0 + rng.normal(0.0, 5.0, (128, 128))
    back, noise = estimate_background(data, box_size=32)
    assert back.shape == noise.shape == (128, 128)
    assert back.dtype == noise.dtype == np.float32
    np.testing.assert_allclose(back, 100.0, atol=0.6)
    np.testing.assert_allclose(noise, 5.0, rtol=0.1)


def test_estimate_background_nan_and_mask():
    rng = np.random.default_rng(1)
    data = 100.0 + rng.normal(0.0, 5.0, (128, 128))
    data[:, :6] = np.nan                                   # NaN border
    data[:4] = np.nan
    back, noise = estimate_background(data)
    assert np.all(np.isfinite(back)) and np.all(noise > 0)
    np.testing.assert_allclose(back[10:, 10:], 100.0, atol=1.0)
    # garbage over 70 % of the columns, masked: the estimate ignores it
    junk = 100.0 + rng.normal(0.0, 5.0, (128, 128))
    junk[:, :90] = 1e4
    mask = np.zeros(junk.shape, bool)
    mask[:, :90] = True
    back, noise = estimate_background(junk, mask=mask)
    np.testing.assert_allclose(back, 100.0, atol=1.5)
    np.testing.assert_allclose(noise, 5.0, rtol=0.15)
    back_unmasked, _ = estimate_background(junk)
    assert np.max(back_unmasked) > 1000.0                  # the mask made the difference


def test_estimate_background_bad_input():
    data = np.full((8, 8), np.nan)
    data.flat[:10] = 1.0
    with pytest.raises(ValueError, match="fewer than 16 valid pixels"):
        estimate_background(data)
    ok = np.ones((8, 8))
    mask = np.ones((8, 8), bool)
    mask.flat[:15] = False
    with pytest.raises(ValueError, match="fewer than 16 valid pixels"):
        estimate_background(ok, mask=mask)
    with pytest.raises(ValueError, match="2-D"):
        estimate_background(np.ones((2, 32, 32)))


# -- adapter: reading ---------------------------------------------------------------------------
def test_read_optical_big_endian_int16():
    arr = (np.arange(20 * 30).reshape(20, 30) - 300).astype(">i2")
    hdul = fits.HDUList([fits.PrimaryHDU(arr)])
    data, header, mask = read_optical(hdul)
    assert data.dtype == np.float32 and data.dtype.isnative
    np.testing.assert_array_equal(data, arr.astype(float))
    assert header["NAXIS1"] == 30 and mask is None
    # a single HDU is accepted too
    data2, _, _ = read_optical(hdul[0])
    np.testing.assert_array_equal(data2, data)


def test_read_optical_uint16_bzero_roundtrip(tmp_path):
    arr = np.array([[0, 1, 32767], [32768, 60000, 65535]], np.uint16)
    path = tmp_path / "u16.fits"
    fits.PrimaryHDU(arr).writeto(path)
    with fits.open(path) as hdul:
        assert hdul[0].header["BZERO"] == 32768
    data, _, _ = read_optical(str(path))
    np.testing.assert_array_equal(data, arr.astype(np.float32))


def test_read_optical_tile_compressed(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.integers(-1000, 30000, (40, 50)).astype(np.int32)
    path = tmp_path / "comp.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(arr, compression_type="RICE_1")]
                 ).writeto(path)
    data, header, mask = read_optical(path)                # a pathlib.Path
    assert data.dtype == np.float32 and data.shape == (40, 50) and mask is None
    np.testing.assert_array_equal(data, arr.astype(np.float32))


@pytest.mark.parametrize("name", ["MASK", "DQ", "BPM"])
def test_read_optical_mask_extension(name):
    sci = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    bad = np.zeros((12, 16), np.int16)
    bad[3, 4] = 1
    bad[7, 9] = 4096
    bad[0, :] = -1
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(bad, name=name),
                         fits.ImageHDU(sci, name="SCI")])
    data, header, mask = read_optical(hdul)
    np.testing.assert_array_equal(data, sci)               # not the mask extension
    assert header["EXTNAME"] == "SCI"
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, bad != 0)


def test_read_optical_mismatching_mask_warns():
    hdul = fits.HDUList([fits.PrimaryHDU(np.ones((10, 10), np.float32)),
                         fits.ImageHDU(np.ones((5, 5), np.uint8), name="MASK")])
    with pytest.warns(ASIDInputWarning, match="'MASK' has shape"):
        data, _, mask = read_optical(hdul)
    assert mask is None and data.shape == (10, 10)


def test_read_optical_masks_outside_the_data_section():
    """A raw frame's TRIMSEC (else DATASEC) keeps its pixel coordinates; the overscan and
    pre-scan around it are masked, together with any bad-pixel extension."""
    sci = np.full((20, 30), 300.0, np.float32)
    hdu = fits.PrimaryHDU(sci)
    hdu.header["DATASEC"] = "[1:30,1:20]"
    hdu.header["TRIMSEC"] = "[ 5: 26,  2: 20]"  # IRAF style, with spaces; wins over DATASEC
    bad = np.zeros((20, 30), np.uint8)
    bad[10, 10] = 1
    data, _, mask = read_optical(fits.HDUList([hdu, fits.ImageHDU(bad, name="BPM")]))
    assert data.shape == (20, 30)
    expected = np.ones((20, 30), bool)
    expected[1:20, 4:26] = False
    expected[10, 10] = True
    np.testing.assert_array_equal(mask, expected)
    # a section covering the whole image masks nothing
    whole = fits.PrimaryHDU(sci)
    whole.header["DATASEC"] = "[1:30,1:20]"
    assert read_optical(whole)[2] is None


@pytest.mark.parametrize("value, match", [("[1:30]", "is not a section"),
                                          ("[0:30,1:20]", "does not fit"),
                                          ("[1:31,1:20]", "does not fit"),
                                          ("[20:10,1:20]", "does not fit")])
def test_read_optical_bad_data_section_warns(value, match):
    hdu = fits.PrimaryHDU(np.ones((20, 30), np.float32))
    hdu.header["TRIMSEC"] = value
    with pytest.warns(ASIDInputWarning, match=match):
        _, _, mask = read_optical(hdu)
    assert mask is None


def test_prepare_optical_masks_the_overscan_of_a_raw_frame():
    """The masked overscan columns do not bias the background nor give detections."""
    rng = np.random.default_rng(4)
    sci = rng.normal(300.0, 5.0, (64, 80)).astype(np.float32)
    sci[:, :8] = rng.normal(220.0, 2.0, (64, 8))  # bias-level overscan strip
    hdu = fits.PrimaryHDU(sci)
    hdu.header["TRIMSEC"] = "[9:80,1:64]"
    sky = prepare_optical(fits.HDUList([hdu]), require_wcs=False)
    assert sky.mask2d[:, :8].all() and not sky.mask2d[:, 8:].any()
    assert abs(float(np.median(sky.background[0][:, 8:])) - 300.0) < 1.0


def test_read_optical_errors(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    with pytest.raises(ValueError, match="no 2-D image HDU"):
        read_optical(fits.HDUList([fits.PrimaryHDU(), table]))
    cube = fits.HDUList([fits.PrimaryHDU(np.zeros((2, 8, 8), np.float32))])
    with pytest.raises(ValueError, match="no 2-D image HDU"):
        read_optical(cube)
    with pytest.raises(ValueError, match="must be 2-D"):
        read_optical(cube, hdu=0)
    with pytest.raises(ValueError, match="must be 2-D"):
        read_optical(cube[0])
    with pytest.raises(ValueError, match="holds no image data"):
        read_optical(fits.PrimaryHDU())
    with pytest.raises(FileNotFoundError, match="no such FITS file"):
        read_optical(str(tmp_path / "missing.fits"))


def test_read_optical_astropy_m13_files():
    plain = os.path.join(M13_DIR, "m13.fits")
    rice = os.path.join(M13_DIR, "m13_rice.fits")
    if not (os.path.exists(plain) and os.path.exists(rice)):
        pytest.skip("astropy's compressed-image test data are not installed")
    with fits.open(rice) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU)
    a, ha, _ = read_optical(plain)
    b, hb, _ = read_optical(rice)
    assert a.shape == b.shape == (300, 300)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.ptp(a) > 0


# -- adapter: prepare ---------------------------------------------------------------------------
def test_header_meta():
    hdr = fits.Header({"EGAIN": 1.7, "GAIN": "oops", "PHOTZP": 27.1, "SATURATE": 60000})
    meta = header_meta(hdr)
    assert meta == {"gain": 1.7, "zeropoint": 27.1, "saturate": 60000.0}


def test_prepare_optical_from_simulated_hdu(sparse_field, prepared_sparse):
    f, sky = sparse_field, prepared_sparse
    assert isinstance(sky, SkyImage)
    assert sky.instrument == "optical" and sky.wcs is not None and sky.wcs.has_celestial
    assert sky.data.shape == (1, 128, 128)
    assert sky.background.shape == sky.noise.shape == (1, 128, 128)
    assert np.all(sky.noise > 0)
    m = f.meta
    assert sky.meta["gain"] == pytest.approx(m["gain"])
    assert sky.meta["saturate"] == pytest.approx(m["saturation"] + m["bias"])
    assert sky.meta["zeropoint"] == pytest.approx(m["zeropoint"])
    assert sky.meta["read_noise"] == pytest.approx(m["read_noise"])
    assert sky.meta["seeing_px"] == pytest.approx(m["fwhm"])
    # the background is bias + sky, the noise the pixel rms
    assert np.median(sky.background) == pytest.approx(m["bias"] + m["sky_adu"],
                                                      abs=3 * m["rms_adu"])
    assert np.median(sky.noise) == pytest.approx(m["rms_adu"], rel=0.2)


def test_prepare_optical_saturation_flags():
    sim = OpticalSkySimulator(shape=(64, 64), crowding="crowded", seed=3)
    f = sim.sample()
    assert f.saturated.any()
    sky = prepare_optical(f.to_hdu(optical_wcs(f.image.shape)))
    np.testing.assert_array_equal(sky.meta["saturated"], f.saturated)
    # a header SATURATE on a plain array path is not available: no flags
    plain = prepare_optical(f.image, wcs=optical_wcs(f.image.shape))
    assert "saturated" not in plain.meta and plain.instrument == "optical"


def test_prepare_optical_saturate_keyword_threshold():
    data = np.full((32, 32), 100.0, np.float32) + np.random.default_rng(3).normal(0, 2, (32, 32))
    data = data.astype(np.float32)
    data[5, 5] = 1000.0
    data[6, 6] = 999.0
    data[7, 7] = 1500.0
    hdr = optical_wcs((32, 32)).to_header()
    hdr["SATURATE"] = 1000.0
    sky = prepare_optical(fits.PrimaryHDU(data, header=hdr))
    sat = sky.meta["saturated"]
    assert sat.dtype == bool and sat.shape == (32, 32)
    assert sorted(zip(*np.nonzero(sat))) == [(5, 5), (7, 7)]


def test_prepare_optical_nan_border_and_masks():
    rng = np.random.default_rng(4)
    data = (50.0 + rng.normal(0, 3, (64, 64))).astype(np.float32)
    data[:3] = np.nan
    data[:, -2:] = np.nan
    bad = np.zeros((64, 64), np.uint8)
    bad[30, 30] = 1
    user = np.zeros((64, 64), bool)
    user[40, 41] = True
    hdul = fits.HDUList([fits.PrimaryHDU(data, header=optical_wcs((64, 64)).to_header()),
                         fits.ImageHDU(bad, name="DQ")])
    sky = prepare_optical(hdul, mask=user)
    m = sky.mask2d
    assert m[:3].all() and m[:, -2:].all()
    assert m[30, 30] and m[40, 41]
    assert m.sum() == 3 * 64 + 2 * 61 + 2
    assert np.all(np.isfinite(sky.background)) and np.all(sky.noise > 0)
    assert np.median(sky.background[0][~m]) == pytest.approx(50.0, abs=0.5)
    snr = snr_image(sky)
    assert np.all(snr[m] == 0.0)


def test_prepare_optical_wcs_requirements():
    rng = np.random.default_rng(5)
    data = (10.0 + rng.normal(0, 1, (48, 48))).astype(np.float32)
    sky = prepare_optical(data, require_wcs=False)
    assert sky.wcs is None and sky.instrument == "optical"
    assert sky.background.shape == (1, 48, 48)
    with pytest.raises(ValueError, match="no celestial WCS"):
        prepare_optical(data)
    # an HDU without WCS keywords, pixel-only
    sky2 = prepare_optical(fits.PrimaryHDU(data), require_wcs=False)
    assert sky2.wcs is None
    np.testing.assert_array_equal(sky2.data[0], data)
    with pytest.raises(ValueError, match="no celestial WCS"):
        prepare_optical(fits.PrimaryHDU(data))


def test_prepare_optical_rejects_multiband():
    cube = np.ones((3, 32, 32), np.float32)
    with pytest.raises(ValueError, match="3 bands"):
        prepare_optical(cube, require_wcs=False)


def test_prepare_optical_keeps_given_background():
    rng = np.random.default_rng(6)
    data = (10.0 + rng.normal(0, 1, (32, 32))).astype(np.float32)
    sky = as_sky_image(data, require_wcs=False)
    back = np.full((1, 32, 32), 7.0, np.float32)
    noise = np.full((1, 32, 32), 2.0, np.float32)
    out = prepare_optical(sky.copy(background=back, noise=noise))
    assert out.background is back and out.noise is noise
    np.testing.assert_allclose(snr_image(out), (data - 7.0) / 2.0, rtol=1e-5)


def test_prepare_optical_applies_mask_to_a_sky_image():
    rng = np.random.default_rng(7)
    data = (10.0 + rng.normal(0, 1, (32, 32))).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[5, 5] = True
    out = prepare_optical(as_sky_image(data, require_wcs=False), mask=mask)
    assert out.mask2d[5, 5] and np.isnan(out.data[0, 5, 5])
    assert out.mask2d.sum() == 1


# -- adapter: S/N -------------------------------------------------------------------------------
def test_snr_image_on_simulated_field(sparse_field, prepared_sparse):
    f, sky = sparse_field, prepared_sparse
    snr, noise = snr_image(sky, return_noise=True)
    assert snr.shape == noise.shape == (128, 128) and snr.dtype == np.float32
    t = f.truth
    inside = t["is_star"] & (t["x"] > 1) & (t["x"] < 126) & (t["y"] > 1) & (t["y"] < 126)
    i = np.flatnonzero(inside)[np.argmax(t["flux"][inside])]
    assert snr[int(np.rint(t["y"][i])), int(np.rint(t["x"][i]))] > 20
    assert np.median(np.abs(snr)) < 1.5
    # without stored background/noise the maps are estimated: similar result
    bare = sky.copy(background=None, noise=None)
    snr2 = snr_image(bare, box_size=32)
    assert np.median(np.abs(snr2 - snr)) < 0.2
    # masked pixels are 0
    masked = sky.copy(mask=sky.mask.copy())
    masked.mask[0, 10:20, 10:20] = True
    snr3 = snr_image(masked)
    assert np.all(snr3[10:20, 10:20] == 0.0) and np.any(snr3 != 0)


# -- the asid-optical detector -------------------------------------------------------------

def _detection_field(seed=3, shape=(192, 192)):
    sim = OpticalSkySimulator(shape=shape, crowding="sparse", seed=seed,
                              cosmic_ray_density=(1e-9, 2e-9), trail_probability=0.0)
    return sim.sample()


def test_asid_optical_is_registered_and_default_for_optical():
    from astro_asid import list_detectors
    from astro_asid.find import default_detector_name

    assert "asid-optical" in list(list_detectors()["name"])
    assert default_detector_name("optical") == "asid-optical"


def test_find_sources_optical_recovers_bright_stars():
    from astro_asid import find_sources

    f = _detection_field()
    wcs = optical_wcs(f.image.shape)
    cat = find_sources(f.to_hdu(wcs), instrument="optical", characterize=False, min_score=0.5)
    assert cat.meta["detector"] == "asid-optical"
    bright = f.truth["snr"] > 30
    assert bright.sum() >= 3
    d = np.hypot(np.asarray(cat["x_centroid"])[:, None] - f.truth["x"][bright],
                 np.asarray(cat["y_centroid"])[:, None] - f.truth["y"][bright])
    # every bright source found within a pixel
    assert np.all(d.min(axis=0) < 1.0)
    # and most detections are real sources of any brightness
    dall = np.hypot(np.asarray(cat["x_centroid"])[:, None] - f.truth["x"],
                    np.asarray(cat["y_centroid"])[:, None] - f.truth["y"])
    assert np.mean(dall.min(axis=1) < 1.5) > 0.8


def test_asid_optical_tiling_matches_single_pass():
    from astro_asid.detection.optical import ASIDOpticalDetector
    from astro_asid.instruments.optical import snr_image

    f = _detection_field(seed=4, shape=(160, 160))
    sky = prepare_optical(f.image, require_wcs=False)
    snr = snr_image(sky)
    one = ASIDOpticalDetector(min_score=0.3).detect_snr(snr)
    tiled = ASIDOpticalDetector(min_score=0.3, tile_size=96, overlap=32).detect_snr(snr)
    # the same bright sources, at the same places (tile edges change faint ones only)
    a = one[one["score"] > 0.8]
    d = np.hypot(np.asarray(tiled["x_centroid"])[:, None] - np.asarray(a["x_centroid"]),
                 np.asarray(tiled["y_centroid"])[:, None] - np.asarray(a["y_centroid"]))
    assert len(a) >= 3
    assert np.all(d.min(axis=0) < 0.5)
    # no duplicates from overlapping tiles
    dd = np.hypot(np.subtract.outer(np.asarray(tiled["x_centroid"]),
                                    np.asarray(tiled["x_centroid"])),
                  np.subtract.outer(np.asarray(tiled["y_centroid"]),
                                    np.asarray(tiled["y_centroid"])))
    np.fill_diagonal(dd, np.inf)
    assert dd.min() > 0.5


def test_asid_optical_blocks_cover_every_tile_once():
    from astro_asid.detection.optical import ASIDOpticalDetector

    det = ASIDOpticalDetector(tile_size=64, overlap=16, block_tiles=3)
    (ys, _, xs, _), blocks = det.blocks((300, 250))
    jobs = [j for b, _ in blocks for j in b]
    assert sorted(jobs) == [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    for b, (y0, y1, x0, x1) in blocks:
        assert all(y0 <= ys[iy] and ys[iy] + 64 <= y1 and x0 <= xs[ix] and xs[ix] + 64 <= x1
                   for iy, ix in b)
    with pytest.raises(ValueError, match="block_tiles"):
        ASIDOpticalDetector(block_tiles=0)


def test_asid_optical_blockwise_background_matches_one_block():
    """Blocks with their own background find the same sources as one pass over the image."""
    from astro_asid.detection.optical import ASIDOpticalDetector

    f = _detection_field(seed=6, shape=(320, 320))
    img = SkyImage(f.image[np.newaxis])
    one = ASIDOpticalDetector(min_score=0.3, tile_size=96, overlap=32).detect(img)
    blocked = ASIDOpticalDetector(min_score=0.3, tile_size=96, overlap=32,
                                  block_tiles=2).detect(img)
    a = one[one["score"] > 0.8]
    assert len(a) >= 5
    d = np.hypot(np.asarray(blocked["x_centroid"])[:, None] - np.asarray(a["x_centroid"]),
                 np.asarray(blocked["y_centroid"])[:, None] - np.asarray(a["y_centroid"]))
    assert np.all(d.min(axis=0) < 0.5)
    assert abs(len(blocked) - len(one)) <= max(2, 0.05 * len(one))
    # given background/noise maps are used as they are, block by block
    sky = prepare_optical(f.image, require_wcs=False)
    given = ASIDOpticalDetector(min_score=0.3, tile_size=96, overlap=32, block_tiles=2).detect(sky)
    whole = ASIDOpticalDetector(min_score=0.3, tile_size=96, overlap=32).detect(sky)
    np.testing.assert_allclose(np.sort(np.asarray(given["x_centroid"])),
                               np.sort(np.asarray(whole["x_centroid"])), atol=1e-6)


def test_asid_optical_fully_masked_block_is_skipped():
    from astro_asid.detection.optical import ASIDOpticalDetector

    f = _detection_field(seed=7, shape=(256, 256))
    mask = np.zeros(f.image.shape, bool)
    mask[:, :128] = True
    img = SkyImage(f.image[np.newaxis], mask=mask[np.newaxis])
    tab = ASIDOpticalDetector(min_score=0.3, tile_size=64, overlap=16, block_tiles=1).detect(img)
    assert len(tab) > 0
    assert np.all(np.asarray(tab["x_centroid"]) >= 127.5)


def test_asid_star_finder_on_optical_image():
    from astro_asid import ASIDStarFinder

    f = _detection_field(seed=5, shape=(128, 128))
    stars = ASIDStarFinder("asid-optical", min_score=0.5)(f.image)
    assert stars is not None and len(stars) >= 3
    assert {"x_centroid", "y_centroid", "score"} <= set(stars.colnames)


def test_asid_optical_rejects_cubes():
    from astro_asid.core import SkyImage
    from astro_asid.detection.optical import ASIDOpticalDetector

    with pytest.raises(ValueError, match="bands"):
        ASIDOpticalDetector().detect(SkyImage(np.zeros((3, 32, 32), np.float32)))


def test_find_sources_optical_characterised():
    from astro_asid import find_sources

    f = _detection_field(seed=6, shape=(128, 128))
    cat = find_sources(f.to_hdu(optical_wcs(f.image.shape)), instrument="optical",
                       min_score=0.5)
    assert cat.meta["characterizer"]["name"] == "characterize-optical"
    assert cat.meta["class_names"] == ["star", "galaxy", "FAKE"]
    assert np.all(np.isfinite(np.asarray(cat["flux"].value)))
    assert np.all(np.asarray(cat["flux_err"].value) > 0)
    # bright isolated sources: the flux within 0.15 dex of the truth and mag from MAGZP
    d = np.hypot(np.asarray(cat["x_centroid"])[:, None] - f.truth["x"],
                 np.asarray(cat["y_centroid"])[:, None] - f.truth["y"])
    j = d.argmin(axis=1)
    ok = (d.min(axis=1) < 1.0) & (f.truth["snr"][j] > 30) & ~f.truth["saturated"][j]
    assert ok.sum() >= 3
    dlog = np.log10(np.asarray(cat["flux"].value)[ok] / f.truth["flux"][j[ok]])
    assert np.median(np.abs(dlog)) < 0.15
    np.testing.assert_allclose(np.asarray(cat["mag"])[ok],
                               f.meta["zeropoint"] - 2.5 * np.log10(
                                   np.asarray(cat["flux"].value)[ok]), atol=1e-3)


def test_find_sources_optical_in_blocks_matches_one_block():
    """find_sources runs detection and characterisation block by block; the catalog
    is in image coordinates, sky positions follow the WCS, no source is lost or doubled."""
    from astro_asid import find_sources

    f = _detection_field(seed=8, shape=(300, 300))
    hdu = f.to_hdu(optical_wcs(f.image.shape))
    opts = dict(instrument="optical", min_score=0.5, tile_size=96, overlap=32)
    one = find_sources(hdu, block_tiles=50, **opts)
    blocks = find_sources(hdu, block_tiles=1, **opts)
    assert one.meta["n_blocks"] == 1 and blocks.meta["n_blocks"] == 25  # 5 x 5 tiles
    assert abs(len(blocks) - len(one)) <= max(2, 0.05 * len(one))
    a = one[one["score"] > 0.8]
    d = np.hypot(np.asarray(blocks["x_centroid"])[:, None] - np.asarray(a["x_centroid"]),
                 np.asarray(blocks["y_centroid"])[:, None] - np.asarray(a["y_centroid"]))
    j = d.argmin(axis=0)
    # same sources; the characteriser's refined positions move a little with the
    # blocks' own (here 224 px) background estimates
    assert len(a) >= 5 and np.all(d.min(axis=0) < 0.5) and np.median(d.min(axis=0)) < 0.05
    # the blocks' own background/noise maps (224 px regions here) move fluxes a little
    dlog = np.abs(np.log10(np.asarray(blocks["flux"].value)[j] / np.asarray(a["flux"].value)))
    assert np.median(dlog) < 0.02 and np.percentile(dlog, 90) < 0.1
    sky = blocks["sky_centroid"][j]
    ref = optical_wcs(f.image.shape).pixel_to_world(np.asarray(blocks["x_centroid"])[j],
                                                    np.asarray(blocks["y_centroid"])[j])
    assert np.all(sky.separation(ref).arcsec < 1e-6)
    dd = np.hypot(np.subtract.outer(*[np.asarray(blocks["x_centroid"])] * 2),
                  np.subtract.outer(*[np.asarray(blocks["y_centroid"])] * 2))
    np.fill_diagonal(dd, np.inf)
    assert dd.min() > 0.5


def test_optical_training_batches_weight_artefact_pixels():
    from astro_asid.training.optical import make_batch_fn, simulate_optical_pool

    pool = simulate_optical_pool(3, shape=(64, 64), seed=2, trail_probability=1.0,
                                 cosmic_ray_density=(2e-3, 3e-3))
    assert pool["artefact"].shape == (3, 64, 64) and (pool["artefact"] == 2).any()
    x, t = make_batch_fn(pool, artefact_weight=4.0)(np.random.default_rng(0), 4)
    assert x.shape == (4, 2, 64, 64)
    w = t["seg_w"].numpy()
    assert w.shape == (4, 1, 64, 64) and set(np.unique(w)) <= {1.0, 5.0} and (w == 5).any()
    # an artefact pixel is never a source-disk pixel it would be up-weighted against
    assert (t["seg"].numpy()[w == 5] == 1).mean() < 0.2
    _, t0 = make_batch_fn(pool)(np.random.default_rng(0), 2)
    assert "seg_w" not in t0

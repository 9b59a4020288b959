"""Tests of the CTAO Galactic-plane-survey patch simulator."""

import numpy as np
import pytest
from astropy import units as u
from scipy.integrate import quad
from scipy.special import ndtr

from astro_asid.simulate import CTAOSkySimulator
from astro_asid.simulate.ctao import (
    CTAO_ENERGY_EDGES_TEV, CTAO_PIXEL_DEG, CTAOResponse, aeff_gammapy_ctao, aeff_prod3b,
    extension_class, render_gaussian_sources, to_gammapy_dataset,
)


@pytest.fixture(scope="module")
def small_batch():
    sim = CTAOSkySimulator(seed=7, npix=128, lon=350.3, lat=0.6)
    return sim.sample_patches(2)


def test_geometry_and_wcs(small_batch):
    b = small_batch
    assert b.counts.shape == b.expected.shape == b.background.shape == (2, 3, 128, 128)
    assert b.counts.dtype == b.expected.dtype == np.float32
    np.testing.assert_allclose(b.energy_edges.to_value(u.TeV), [0.07, 0.788, 8.88, 100])
    np.testing.assert_allclose(CTAO_ENERGY_EDGES_TEV, [0.07, 0.788, 8.88, 100])
    assert np.all(b.livetime == 20 * u.h)
    w = b.wcs(0)
    assert list(w.wcs.ctype) == ["GLON-CAR", "GLAT-CAR"]
    np.testing.assert_allclose(np.abs(w.wcs.cdelt), CTAO_PIXEL_DEG)
    lon, lat = w.wcs_pix2world([63.5, -0.5, 127.5], [63.5, -0.5, 127.5], 0)
    np.testing.assert_allclose([lon[0], lat[0]], [350.3, 0.6], atol=1e-9)
    np.testing.assert_allclose(lat[2] - lat[1], 128 * CTAO_PIXEL_DEG, atol=1e-9)
    assert lon[1] > lon[2]                      # longitude grows to the left
    for t in b.sources:
        assert set(t.colnames) >= {"x", "y", "lon", "lat", "flux_1tev", "index", "sigma_deg",
                                   "ext_class", "counts_band"}
        assert t["flux_1tev"].unit == u.Unit("cm-2 s-1") and t["counts_band"].shape[1:] == (3,)
        assert np.all((t["x"] >= -0.5) & (t["x"] < 127.5) & (t["y"] >= -0.5) & (t["y"] < 127.5))
        lo, la = w.wcs_pix2world(t["x"], t["y"], 0)
        np.testing.assert_allclose((lo - t["lon"] + 180) % 360 - 180, 0, atol=1e-8)
        np.testing.assert_allclose(la, t["lat"], atol=1e-8)
    for t in b.outside_sources:
        x, y = t["x"], t["y"]
        assert np.all((x < -0.5) | (x >= 127.5) | (y < -0.5) | (y >= 127.5))


def test_random_centres_and_livetime_per_patch():
    sim = CTAOSkySimulator(seed=1, npix=32, random_centres=True, lat_max=0.5)
    b = sim.sample_patches(20, livetime_h=np.linspace(5, 50, 20))
    assert np.all(np.abs(b.lat) <= 0.5)
    dl = (b.lon + 180) % 360 - 180
    assert np.all((dl >= -30) & (dl <= 30))
    np.testing.assert_allclose(b.livetime.to_value(u.h), np.linspace(5, 50, 20))
    # Background counts scale with the livetime.
    ratio = b.background[:, 0].mean(axis=(1, 2)) / b.livetime.to_value(u.h)
    assert np.ptp(ratio) / ratio.mean() < 0.5           # diffuse varies, hadronic dominates


def test_number_of_sources_scales_with_area():
    def mean_inside(sim, n):
        return np.mean([sim.sample_sources(15.12, 0.0, 3600.0)["inside"].sum()
                        for _ in range(n)])
    big = CTAOSkySimulator(seed=2, npix=512)
    counts = [big.sample_sources(15.12, 0.0, 3600.0)["inside"].sum() for _ in range(300)]
    assert 20 <= min(counts) and max(counts) <= 40
    assert abs(np.mean(counts) - 30) < 1.5
    assert abs(mean_inside(CTAOSkySimulator(seed=3, npix=128), 1500) - 30 / 16) < 0.15
    assert abs(mean_inside(CTAOSkySimulator(seed=4, npix=128, density=4), 600) - 7.5) < 0.5
    dens = CTAOSkySimulator(seed=5, npix=64, sources_per_deg2=5.0)
    assert abs(mean_inside(dens, 800) - 5.0 * 1.28 ** 2) < 0.4


def test_population_distributions():
    sim = CTAOSkySimulator(seed=6, npix=512)
    cats = [sim.sample_sources(15.12, 0.0, 3600.0) for _ in range(60)]
    idx = np.concatenate([c["index"] for c in cats])
    flux = np.concatenate([c["flux_1tev"] for c in cats])
    sig = np.concatenate([c["sigma_deg"] for c in cats])
    lat = np.concatenate([c["lat"][c["inside"]] for c in cats])
    assert abs(idx.mean() - 2.2) < 0.03 and abs(idx.std() - np.sqrt(0.05)) < 0.03
    assert flux.min() >= 1.5e-14 and flux.max() <= 2e-11
    assert abs(np.mean(flux < 4.5e-14) - 0.667) < 0.05     # dN/dS ~ S^-2
    assert abs(np.mean(sig == 0) - 0.4) < 0.05
    assert sig[sig > 0].min() >= 0.03 and sig.max() <= 0.5
    assert abs(np.mean(np.abs(lat) < 1) - 0.68) < 0.05
    assert np.all(np.abs(lat) <= 5.12)


def test_extension_class_boundaries(small_batch):
    got = extension_class([0.0, 0.0999, 0.1, 0.2, 0.3, 0.3001, 0.5])
    assert list(got) == ["C0", "C0", "C1", "C1", "C1", "C2", "C2"]
    for t in small_batch.sources:
        assert list(t["ext_class"]) == list(extension_class(t["sigma_deg"].value))


@pytest.mark.parametrize("irf", ["prod3b-south", "gammapy-ctao"])
def test_band_counts_match_integral(irf):
    resp = CTAOResponse(irf)
    flux, index, live = 3e-12, 2.4, 20 * 3600.0
    k0 = flux * (index - 1)
    got = resp.band_counts(flux, index, live)[0]
    for b, (lo, hi) in enumerate(zip(CTAO_ENERGY_EDGES_TEV[:-1], CTAO_ENERGY_EDGES_TEV[1:])):
        # In ln E, between the nodes of the tabulated effective area (its kinks).
        nodes = np.log(np.r_[lo, 10 ** np.arange(-1.8, 2.2, 0.05), hi])
        nodes = np.unique(np.clip(nodes, np.log(lo), np.log(hi)))
        val = sum(quad(lambda le: k0 * np.exp(le * (1 - index)) * resp.aeff(np.exp(le)) * live,
                       a, c, epsrel=1e-10)[0] for a, c in zip(nodes[:-1], nodes[1:]))
        assert got[b] == pytest.approx(val, rel=2e-4)
    # A flat effective area gives the closed form of the power law.
    edges = CTAO_ENERGY_EDGES_TEV
    closed = k0 / (index - 1) * (edges[:-1] ** (1 - index) - edges[1:] ** (1 - index))
    resp_flat = CTAOResponse(irf)
    resp_flat._aeff_grid = np.ones_like(resp_flat._aeff_grid)
    np.testing.assert_allclose(resp_flat.band_counts(flux, index, 1.0)[0], closed, rtol=1e-4)


def test_stamp_sum_and_centroid():
    counts = np.array([[5000.0, 2000.0, 300.0]])
    sig = np.array([[3.1, 1.5, 0.5]])                   # 0.5 px: the pixel integral matters
    img = render_gaussian_sources(96, np.array([40.3]), np.array([57.71]), counts, sig)
    np.testing.assert_allclose(img.sum(axis=(1, 2)), counts[0], rtol=1e-5)
    yy, xx = np.mgrid[:96, :96]
    for b in range(3):
        assert (img[b] * xx).sum() / img[b].sum() == pytest.approx(40.3, abs=0.01)
        assert (img[b] * yy).sum() / img[b].sum() == pytest.approx(57.71, abs=0.01)


def _all_sources(batch, i):
    tabs = [t for t in (batch.sources[i], batch.outside_sources[i]) if len(t)]
    cols = ("x", "y", "counts_band", "sigma_deg")
    if not tabs:
        return dict(x=np.zeros(0), y=np.zeros(0), counts_band=np.zeros((0, 3)),
                    sigma_deg=np.zeros(0))
    return {k: np.concatenate([np.asarray(getattr(t[k], "value", t[k])) for t in tabs])
            for k in cols}


def test_simulated_sources_counts_and_centroids():
    sim = CTAOSkySimulator(seed=11, npix=128, sources_per_deg2=1.0, diffuse_fraction=0.0)
    b = sim.sample_patches(4)
    sigma_psf = b.psf_sigma_deg.to_value(u.deg)
    yy, xx = np.mgrid[:128, :128]
    checked = 0
    for i in range(len(b)):
        src = b.expected[i] - b.background[i]
        a = _all_sources(b, i)
        s = np.hypot(a["sigma_deg"][:, None], sigma_psf[None]) / CTAO_PIXEL_DEG
        # The noise-free source light is each source's counts times its containment in the patch.
        frac = ((ndtr((127.5 - a["x"][:, None]) / s) - ndtr((-0.5 - a["x"][:, None]) / s))
                * (ndtr((127.5 - a["y"][:, None]) / s) - ndtr((-0.5 - a["y"][:, None]) / s)))
        np.testing.assert_allclose(src.sum(axis=(1, 2)), (a["counts_band"] * frac).sum(axis=0),
                                   rtol=1e-4)
        for k, row in enumerate(b.sources[i]):
            x, y = row["x"], row["y"]
            if row["sigma_deg"] > 0 or min(x, y, 127 - x, 127 - y) < 20:
                continue
            others = np.arange(len(a["x"])) != k          # inside sources come first
            alone = src - render_gaussian_sources(128, a["x"][others], a["y"][others],
                                                  a["counts_band"][others], s[others])
            ix, iy = int(round(x)), int(round(y))
            win = (slice(iy - 18, iy + 19), slice(ix - 18, ix + 19))
            for band in range(3):
                w = alone[band][win]
                assert (w * xx[win]).sum() / w.sum() == pytest.approx(x, abs=0.05)
                assert (w * yy[win]).sum() / w.sum() == pytest.approx(y, abs=0.05)
            # The point source's stamp holds its counts.
            np.testing.assert_allclose(alone[:, win[0], win[1]].sum(axis=(1, 2)),
                                       row["counts_band"], rtol=2e-3)
            checked += 1
    assert checked >= 3


def test_poisson_counts_have_the_right_mean():
    b = CTAOSkySimulator(seed=12, npix=128).sample_patches(1)
    assert np.all(b.counts == np.round(b.counts)) and b.counts.min() >= 0
    tot_c, tot_e = b.counts[0].sum(axis=(1, 2)), b.expected[0].sum(axis=(1, 2))
    assert np.all(np.abs(tot_c - tot_e) < 5 * np.sqrt(tot_e))
    # Pixel variance of the flat band-0 background equals its mean.
    resid = (b.counts[0, 0] - b.expected[0, 0]) / np.sqrt(b.expected[0, 0])
    assert abs(resid.std() - 1) < 0.03


def test_reproducible_with_seed():
    a = CTAOSkySimulator(seed=3, npix=64).sample_patches(2)
    b = CTAOSkySimulator(seed=3, npix=64).sample_patches(2)
    c = CTAOSkySimulator(seed=4, npix=64).sample_patches(2)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.expected, b.expected)
    for ta, tb in zip(a.sources, b.sources):
        np.testing.assert_array_equal(ta["flux_1tev"], tb["flux_1tev"])
    assert not np.array_equal(a.counts, c.counts)


def test_tabulated_irf_matches_gammapy():
    pytest.importorskip("gammapy")
    from gammapy.irf import EffectiveAreaTable2D, PSFMap
    from gammapy.maps import MapAxis

    axis = MapAxis.from_energy_bounds(0.05, 120, 40, unit="TeV", name="energy_true")
    aeff = EffectiveAreaTable2D.from_parametrization(axis, instrument="CTAO")
    e = axis.center
    ref = aeff.evaluate(energy_true=e, offset=0.5 * u.deg).to_value(u.cm ** 2)
    np.testing.assert_allclose(aeff_gammapy_ctao(e.to_value(u.TeV)), ref, rtol=1e-6)
    # The prod3b grid reproduces the file's rounded energies and values.
    np.testing.assert_allclose(aeff_prod3b([0.0158489, 1.0, 100.0]), [775e4, 6.28e9, 4.2e10],
                               rtol=1e-4)
    # Our Gaussian PSF, as a gammapy PSFMap, has the band's 68 % containment radius.
    resp = CTAOResponse()
    band_axis = MapAxis.from_energy_edges(CTAO_ENERGY_EDGES_TEV * u.TeV, name="energy_true")
    rad = MapAxis.from_edges(np.linspace(0, 0.4, 801) * u.deg, name="rad")
    psf = PSFMap.from_gauss(band_axis, rad_axis=rad, sigma=resp.psf_sigma_deg * u.deg)
    r68 = psf.containment_radius(0.68, energy_true=band_axis.center).to_value(u.deg)
    np.testing.assert_allclose(np.ravel(r68), resp.psf_r68_deg, rtol=0.02)


def test_to_gammapy_dataset_npred():
    pytest.importorskip("gammapy")
    sim = CTAOSkySimulator(seed=21, npix=64, sources_per_deg2=3.0, margin_deg=0.0,
                           sigma_range_deg=(0.03, 0.1))
    b = sim.sample_patches(1)
    ds0 = to_gammapy_dataset(b, 0)
    np.testing.assert_allclose(ds0.npred().data, b.background[0], rtol=1e-6)
    np.testing.assert_array_equal(ds0.counts.data, b.counts[0])
    pix = np.array([[0.0, 63.0, 13.5], [0.0, 63.0, 30.25]])
    np.testing.assert_allclose(ds0.counts.geom.wcs.wcs_pix2world(*pix, 0),
                               b.wcs(0).wcs_pix2world(*pix, 0), atol=1e-10)
    # gammapy loses light of sources near the edges: keep the central ones.
    t = b.sources[0]
    b.sources[0] = t = t[(t["x"] > 14) & (t["x"] < 49) & (t["y"] > 14) & (t["y"] < 49)]
    assert len(t) >= 2
    sig = np.hypot(t["sigma_deg"].value[:, None], b.psf_sigma_deg.value[None]) / CTAO_PIXEL_DEG
    expected = b.background[0] + render_gaussian_sources(64, t["x"], t["y"], t["counts_band"],
                                                         sig)
    ds = to_gammapy_dataset(b, 0, models=True, n_true_per_band=16)
    assert len(ds.models) == len(t) + 1
    npred = ds.npred().data
    np.testing.assert_allclose(npred.sum(axis=(1, 2)), expected.sum(axis=(1, 2)), rtol=2e-3)
    # gammapy samples pixel centres, we integrate over pixels: close where the PSF is wide.
    peak = (expected - b.background[0]).max(axis=(1, 2))
    diff = np.abs(npred - expected).max(axis=(1, 2))
    assert diff[0] < 0.03 * peak[0] and np.all(diff < 0.2 * peak)


@pytest.mark.parametrize("kwargs, match", [
    (dict(npix=8), "npix must be >= 16"),
    (dict(livetime_h=-1), "livetime_h must be finite and > 0"),
    (dict(livetime_h=[1, 2]), "must be a number"),
    (dict(irf="prod5"), "unknown irf 'prod5'"),
    (dict(density=-1), "density must be >= 0"),
    (dict(point_fraction=1.5), r"point_fraction must be in \[0, 1\]"),
    (dict(flux_range=(1e-12, 1e-13)), "flux_range must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTAOSkySimulator(**kwargs)


def test_bad_sample_arguments():
    sim = CTAOSkySimulator(npix=16)
    with pytest.raises(ValueError, match="livetime_h must be finite and > 0"):
        sim.sample_patches(1, livetime_h=0)
    with pytest.raises(ValueError, match="one per patch"):
        sim.sample_patches(3, livetime_h=[1, 2])
    with pytest.raises(ValueError, match="give both lon and lat"):
        sim.sample_patches(1, lon=10)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sim.sample_patches(-1)
    with pytest.raises(TypeError):
        CTAOSkySimulator(nonsense=1)

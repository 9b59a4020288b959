"""Tests of the Fermi-LAT sky simulator."""

import numpy as np
import pytest
from astropy import units as u

from astro_asid.evaluate.challenge import challenge_wcs
from astro_asid.simulate import (
    FermiLATResponse, FermiSkySimulator, SourcePopulation, get_background, read_dataset,
    write_dataset,
)
from astro_asid.simulate.fermi import render_point_sources
from astro_asid.simulate.healpix import patch_pixel_to_sky, patch_sky_to_pixel
from astro_asid.simulate.instrument import king_containment_radius, king_profile
from astro_asid.simulate.population import (
    band_photon_fluxes, logparabola, plsuperexpcutoff2, _E,
)


@pytest.fixture(scope="module")
def sim():
    return FermiSkySimulator(seed=3)


@pytest.mark.parametrize("lat0", [84.15, 30.0, 0.0, -0.3, -60.0, -89.5])
def test_patch_projection_matches_astropy(lat0):
    rng = np.random.default_rng(0)
    lon0 = rng.uniform(0, 360)
    w = challenge_wcs(lon0, lat0)
    x, y = rng.uniform(-10, 74, (2, 100))
    lon, lat = w.wcs_pix2world(x, y, 0)
    lon2, lat2 = patch_pixel_to_sky(lon0, lat0, x, y)
    dlon = ((lon - lon2 + 180) % 360 - 180) * np.cos(np.deg2rad(lat))
    assert np.abs(dlon).max() < 1e-8 and np.abs(lat - lat2).max() < 1e-8
    xb, yb = patch_sky_to_pixel(lon0, lat0, lon2, lat2)
    np.testing.assert_allclose([xb, yb], [x, y], atol=1e-7)


def test_spectral_integrals_against_closed_form():
    # A pure power law (beta = 0) has closed-form band fluxes.
    e0, gamma = 1000.0, 2.3
    dnde = logparabola(_E[None], 1e-12, e0, gamma, 0.0)
    res = band_photon_fluxes(dnde)

    def pl_int(lo, hi):
        return 1e-12 * e0 / (1 - gamma) * ((hi / e0) ** (1 - gamma) - (lo / e0) ** (1 - gamma))
    edges = np.array([0.5, 1, 2, 7, 20, 200]) * 1e3
    expect = [pl_int(a, b) for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(res["flux_band"][0], expect, rtol=2e-3)
    np.testing.assert_allclose(res["flux_1000"][0], pl_int(1e3, 1e5), rtol=2e-3)
    eflux = 1e-12 * e0 ** 2 / (2 - gamma) * ((1e5 / e0) ** (2 - gamma) - (100 / e0) ** (2 - gamma))
    np.testing.assert_allclose(res["eflux100"][0], eflux * 1.602176634e-6, rtol=3e-3)
    # The cut-off spectrum reduces to a power law when a = 0.
    np.testing.assert_allclose(plsuperexpcutoff2(_E, 1e-12, e0, gamma, 0.0, 2 / 3),
                               logparabola(_E, 1e-12, e0, gamma, 0.0))


def test_population_follows_4fgl():
    pop = SourcePopulation("flat", seed=1)
    m = pop.models["agn"]
    # 4FGL DR1 has 3202 AGN-class sources; the flat extension adds sources below the peak.
    assert m.n4fgl.sum() == 3202
    assert pop.expected_number("agn") > 3202
    rng = np.random.default_rng(0)
    sky = pop.sample_allsky(rng)
    agn = sky["cls"] == 0
    # Isotropic AGN: the mean of sin(b) is 0 and |sin b| is uniform (mean 1/2).
    sinb = np.sin(np.deg2rad(sky["lat"][agn]))
    assert abs(sinb.mean()) < 0.05 and abs(np.abs(sinb).mean() - 0.5) < 0.03
    # Pulsars concentrate in the plane (double Gaussian, 40 % in the 1.39 deg component).
    psr = ~agn
    assert np.mean(np.abs(sky["lat"][psr]) < 5) > 0.35
    # Energy fluxes stay above the flat threshold and reach the 4FGL range.
    e100 = sky["eflux100"]
    assert e100.min() >= 3.4e-13 * 10 ** -0.1
    assert np.percentile(e100[agn], 99) > 2e-11
    # The power-law extension has many more faint sources.
    pl = SourcePopulation("powerlaw", seed=1)
    assert pl.expected_number("agn") > 20 * pop.expected_number("agn")


def test_population_bad_input():
    with pytest.raises(ValueError, match="luminosity"):
        SourcePopulation("steep")
    with pytest.raises(ValueError, match="classes"):
        SourcePopulation("flat", classes=("snr",))


def test_cap_sampling_density():
    # Sources in caps follow the sky density: pulsars far more numerous in the plane.
    pop = SourcePopulation("flat", classes=("psr",), seed=2)
    rng = np.random.default_rng(3)
    n = 400
    plane = pop.sample_cap(np.zeros(n), np.zeros(n), 5.0, rng)
    high = pop.sample_cap(np.zeros(n), np.full(n, 60.0), 5.0, rng)
    assert len(plane["lon"]) > 10 * max(len(high["lon"]), 1)
    # Expected number in the plane cap vs the analytic sky fraction.
    from astro_asid.simulate.population import _psr_density, _psr_norm
    b = np.linspace(-5, 5, 2001)
    # Cap of radius 5 deg at the origin, integrated over latitude slices.
    half_width = np.sqrt(np.clip(25 - b ** 2, 0, None))
    area = np.trapezoid(_psr_density(b) * 2 * np.deg2rad(half_width) * np.cos(np.deg2rad(b)),
                        np.deg2rad(b))
    expect = pop.expected_number("psr") * area / _psr_norm()
    got = len(plane["lon"]) / n
    assert abs(got - expect) < 5 * np.sqrt(expect / n) + 0.05 * expect


def test_king_profile_normalisation_and_containment():
    s, g = 1.3, 2.2
    r = np.linspace(0, 400, 400001)
    total = np.trapezoid(2 * np.pi * r * king_profile(r, s, g), r)
    assert total == pytest.approx(1.0, rel=2e-3)
    r68 = king_containment_radius(0.68, s, g)
    inside = np.trapezoid(2 * np.pi * r[r <= r68] * king_profile(r[r <= r68], s, g), r[r <= r68])
    assert inside == pytest.approx(0.68, rel=1e-3)


def test_response_scaling_and_bad_input():
    r1 = FermiLATResponse()
    r2 = FermiLATResponse.from_years(19.0)
    assert r2.exposure_scale == pytest.approx(2.0)
    flux = np.full((3, 5), 1e-10)
    np.testing.assert_allclose(r2.counts(flux), 2 * r1.counts(flux))
    assert np.all(np.isfinite(r1.exposure.value)) and np.all(r1.exposure.value > 0)
    r68 = r1.containment_radius(0.68)
    assert r68.unit == u.deg and np.all(np.diff(r68.value) < 0.05)
    with pytest.raises(ValueError, match="exposure_scale"):
        FermiLATResponse(exposure_scale=0)
    with pytest.raises(ValueError, match="psf_scale"):
        FermiLATResponse(psf_scale=-1)


def test_rendered_source_keeps_counts_and_centroid():
    resp = FermiLATResponse()
    counts = np.array([[500.0, 400.0, 300.0, 100.0, 50.0]])
    img = render_point_sources((1, 5, 64, 64), [0], [30.3], [33.7], counts, resp)
    np.testing.assert_allclose(img[0].sum(axis=(1, 2)), counts[0], rtol=1e-4)
    yy, xx = np.mgrid[0:64, 0:64]
    for b in (2, 3, 4):
        w = img[0, b]
        assert (w * xx).sum() / w.sum() == pytest.approx(30.3, abs=0.08)
        assert (w * yy).sum() / w.sum() == pytest.approx(33.7, abs=0.08)
    # Wider PSF at low energy: the peak pixel holds a smaller fraction.
    peak = img[0].max(axis=(1, 2)) / counts[0]
    assert np.all(np.diff(peak) > 0)
    # A source outside the patch spills light into its edge, a far one none.
    out = render_point_sources((1, 5, 64, 64), [0, 0], [-2.0, -200.0], [30.0, 30.0],
                               np.vstack([counts, counts]), resp)
    assert 0 < out[0, 0].sum() < counts[0, 0]
    assert out[0, :, :, 40:].sum() == pytest.approx(0, abs=1e-3)


def test_sample_patches_api(sim):
    b = sim.sample_patches(6)
    for arr in (b.counts, b.expected, b.background):
        assert arr.shape == (6, 5, 64, 64) and arr.dtype == np.float32
    assert np.all(b.expected >= b.background) and np.all(b.background > 0)
    assert np.all(b.counts == np.round(b.counts)) and np.all(b.counts >= 0)
    assert b.lon.shape == b.lat.shape == (6,)
    assert len(b.sources) == 6
    t = b.sources[0]
    for col in ("x", "y", "lon", "lat", "flux_1000", "flux_band", "counts_band", "cls"):
        assert col in t.colnames
    allsrc = b.truth()
    assert len(allsrc) == sum(len(s) for s in b.sources)
    assert np.all((allsrc["x"] >= -0.5) & (allsrc["x"] < 63.5))
    assert np.all((allsrc["y"] >= -0.5) & (allsrc["y"] < 63.5))
    # Truth positions agree with the patch WCS.
    for i in range(6):
        s = b.sources[i]
        if len(s):
            x, y = b.wcs(i).wcs_world2pix(s["lon"], s["lat"], 0)
            np.testing.assert_allclose(x, s["x"], atol=1e-6)
            np.testing.assert_allclose(y, s["y"], atol=1e-6)
    np.testing.assert_allclose(allsrc["counts_band"], sim.response.counts(allsrc["flux_band"]))
    assert sim.energy_edges.to_value(u.GeV).tolist() == [0.5, 1, 2, 7, 20, 200]


def test_sources_add_expected_counts(sim):
    # Sources' counts land in the patch: the source image holds at least the inside sources'
    # counts that their PSF keeps in the field (checked for bright, central ones).
    b = sim.sample_patches(20)
    src = b.expected - b.background
    t = b.truth()
    central = (np.abs(t["x"] - 31.5) < 15) & (np.abs(t["y"] - 31.5) < 15)
    bright = t["counts_band"][:, 2] > 50
    for row in t[central & bright][:5]:
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        assert src[row["patch"], 2, iy, ix] > 0.02 * row["counts_band"][2]


def test_given_centres_and_seed_reproducible():
    a = FermiSkySimulator(seed=11).sample_patches(2, lon=[10.0, 200.0], lat=[0.0, 45.0])
    b = FermiSkySimulator(seed=11).sample_patches(2, lon=[10.0, 200.0], lat=[0.0, 45.0])
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.lon, [10.0, 200.0])
    # The Galactic plane is brighter than 45 deg latitude.
    assert a.background[0].sum() > 3 * a.background[1].sum()
    with pytest.raises(ValueError, match="lon and lat"):
        FermiSkySimulator(seed=1).sample_patches(2, lon=[1.0, 2.0])
    with pytest.raises(ValueError, match="lat"):
        FermiSkySimulator(seed=1).sample_patches(1, lon=[1.0], lat=[95.0])


def test_exposure_and_background_scale():
    kw = dict(lon=[30.0], lat=[20.0])
    base = FermiSkySimulator(seed=5).sample_patches(1, **kw)
    double = FermiSkySimulator(seed=5, exposure_scale=2.0).sample_patches(1, **kw)
    half_bkg = FermiSkySimulator(seed=5, background_scale=0.5).sample_patches(1, **kw)
    np.testing.assert_allclose(double.background, 2 * base.background, rtol=1e-6)
    np.testing.assert_allclose(half_bkg.background, 0.5 * base.background, rtol=1e-6)
    np.testing.assert_allclose(double.truth()["counts_band"], 2 * base.truth()["counts_band"])
    with pytest.raises(ValueError, match="background_scale"):
        FermiSkySimulator(background_scale=-1)


@pytest.mark.parametrize("name", ["b2", "b3"])
def test_alternative_backgrounds_differ_from_b1(name):
    b1 = get_background("b1")
    alt = get_background(name)
    rng = np.random.default_rng(0)
    lon = rng.uniform(0, 360, 4000)
    lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 4000)))
    d1, d2 = b1.density(lon, lat), alt.density(lon, lat)
    assert d2.shape == d1.shape and np.all(d2 > 0)
    ratio = np.log(d2 / d1)
    # Same overall level (within a factor ~1.5 on average) but a different map.
    assert abs(np.median(ratio)) < 0.4
    assert np.std(ratio) > 0.05
    with pytest.raises(ValueError, match="unknown background"):
        get_background("b9")


def test_b1_template_reproduces_challenge_background():
    from astro_asid.evaluate.challenge import find_challenge_dir
    try:
        d = find_challenge_dir()
    except FileNotFoundError:
        pytest.skip("data-challenge files not available")
    with np.load(d / "patches_catalog400.npz") as f:
        idx = np.arange(0, 768, 37)
        bkg = np.moveaxis(f["background"][idx], -1, 1)
        lon, lat = f["patch_lon"][idx], f["patch_lat"][idx]
    sim = FermiSkySimulator(seed=0)
    ours = sim.expected_background(lon, lat)
    rel = np.abs(ours / bkg - 1)
    assert np.median(rel) < 0.01
    assert np.percentile(rel, 99) < 0.12


def test_allsky(sim):
    import healpy as hp
    counts, truth, expected, bkg = sim.sample_allsky(nside=32, return_expected=True)
    assert counts.shape == (5, hp.nside2npix(32)) and counts.dtype == np.float32
    src_total = (expected - bkg).sum(axis=1)
    np.testing.assert_allclose(src_total, truth["counts_band"].sum(axis=0), rtol=1e-3)
    assert {"lon", "lat", "flux_1000", "cls", "pix"} <= set(truth.colnames)


def test_write_and_read_dataset(tmp_path):
    write_dataset(tmp_path / "ds", 5, seed=2, batch_size=2)
    arrays, truth, meta = read_dataset(tmp_path / "ds")
    assert arrays["counts"].shape == (5, 5, 64, 64)
    assert meta["n"] == 5 and meta["background"] == "b1"
    assert set(np.unique(truth["patch"])) <= set(range(5))
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "ds", 5)
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing")


def test_cli_roundtrip(tmp_path):
    import argparse
    from astro_asid.simulate import cli
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "out"), "-n", "3", "--years", "4.75", "-q"])
    assert cli.run(args) == 0
    arrays, truth, meta = read_dataset(tmp_path / "out")
    assert meta["exposure_scale"] == pytest.approx(0.5)
    bad = parser.parse_args([str(tmp_path / "x"), "--years", "1", "--exposure-scale", "1"])
    with pytest.raises(SystemExit):
        cli.run(bad)


def test_powerlaw_patches_and_shipped_data_size():
    from pathlib import Path
    import astro_asid
    b = FermiSkySimulator(luminosity="powerlaw", seed=4).sample_patches(2)
    # Many more (mostly faint) sources than with the flat extension.
    assert len(b.truth()) > 100
    data = Path(astro_asid.__file__).parent / "data"
    ours = [data / "fermi_b1_hpx128.npz", data / "fermi_b3_params.npz"]
    assert all(p.is_file() for p in ours)
    assert sum(p.stat().st_size for p in ours) < 8e6

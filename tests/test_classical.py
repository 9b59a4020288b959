"""Tests of the classical detectors (peaks, dao, log, tsmap)."""

import numpy as np
import pytest
from astropy import units as u
from astropy.wcs import WCS
from scipy import optimize, stats

from astro_asid.core import as_sky_image
from astro_asid.detection import Detector
from astro_asid.detection.classical import (CLASSICAL_DETECTORS, DAODetector, LoGDetector,
                                            PeaksDetector, TSMapDetector, compute_ts_map,
                                            snr_to_score, spectral_weights)

COLUMNS = ("x_centroid", "y_centroid", "score", "x_err", "y_err", "flux", "flux_err")
SHAPE = (64, 64)


def make_wcs(shape=SHAPE):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.crval = [10.0, 5.0]
    wcs.wcs.cdelt = [-0.1, 0.1]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    return wcs


def psf_image(shape, x, y, sigma):
    """Gaussian PSF integrated over pixels (scipy.stats, independent of the package)."""
    ny, nx = shape
    px = np.diff(stats.norm.cdf(np.arange(nx + 1) - 0.5, loc=x, scale=sigma))
    py = np.diff(stats.norm.cdf(np.arange(ny + 1) - 0.5, loc=y, scale=sigma))
    return np.outer(py, px)


def positions(rng, n, shape=SHAPE, margin=6, min_dist=9):
    """``n`` random positions at least ``min_dist`` apart."""
    xs, ys = [], []
    while len(xs) < n:
        x, y = rng.uniform(margin, shape[1] - margin), rng.uniform(margin, shape[0] - margin)
        if all(np.hypot(x - a, y - b) > min_dist for a, b in zip(xs, ys)):
            xs.append(x)
            ys.append(y)
    return np.array(xs), np.array(ys)


def scene(seed, n=10, flux=500.0, level=2.0, sigmas=(1.5,), weights=None):
    """Poisson counts of ``n`` point sources on a gradient background.

    Returns counts, background (n_bands, ny, nx), true x, y.
    """
    rng = np.random.default_rng(seed)
    sigmas = np.atleast_1d(sigmas)
    nb = sigmas.size
    weights = np.full(nb, 1.0 / nb) if weights is None else np.asarray(weights) / np.sum(weights)
    xs, ys = positions(rng, n)
    xx = np.arange(SHAPE[1])[None, :]
    back = np.broadcast_to(level * (1.0 + 0.6 * xx / SHAPE[1]), SHAPE)
    background = np.stack([back * w for w in weights])
    mu = background.copy()
    for b in range(nb):
        for x, y in zip(xs, ys):
            mu[b] += flux * weights[b] * psf_image(SHAPE, x, y, sigmas[b])
    return rng.poisson(mu).astype(float), background, xs, ys


def sky_image(counts, sigmas=(1.5,), background=None, **kwargs):
    image = as_sky_image(counts, make_wcs(), **kwargs)
    image.psf = {"sigma_pix": list(np.atleast_1d(sigmas))}
    image.background = background
    return image


def match(table, xs, ys, radius=1.0):
    """Distances of the matched truths and the number of unmatched detections."""
    if len(table) == 0:
        return np.zeros(0), 0, np.zeros(0, int)
    d = np.hypot(np.asarray(table["x_centroid"])[:, None] - xs,
                 np.asarray(table["y_centroid"])[:, None] - ys)
    nearest = d.argmin(axis=0)
    best = d.min(axis=0)
    found = best < radius
    false = len(table) - len(set(nearest[found]))
    return best[found], false, nearest[found]


DETECTOR_CASES = [
    pytest.param(PeaksDetector, {}, id="peaks"),
    pytest.param(DAODetector, {}, id="dao"),
    pytest.param(LoGDetector, {}, id="log"),
    pytest.param(TSMapDetector, {}, id="tsmap-oracle"),
    pytest.param(TSMapDetector, {"background": "estimate"}, id="tsmap-estimate"),
]


def test_registry_list():
    assert [d.name for d in CLASSICAL_DETECTORS] == ["peaks", "dao", "log", "tsmap"]
    for cls in CLASSICAL_DETECTORS:
        assert issubclass(cls, Detector)
        assert cls.description
    assert TSMapDetector.needs_counts


@pytest.mark.parametrize(("cls", "options"), DETECTOR_CASES)
@pytest.mark.parametrize("seed", [1, 2])
def test_recovers_injected_sources(cls, options, seed):
    counts, background, xs, ys = scene(seed)
    image = sky_image(counts, background=background)
    table = cls(**options).detect(image)
    for name in COLUMNS:
        assert name in table.colnames
    dist, false, _ = match(table, xs, ys)
    assert dist.size >= 9, f"recall {dist.size}/10"
    assert np.all(dist < 0.5), dist
    assert false <= 1
    score = np.asarray(table["score"])
    assert np.all((score >= 0) & (score <= 1))
    assert np.all(np.diff(score) <= 0), "not sorted by decreasing score"
    assert np.all(np.asarray(table["x_err"]) > 0) and np.all(np.asarray(table["y_err"]) > 0)


@pytest.mark.parametrize(("cls", "options"), DETECTOR_CASES)
def test_errors_and_fluxes_are_calibrated(cls, options):
    """Pulls of positions and fluxes over 30 sources have roughly unit spread."""
    pulls, flux_pulls = [], []
    for seed in (3, 4, 5):
        counts, background, xs, ys = scene(seed, flux=300.0)
        table = cls(**options).detect(sky_image(counts, background=background))
        dist, _, idx = match(table, xs, ys)
        found = np.hypot(np.asarray(table["x_centroid"])[:, None] - xs,
                         np.asarray(table["y_centroid"])[:, None] - ys).min(axis=0) < 1.0
        rows = table[idx]
        pulls.append((np.asarray(rows["x_centroid"]) - xs[found]) / np.asarray(rows["x_err"]))
        pulls.append((np.asarray(rows["y_centroid"]) - ys[found]) / np.asarray(rows["y_err"]))
        flux_pulls.append((np.asarray(rows["flux"]) - 300.0) / np.asarray(rows["flux_err"]))
    pulls = np.concatenate(pulls)
    flux_pulls = np.concatenate(flux_pulls)
    assert 0.5 < np.std(pulls) < 1.8, np.std(pulls)
    assert abs(np.median(flux_pulls)) < 1.0, np.median(flux_pulls)
    assert np.std(flux_pulls) < 2.0, np.std(flux_pulls)


@pytest.mark.parametrize(("cls", "options"), [
    pytest.param(PeaksDetector, {"nsigma": 6}, id="peaks"),
    pytest.param(DAODetector, {"nsigma": 6}, id="dao"),
    pytest.param(LoGDetector, {"nsigma": 6}, id="log"),
    pytest.param(TSMapDetector, {"ts_threshold": 36}, id="tsmap-oracle"),
    pytest.param(TSMapDetector, {"ts_threshold": 36, "background": "estimate"}, id="tsmap-est"),
])
def test_pure_noise_gives_empty_table(cls, options):
    counts, background, _, _ = scene(7, n=0, level=5.0)
    table = cls(**options).detect(sky_image(counts, background=background))
    assert len(table) == 0
    for name in COLUMNS:
        assert name in table.colnames


@pytest.mark.parametrize(("cls", "options"), DETECTOR_CASES)
def test_respects_mask(cls, options):
    counts, background, xs, ys = scene(8)
    mask = np.zeros(SHAPE, bool)
    x0, y0 = int(round(xs[0])), int(round(ys[0]))
    mask[y0 - 6:y0 + 7, x0 - 6:x0 + 7] = True
    image = sky_image(counts, background=background, mask=mask)
    table = cls(**options).detect(image)
    ix = np.round(np.asarray(table["x_centroid"])).astype(int)
    iy = np.round(np.asarray(table["y_centroid"])).astype(int)
    assert not np.any(mask[iy, ix]), "detection inside the mask"
    dist, _, _ = match(table, xs[1:], ys[1:])
    assert dist.size >= 8


def test_mask_does_not_bias_background():
    """A masked block of huge values must change nothing outside it."""
    counts, background, xs, ys = scene(9)
    mask = np.zeros(SHAPE, bool)
    mask[:, :4] = True
    for cls in (PeaksDetector, DAODetector, LoGDetector, TSMapDetector):
        options = {"background": "estimate"} if cls is TSMapDetector else {}
        image = sky_image(counts, background=background, mask=mask)
        clean = cls(**options).detect(image)
        # values under the mask (normally NaN) must not matter, whatever they are
        spoiled = image.data.copy()
        spoiled[:, :, :4] = 1e6
        dirty = cls(**options).detect(image.copy(data=spoiled))
        assert len(clean) == len(dirty)
        np.testing.assert_allclose(clean["x_centroid"], dirty["x_centroid"])


def analytic_ts(counts, background, kernel):
    """TS of one position by direct numerical maximisation of the Cash likelihood."""
    def neg_loglike(amp):
        mu = background + amp * kernel
        return -np.sum(counts * np.log(mu) - mu)

    res = optimize.minimize_scalar(neg_loglike, bounds=(0.0, 10 * counts.sum() + 10),
                                   method="bounded", options={"xatol": 1e-10})
    return 2.0 * (neg_loglike(0.0) - res.fun), res.x


def test_ts_map_matches_analytic_single_source():
    rng = np.random.default_rng(11)
    sigma = 1.7
    level = 1.5
    x0, y0 = 31.3, 30.8
    background = np.full(SHAPE, level)
    counts = rng.poisson(background + 80.0 * psf_image(SHAPE, x0, y0, sigma)).astype(float)
    result = compute_ts_map(counts, background, sigma, fit_threshold=0.0)
    half = int(np.ceil(3 * sigma))
    for iy, ix in [(31, 31), (30, 32), (33, 29), (5, 7)]:
        # the TS map's test source sits on the pixel centre, truncated at 3 sigma
        kernel = psf_image(SHAPE, ix, iy, sigma)
        cut = np.zeros(SHAPE, bool)
        cut[max(iy - half, 0):iy + half + 1, max(ix - half, 0):ix + half + 1] = True
        window = psf_image((2 * half + 1,) * 2, half, half, sigma).sum()
        kernel = np.where(cut, kernel, 0.0) / window
        ts, amp = analytic_ts(counts[cut], background[cut], kernel[cut])
        assert result["ts"][iy, ix] == pytest.approx(ts, rel=1e-5, abs=1e-6)
        assert result["flux"][iy, ix] == pytest.approx(amp, rel=1e-4, abs=1e-4)
    assert result["ts"][31, 31] > 50


def test_ts_map_multiband_shared_amplitude():
    rng = np.random.default_rng(12)
    sigmas = np.array([2.5, 1.2])
    weights = np.array([0.7, 0.3])
    background = np.stack([np.full(SHAPE, 2.0), np.full(SHAPE, 0.2)])
    iy, ix = 32, 30
    mu = background + 60 * weights[:, None, None] * np.stack(
        [psf_image(SHAPE, ix + 0.2, iy - 0.1, s) for s in sigmas])
    counts = rng.poisson(mu).astype(float)
    result = compute_ts_map(counts, background, sigmas, weights=weights, fit_threshold=0.0)
    kern = []
    for s in sigmas:
        half = int(np.ceil(3 * s))
        k = psf_image(SHAPE, ix, iy, s)
        cut = np.zeros(SHAPE, bool)
        cut[iy - half:iy + half + 1, ix - half:ix + half + 1] = True
        kern.append(np.where(cut, k, 0.0) / k[cut].sum())
    kernel = np.stack(kern) * weights[:, None, None]
    ts, amp = analytic_ts(counts, background, kernel)
    assert result["ts"][iy, ix] == pytest.approx(ts, rel=1e-5)
    assert result["flux"][iy, ix] == pytest.approx(amp, rel=1e-4)


def test_ts_map_screening_keeps_significant_values():
    counts, background, _, _ = scene(13, sigmas=(2.0, 1.0), level=1.0, flux=100.0)
    exact = compute_ts_map(counts, background, (2.0, 1.0), fit_threshold=0.0)["ts"]
    fast = compute_ts_map(counts, background, (2.0, 1.0))["ts"]
    np.testing.assert_allclose(fast[exact > 2], exact[exact > 2])
    assert np.all(fast <= exact * (1 + 1e-6) + 1e-6)  # skipped positions hold a lower bound


def test_tsmap_multiband_recovery_and_sweep():
    sigmas = (3.0, 1.8, 1.0)
    counts, background, xs, ys = scene(14, sigmas=sigmas, weights=(0.6, 0.3, 0.1), flux=400,
                                       level=3.0)
    image = sky_image(counts, sigmas=sigmas, background=background)
    strict = TSMapDetector(ts_threshold=25, spectrum=[0.6, 0.3, 0.1]).detect(image)
    loose = TSMapDetector(ts_threshold=4, spectrum=[0.6, 0.3, 0.1]).detect(image)
    indep = TSMapDetector(ts_threshold=25, spectrum="independent").detect(image)
    for table in (strict, indep):
        dist, false, idx = match(table, xs, ys)
        assert dist.size >= 9 and false <= 1
        # wide PSFs: check positions against their own errors (2-D, 5 sigma)
        err = np.hypot(table["x_err"][idx], table["y_err"][idx])
        assert np.median(dist) < 0.35 and np.all(dist < 5 * err)
    assert len(loose) > len(strict)
    assert np.all(np.asarray(loose["ts"]) >= 4)
    np.testing.assert_allclose(strict["score"], snr_to_score(np.sqrt(strict["ts"])))


def test_tsmap_rejects_negative_counts():
    counts, background, _, _ = scene(15)
    counts[0, 10, 10] = -1.0
    image = sky_image(counts, background=background)
    with pytest.raises(ValueError, match="negative"):
        TSMapDetector().detect(image)
    with pytest.raises(ValueError, match="negative"):
        compute_ts_map(counts, background, 1.5)


def test_tsmap_rejects_bad_background():
    counts, background, _, _ = scene(16)
    image = sky_image(counts)
    with pytest.raises(ValueError, match="shape"):
        TSMapDetector(background=np.ones((3, 3))).detect(image)
    with pytest.raises(ValueError, match="non-negative"):
        TSMapDetector(background=-np.ones(SHAPE)).detect(image)
    with pytest.raises(ValueError, match="background"):
        TSMapDetector(background="guess")


def test_spectral_weights():
    counts = np.ones((3, 8, 8))
    image = as_sky_image(counts, make_wcs((8, 8)), energy_edges=[1, 2, 4, 8] * u.GeV)
    w = spectral_weights(image, "powerlaw", 2.0)
    np.testing.assert_allclose(w, [4 / 7, 2 / 7, 1 / 7])
    np.testing.assert_allclose(spectral_weights(image, None, 2.0), w)
    np.testing.assert_allclose(spectral_weights(image, "counts", 2.0), [1 / 3] * 3)
    assert spectral_weights(image, "independent", 2.0) == "independent"
    no_edges = as_sky_image(counts, make_wcs((8, 8)))
    with pytest.raises(ValueError, match="energy_edges"):
        spectral_weights(no_edges, "powerlaw", 2.0)
    with pytest.raises(ValueError, match="weights"):
        spectral_weights(image, [1, -1, 0], 2.0)


def test_non_count_image_with_unit():
    """Gaussian-noise image with negative values and a unit: band-sum detectors work."""
    rng = np.random.default_rng(17)
    _, _, xs, ys = scene(17, n=6)
    data = rng.normal(10.0, 1.0, SHAPE)
    for x, y in zip(xs[:6], ys[:6]):
        data += 200.0 * psf_image(SHAPE, x, y, 1.5)
    image = sky_image(data * u.Jy)
    for cls in (PeaksDetector, DAODetector, LoGDetector):
        table = cls().detect(image)
        dist, false, _ = match(table, xs[:6], ys[:6])
        assert dist.size == 6 and false == 0
        assert table["flux"].unit == u.Jy
    with pytest.raises(ValueError, match="counts"):
        TSMapDetector().detect(as_sky_image(data - 10.0, make_wcs()))


def test_options_are_validated():
    with pytest.raises(ValueError, match="nsigma"):
        PeaksDetector(nsigma=-1)
    with pytest.raises(ValueError, match="centroid"):
        PeaksDetector(centroid="magic")
    with pytest.raises(ValueError, match="sharplo"):
        DAODetector(sharplo=2, sharphi=1)
    with pytest.raises(ValueError, match="max_sigma"):
        LoGDetector(min_sigma=3, max_sigma=1)
    with pytest.raises(ValueError, match="ts_threshold"):
        TSMapDetector(ts_threshold=0)
    with pytest.raises(ValueError, match="spectrum"):
        TSMapDetector(spectrum="flat")
    with pytest.raises(ValueError, match="psf"):
        counts, _, _, _ = scene(18, sigmas=(1.5, 1.0))
        TSMapDetector(psf_sigma=[1.0, 2.0, 3.0]).detect(sky_image(counts, sigmas=(1.5, 1.0)))
    with pytest.raises(TypeError):
        PeaksDetector(bogus=1)


def test_ts_map_series_path_matches_exact_sums(monkeypatch):
    """The power-series shortcut for bands with many counts changes nothing."""
    from astro_asid.detection import tsmap

    sigmas = (4.0, 2.5, 1.7, 1.0)
    counts, background, _, _ = scene(19, sigmas=sigmas, weights=(0.6, 0.25, 0.12, 0.03),
                                      level=8.0, flux=600.0)
    counts[:, 20:24, 30:34] = 0.0  # a hole, and bright and faint sources
    fast = compute_ts_map(counts, background, sigmas, fit_threshold=0.0)
    monkeypatch.setattr(tsmap, "_SERIES_MIN_PAIRS", np.inf)
    exact = compute_ts_map(counts, background, sigmas, fit_threshold=0.0)
    assert fast["ts"].max() > 100
    np.testing.assert_allclose(fast["ts"], exact["ts"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast["flux"], exact["flux"], rtol=1e-5, atol=1e-5)

"""Tests of the data-challenge loader and the paper's scorer."""

import numpy as np
import pytest
from astropy.table import Table

from astro_asid.evaluate import challenge as ch
from astro_asid.evaluate import (
    angular_separation, challenge_wcs, completeness_vs_flux, patch_pixel_to_sky, poisson_draw,
    position_error_stats, precision_recall_curve, recall_at_precision, s90, score_catalog,
)

try:
    DATA_DIR = ch.find_challenge_dir()
except FileNotFoundError:
    DATA_DIR = None
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="data-challenge files not available")


def _truth(patch, lon, lat, flux):
    return Table(dict(patch=np.asarray(patch), lon=np.asarray(lon, float),
                      lat=np.asarray(lat, float), flux_1000=np.asarray(flux, float)))


def _pred(patch, lon, lat, score=None):
    t = Table(dict(patch=np.asarray(patch), lon=np.asarray(lon, float),
                   lat=np.asarray(lat, float)))
    if score is not None:
        t["score"] = np.asarray(score, float)
    return t


def test_match_takes_brightest_source_within_radius():
    # Two true sources within 0.3 deg of the first prediction: it takes the brighter
    # (farther) one, so the second prediction, next to the fainter, still matches.
    truth = _truth([0, 0], [10.0, 10.25], [0.0, 0.0], [1e-9, 5e-9])
    pred = _pred([0, 0], [10.05, 9.98], [0.0, 0.0])
    res = score_catalog(pred, truth)
    assert (res.tp, res.fp, res.fn) == (2, 0, 0)
    assert list(res.pred_match) == [1, 0]
    np.testing.assert_allclose(res.pred_sep, [0.2, 0.02], atol=1e-9)


def test_visiting_order_matters_and_radius_is_strict():
    truth = _truth([0], [10.0], [0.0], [1e-9])
    pred = _pred([0, 0], [10.29, 10.01], [0.0, 0.0], score=[0.1, 0.9])
    given = score_catalog(pred, truth)
    assert list(given.pred_tp) == [True, False]
    by_score = score_catalog(pred, truth, order="score")
    assert list(by_score.pred_tp) == [False, True]
    far = score_catalog(_pred([0], [10.31], [0.0]), truth)
    assert (far.tp, far.fp, far.fn) == (0, 1, 1)
    # A FP carries the flux of the closest true source (the paper's plots).
    assert far.pred_flux[0] == 1e-9


def test_patches_are_scored_separately():
    # Same sky position, other patch: no match across patches.
    truth = _truth([3], [10.0], [0.0], [1e-9])
    res = score_catalog(_pred([4], [10.0], [0.0]), truth)
    assert (res.tp, res.fp, res.fn) == (0, 1, 1)
    assert np.isnan(res.pred_flux[0])


def test_bad_input_raises():
    truth = _truth([0], [10.0], [0.0], [1e-9])
    with pytest.raises(KeyError, match="lon"):
        score_catalog(Table(dict(patch=[0], ra=[1.0], lat=[0.0])), truth)
    with pytest.raises(ValueError, match="order"):
        score_catalog(_pred([0], [10.0], [0.0]), truth, order="random")
    with pytest.raises(ValueError, match="radius"):
        score_catalog(_pred([0], [10.0], [0.0]), truth, radius=0)
    with pytest.raises(ValueError, match=">= 0"):
        poisson_draw(np.array([-1.0]))


def test_precision_recall_curve_equals_rescoring_each_threshold():
    rng = np.random.default_rng(1)
    n_t, n_p = 60, 90
    truth = _truth(rng.integers(0, 4, n_t), rng.uniform(0, 3, n_t), rng.uniform(-1.5, 1.5, n_t),
                   10 ** rng.uniform(-10, -8, n_t))
    pred = _pred(rng.integers(0, 4, n_p), rng.uniform(0, 3, n_p), rng.uniform(-1.5, 1.5, n_p),
                 score=np.round(rng.uniform(0, 1, n_p), 2))
    curve = precision_recall_curve(pred, truth)
    assert np.all(np.diff(curve["threshold"]) < 0)
    for row in curve:
        sub = pred[pred["score"] >= row["threshold"]]
        r = score_catalog(sub, truth, order="score")
        assert (r.tp, r.fp) == (row["tp"], row["fp"])
        assert r.recall == pytest.approx(row["recall"])
    best = recall_at_precision(curve, 0.0)
    assert best == pytest.approx(curve["recall"].max())
    assert recall_at_precision(curve, 1.01) == 0.0
    assert recall_at_precision(curve, [0.0, 1.01]).shape == (2,)


def test_summary_statistics_on_known_catalog():
    # 100 sources with fluxes 1..100; only the 50 brightest are found, at 0.1 deg.
    flux = np.arange(1, 101) * 1e-10
    truth = _truth(np.zeros(100, int), np.arange(100) * 1.0, np.zeros(100), flux)
    pred = _pred(np.zeros(50, int), np.arange(50, 100) * 1.0 + 0.1, np.zeros(50))
    res = score_catalog(pred, truth)
    assert (res.tp, res.fp, res.fn) == (50, 0, 50)
    stats = position_error_stats(res)
    assert stats["median"] == pytest.approx(0.1, abs=1e-6)
    assert stats["frac_within"] == 1.0
    comp = completeness_vs_flux(res, truth, bins=[0.5e-10, 50.5e-10, 100.5e-10])
    np.testing.assert_allclose(comp["completeness"], [0.0, 1.0])
    # Above flux k: 50 found of 101 - k sources, >= 0.9 first at k = 46 (50 / 55).
    assert s90(res, truth) == pytest.approx(46e-10)
    assert s90(res, truth, level=0.99) == pytest.approx(51e-10)
    assert np.isnan(s90(score_catalog(pred[:0], truth), truth))


def test_angular_separation_against_astropy():
    from astropy.coordinates import SkyCoord
    rng = np.random.default_rng(2)
    lon1, lon2 = rng.uniform(0, 360, (2, 50))
    lat1, lat2 = rng.uniform(-90, 90, (2, 50))
    ref = SkyCoord(lon1, lat1, unit="deg", frame="galactic").separation(
        SkyCoord(lon2, lat2, unit="deg", frame="galactic")).deg
    np.testing.assert_allclose(angular_separation(lon1, lat1, lon2, lat2), ref, atol=1e-9)


def test_challenge_wcs_geometry():
    w = challenge_wcs(45.0, 84.14973293629666)
    assert tuple(w.wcs.ctype) == ("GLON-CAR", "GLAT-CAR")
    np.testing.assert_allclose(w.wcs.crpix, [32.75, 32.75])
    np.testing.assert_allclose(w.wcs.cdelt, [-10 / 64, 10 / 64])
    # FITS pixel CRPIX is 0-based 31.75: the centre of the sky position.
    lon, lat = patch_pixel_to_sky(45.0, 84.14973293629666, 31.75, 31.75)
    assert lon == pytest.approx(45.0) and lat == pytest.approx(84.14973293629666)


def test_poisson_draw_is_seeded():
    mu = np.full((2, 5, 4, 4), 3.0, np.float32)
    a, b, c = poisson_draw(mu, seed=5), poisson_draw(mu, seed=5), poisson_draw(mu, seed=6)
    assert a.dtype == np.float32 and a.shape == mu.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@needs_data
def test_scorer_reproduces_published_unek_numbers():
    truth = ch.read_truth(DATA_DIR)
    pred = ch.read_unek_predictions(DATA_DIR)
    res = score_catalog(pred, truth)
    assert (res.tp, res.fp, res.fn) == (4999, 694, 5315)
    assert round(res.precision, 4) == 0.8781
    assert round(res.recall, 4) == 0.4847
    high = score_catalog(pred[pred["score"] >= 0.5], truth)
    assert (high.tp, high.fp, high.fn) == (4263, 126, 6051)
    assert round(high.precision, 4) == 0.9713
    assert round(high.recall, 4) == 0.4133


@needs_data
def test_wcs_reproduces_unek_pixel_to_sky():
    truth = ch.read_truth(DATA_DIR)
    pred = ch.read_unek_predictions(DATA_DIR)
    # The truth list holds only sources inside [0, 63.5) of their patch's WCS.
    assert truth["x"].min() >= 0 and truth["x"].max() < 63.5
    assert truth["y"].min() >= 0 and truth["y"].max() < 63.5
    centres = {p: (lc, bc) for p, lc, bc in zip(truth["patch"], truth["lon_c"], truth["lat_c"])}
    sel = np.flatnonzero(np.isin(pred["patch"], list(centres)))[:300]
    for i in sel:
        lon, lat = patch_pixel_to_sky(*centres[pred["patch"][i]], pred["x"][i], pred["y"][i])
        assert angular_separation(lon, lat, pred["lon"][i], pred["lat"][i]) < 1e-4


@needs_data
def test_load_challenge_layout():
    c = ch.load_challenge(DATA_DIR)
    assert c.background.shape == (768, 5, 64, 64) and c.background.dtype == np.float32
    assert c.n_patches == 768 and len(c.truth) == 10314
    # The npz stores band last; the package stores band first.
    with np.load(DATA_DIR / "patches_catalog400.npz") as f:
        np.testing.assert_array_equal(f["agn"][7, :, :, 2], c.agn[7, 2])
    counts = poisson_draw(c.expected[:2], seed=0)
    assert counts.shape == (2, 5, 64, 64)
    w = c.wcs(3)
    assert w.wcs.crval[0] == pytest.approx(c.patch_lon[3])

"""Tests of the optical simulator's undersampled PSFs, PSF variation and bleed trails
(the rest of `astro_asid.simulate.optical` is tested in test_optical.py)."""

import argparse

import numpy as np
import pytest

from astro_asid.simulate.optical import (OpticalSkySimulator, _bleed, _subsampling,
                                         moffat_alpha)


def _exact_pixels(x, y, fwhm, beta, h, order=24):
    """The Moffat integrated over the pixels of a ``2h+1`` stamp centred on pixel 0 by
    Gauss-Legendre quadrature (independent of the simulator's midpoint sums), unit sum."""
    t, w = np.polynomial.legendre.leggauss(order)
    off = np.arange(-h, h + 1)
    g = (off[:, None] + 0.5 * t[None, :]).ravel()          # nodes in every pixel
    wg = np.tile(0.5 * w, len(off))
    a = moffat_alpha(fwhm, beta)
    prof = (1.0 + ((g[None, :] - x) ** 2 + (g[:, None] - y) ** 2) / a ** 2) ** (-beta)
    prof = prof * wg[None, :] * wg[:, None]
    s = 2 * h + 1
    pix = prof.reshape(s, order, s, order).sum(axis=(1, 3))
    return pix / pix.sum()


def _moments(st):
    h = st.shape[-1] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    mx, my = (st * xx).sum(), (st * yy).sum()
    return (st * ((xx - mx) ** 2 + (yy - my) ** 2)).sum()


# -- undersampled PSFs ------------------------------------------------------------------------
def test_subsampling_rule():
    # 3 from 1.8 px up (the default fields), >= 7 sub-samples per FWHM below, always odd
    assert _subsampling(1.8) == _subsampling(5.0) == 3
    for fwhm in (0.6, 1.0, 1.2, 1.5, 1.79):
        n = _subsampling(fwhm)
        assert n % 2 == 1 and n * fwhm >= 7.0 and (n - 2) * fwhm < 7.0
    assert _subsampling(1.0) == 7


@pytest.mark.parametrize("fwhm", [1.0, 1.2, 1.5])
@pytest.mark.parametrize("beta", [2.5, 4.5])
def test_undersampled_stamps_match_the_pixel_integrated_moffat(fwhm, beta):
    sim = OpticalSkySimulator(seed=0)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-0.5, 0.5, (2, 6)) + [[10.0], [20.0]]
    stamps, x0, y0 = sim._star_stamps(x, y, fwhm, beta)
    h = stamps.shape[-1] // 2
    assert h == int(np.ceil(3.0 * fwhm)) + 2
    np.testing.assert_array_equal(x0 + h, np.rint(x))
    np.testing.assert_array_equal(y0 + h, np.rint(y))
    np.testing.assert_allclose(stamps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for st, dx, dy in zip(stamps.astype(float), x - np.rint(x), y - np.rint(y)):
        exact = _exact_pixels(dx, dy, fwhm, beta, h)
        # the peak pixel (the most sensitive to the sampling) and the second moment
        assert st.max() == pytest.approx(exact.max(), rel=0.01)
        assert np.abs(st - exact).max() < 0.01 * exact.max()
        assert _moments(st) == pytest.approx(_moments(exact), rel=0.01)
    # the old 3x3 sub-sampling misses the peak by 2-3 % at 1 px: the test can tell
    if fwhm == 1.0:
        g = (np.arange((2 * h + 1) * 3) - ((2 * h + 1) * 3 - 1) / 2.0) / 3
        a = moffat_alpha(fwhm, beta)
        coarse = ((1 + (g[None, :] ** 2 + g[:, None] ** 2) / a ** 2) ** (-beta)
                  ).reshape(2 * h + 1, 3, 2 * h + 1, 3).sum(axis=(1, 3))
        coarse /= coarse.sum()
        assert abs(coarse.max() / _exact_pixels(0.0, 0.0, fwhm, beta, h).max() - 1) > 0.02


def test_undersampled_galaxies_are_convolved_on_the_subpixel_grid():
    sim = OpticalSkySimulator(shape=(64, 64), crowding="sparse", fwhm_range=(1.0, 1.2),
                              cosmic_ray_density=(1e-7, 1e-7), trail_probability=0.0, seed=4)
    f = sim.sample()
    assert 1.0 <= f.meta["fwhm"] <= 1.2 and "fwhm" not in f.truth
    # the galaxies are convolved on the sub-pixel grid: unit sum, as wide as the pixels allow
    kernel = sim._psf_kernel(1.0, 3.0, sub=_subsampling(1.0))
    assert kernel.sum() == pytest.approx(1.0)
    st, _, _ = sim._galaxy_stamp(10.3, 10.6, 1.5, 1.0, 0.7, 0.4, kernel, _subsampling(1.0))
    assert st.sum() == pytest.approx(1.0, rel=1e-5) and st.min() >= 0
    fine, _, _ = sim._galaxy_stamp(10.3, 10.6, 1.5, 1.0, 0.7, 0.4,
                                   sim._psf_kernel(1.0, 3.0, sub=21), 21)
    assert _moments(st) == pytest.approx(_moments(fine), rel=0.01)


# -- defaults unchanged -----------------------------------------------------------------------
@pytest.mark.parametrize("kw, expect", [
    # values of the simulator before the PSF-variation and bleed options (same seeds)
    (dict(shape=(64, 64), crowding="moderate", seed=3, trail_probability=1.0),
     (1917662.4946594238, 513.02880859375, 27, 343.7138719933761, 1.9646031062430005)),
    (dict(shape=(64, 64), crowding="crowded", fwhm_range=(1.8, 1.9), seed=8),
     (6934791.82824707, 1821.26171875, 101, 5531.206469453832, 1.8321042090998385)),
])
def test_default_fields_are_unchanged(kw, expect):
    f = OpticalSkySimulator(**kw).sample()
    img = f.image.astype(float)
    got = (img.sum(), float(np.sort(img.ravel())[-200]), len(f.truth["x"]),
           f.truth["snr"].sum(), f.meta["fwhm"])
    np.testing.assert_allclose(got, expect, rtol=1e-9)
    # the new options, off, are the defaults
    g = OpticalSkySimulator(**kw, psf_variation=0.0, bleed=False).sample()
    np.testing.assert_array_equal(f.image, g.image)
    np.testing.assert_array_equal(f.artefact_mask, g.artefact_mask)
    assert set(f.truth) == set(g.truth) and "fwhm" not in f.truth
    assert f.meta == g.meta and f.meta["psf_variation"] == 0.0 and f.meta["bleed"] is False
    assert "psf_field" not in f.meta and len(f.bleeds["x"]) == 0
    fw, e, th = f.psf_at(f.truth["x"], f.truth["y"])
    np.testing.assert_array_equal(fw, f.meta["fwhm"])
    assert not e.any() and not th.any()


# -- PSF variation ----------------------------------------------------------------------------
def _weighted_moments(cut, sigma=2.0):
    h = cut.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    w = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) * cut
    mx, my = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    mxx = (w * (xx - mx) ** 2).sum() / w.sum()
    myy = (w * (yy - my) ** 2).sum() / w.sum()
    mxy = (w * (xx - mx) * (yy - my)).sum() / w.sum()
    # size (fourth root of the determinant) and the two ellipticity components
    return np.array([(mxx * myy - mxy ** 2) ** 0.25, (mxx - myy) / (mxx + myy),
                     2 * mxy / (mxx + myy)])


def test_psf_variation_renders_the_local_psf_of_the_truth():
    n = 192
    sim = OpticalSkySimulator(shape=(n, n), crowding="sparse", fwhm_range=(2.5, 3.0),
                              psf_variation=0.3, galaxy_density=(1e-4, 2e-4),
                              cosmic_ray_density=(1e-6, 2e-6), trail_probability=0.0, seed=2)
    got, expect, fwhm, turn = [], [], [], []
    for f in sim.sample_fields(8):
        t, m = f.truth, f.meta
        pf = m["psf_field"]
        assert m["psf_variation"] == pf["amplitude"] == 0.3
        # the local FWHM of every source, galaxies included, is in the truth
        fw, e, th = f.psf_at(t["x"], t["y"])
        np.testing.assert_allclose(t["fwhm"], fw)
        assert np.all(np.abs(fw / m["fwhm"] - 1) <= 0.3 + 1e-12) and np.all(e <= 0.3 + 1e-12)
        # over the frame the FWHM spans fwhm * (1 +- 0.3) and the PSF turns
        gx, gy = np.meshgrid(np.linspace(0, n - 1, 33), np.linspace(0, n - 1, 33))
        fg, eg, tg = f.psf_at(gx, gy)
        assert fg.min() < 0.75 * m["fwhm"] and fg.max() > 1.25 * m["fwhm"]
        assert eg.max() > 0.25
        # the orientation changes over the frame (mean resultant length of 2 theta)
        turn.append(abs(np.mean(np.exp(2j * tg[eg > 0.05]))))
        # bright isolated stars have the moments of their local PSF
        H = 8
        for i in np.flatnonzero(t["is_star"] & ~t["saturated"] & (t["snr"] > 100)):
            ix, iy = int(np.rint(t["x"][i])), int(np.rint(t["y"][i]))
            if not (H <= ix < n - H and H <= iy < n - H):
                continue
            d = np.hypot(t["x"] - t["x"][i], t["y"] - t["y"][i])
            d[i] = np.inf
            if np.any((d < 2 * H) & (t["flux"] > 3e-3 * t["flux"][i])):
                continue
            cut = f.image[iy - H:iy + H + 1, ix - H:ix + H + 1] - m["bias"] - m["sky_adu"]
            st, _, _ = sim._star_stamps(t["x"][i:i + 1], t["y"][i:i + 1], fw[i:i + 1], m["beta"],
                                        e[i:i + 1], th[i:i + 1])
            h = st.shape[-1] // 2
            got.append(_weighted_moments(cut.astype(float)))
            expect.append(_weighted_moments(st[0, h - H:h + H + 1, h - H:h + H + 1].astype(float)))
            fwhm.append(fw[i])
    assert max(turn) < 0.98 and np.mean(turn) < 0.9
    got, expect = np.array(got), np.array(expect)
    assert len(got) >= 8
    np.testing.assert_allclose(got[:, 0], expect[:, 0], rtol=0.04)
    np.testing.assert_allclose(got[:, 1:], expect[:, 1:], atol=0.03)
    # the stars differ in size as their local FWHM says
    assert np.ptp(fwhm) > 0.3 * np.mean(fwhm)
    assert np.corrcoef(fwhm, got[:, 0])[0, 1] > 0.9


def test_psf_variation_keeps_the_sources_of_the_first_field():
    kw = dict(shape=(64, 64), crowding="moderate", seed=6)
    a = OpticalSkySimulator(**kw).sample()
    b = OpticalSkySimulator(**kw, psf_variation=0.2).sample()
    for k in ("x", "y", "flux", "is_star", "r_eff", "q"):
        np.testing.assert_array_equal(a.truth[k], b.truth[k])
    assert not np.array_equal(a.image, b.image)
    assert b.image.dtype == np.float32 and np.isfinite(b.image).all()


# -- bleed trails -----------------------------------------------------------------------------
def test_bleed_conserves_charge_and_fills_the_column():
    rng = np.random.default_rng(0)
    full = 1000.0
    img = rng.uniform(100.0, 200.0, (40, 12))
    img[20, 3] = 5000.0                     # 4000 e- too many: both ways, evenly
    img[21, 3] = 1500.0
    img[1, 7] = 3000.0                      # next to the edge: the rest goes up
    img[10:30, 9] = 990.0                   # a column that cannot hold it all
    img[20, 9] = 1e6
    before = img.copy()
    art = np.zeros(img.shape, np.uint8)
    art[23, 3] = 1                          # a cosmic ray keeps its code
    streaks = _bleed(img, full, art)
    assert img.sum() == pytest.approx(before.sum(), rel=1e-13)
    np.testing.assert_allclose(img.sum(axis=0), before.sum(axis=0), rtol=1e-13)
    # only the columns with over-full pixels changed, and nothing is over-full but the
    # pixel of the column that could not hold its charge
    changed = (img != before).any(axis=0)
    np.testing.assert_array_equal(np.flatnonzero(changed), [3, 7, 9])
    assert np.flatnonzero(img > full + 1e-9).tolist() == [np.ravel_multi_index((20, 9), img.shape)]
    assert np.all(img[:, 9] >= full - 1e-9)
    # column 3: the core at the full well, the 4500 e- excess half up, half down
    col, b = img[:, 3], before[:, 3]
    assert col[20] == col[21] == full
    up, down = (col[22:] - b[22:]).sum(), (col[:20] - b[:20]).sum()
    assert up == pytest.approx(2250.0) and down == pytest.approx(2250.0)
    got = np.flatnonzero(col > b)
    assert np.all(np.diff(got[got > 21]) == 1) and np.all(np.diff(got[got < 20]) == 1)
    # column 7: one row below the core, the rest above
    assert img[0, 7] == pytest.approx(full) and (img[2:, 7] - before[2:, 7]).sum() == \
        pytest.approx(2000.0 - (full - before[0, 7]))
    # the mask: code 3 where charge arrived, the cores and the cosmic ray not
    gained = (img > before) & (before <= full)
    assert gained[23, 3] and art[23, 3] == 1
    cr = np.zeros(img.shape, bool)
    cr[23, 3] = True
    np.testing.assert_array_equal(art == 3, gained & ~cr)
    assert art[20, 3] == art[21, 3] == 0
    assert streaks["x"].tolist() == [3, 7, 9]
    assert np.all(streaks["y0"] <= [19, 0, 0]) and np.all(streaks["y1"] >= [22, 2, 39])
    assert streaks["electrons"][0] == pytest.approx(4500.0)


def test_bleeding_fields():
    kw = dict(shape=(96, 96), crowding="crowded", cosmic_ray_density=(1e-7, 1e-7),
              trail_probability=0.0, seed=5)
    plain = OpticalSkySimulator(**kw).sample_fields(5)
    bled = OpticalSkySimulator(**kw, bleed=True).sample_fields(5)
    n_streaks = 0
    for a, b in zip(plain, bled):
        assert b.meta["bleed"] is True and a.meta["bleed"] is False
        # the sources, the star that bled included, stay in the truth
        for k in ("x", "y", "flux", "snr"):
            np.testing.assert_array_equal(a.truth[k], b.truth[k])
        level = np.float32(b.meta["saturation"] + b.meta["bias"])
        diff = a.image != b.image
        code3 = b.artefact_mask == 3
        assert set(np.unique(b.artefact_mask)) <= {0, 3}
        # only bled pixels changed; they are full (saturated, at the level) but the last
        # one at each end of a streak
        assert not (diff & ~code3).any()
        assert np.all(b.image[code3 & b.saturated] == level)
        assert (code3 & ~b.saturated).sum() <= 2 * len(b.bleeds["x"])
        assert b.image.max() <= level and np.all(b.image[b.saturated] == level)
        t, s = b.truth, b.bleeds
        n_streaks += len(s["x"])
        for x, y0, y1 in zip(s["x"], s["y0"], s["y1"]):
            # vertical: one column, longer than the core, at a saturated star
            assert y1 > y0 and (b.artefact_mask[y0:y1 + 1, x] == 3).any()
            near = (np.abs(t["x"] - x) < 3) & (t["y"] > y0 - 1) & (t["y"] < y1 + 1)
            assert (near & t["saturated"]).any()
        # every column of the bleed codes is a listed streak
        assert set(np.flatnonzero(code3.any(axis=0))) == set(s["x"])
    assert n_streaks >= 2


def test_bleed_probability():
    sim = OpticalSkySimulator(shape=(32, 32), crowding="sparse", bleed=0.5, seed=1)
    got = [f.meta["bleed"] for f in sim.sample_fields(20)]
    assert 0 < sum(got) < 20


# -- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(psf_variation=-0.1), "psf_variation"),
    (dict(psf_variation=0.6), "psf_variation"),
    (dict(fwhm_range=(0.0, 2.0)), "fwhm_range"),
    (dict(fwhm_range=(-1.0, 2.0)), "fwhm_range"),
    (dict(fwhm_range=(3.0, 2.0)), "fwhm_range"),
    (dict(bleed=1.5), "bleed"),
    (dict(bleed=-0.1), "bleed"),
])
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        OpticalSkySimulator(**kw)


def test_small_fwhm_range_allowed():
    f = OpticalSkySimulator(shape=(32, 32), fwhm_range=(1.0, 1.0), seed=0).sample()
    assert f.meta["fwhm"] == pytest.approx(1.0)


# -- training ---------------------------------------------------------------------------------
def test_optical_pool_and_cli_pass_the_options(monkeypatch):
    from astro_asid.training import cli
    from astro_asid.training import optical as training

    pool = training.simulate_optical_pool(2, shape=(64, 64), seed=3, keep_fields=True,
                                          fwhm_range=(1.0, 1.5), psf_variation=0.2, bleed=1.0)
    for f in pool["fields"]:
        assert 1.0 <= f.meta["fwhm"] <= 1.5 and "fwhm" in f.truth and f.meta["bleed"]
    np.testing.assert_array_equal(pool["artefact"],
                                  np.stack([f.artefact_mask for f in pool["fields"]]))

    seen = {}
    monkeypatch.setattr(training, "train_optical_detector", lambda out, **kw: seen.update(kw))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["asid-optical", "--fwhm-range", "1.0", "3.0", "--psf-variation",
                              "0.1", "--bleed-probability", "0.5", "--remove-trails"])
    assert cli.run(args) == 0
    assert seen["fwhm_range"] == [1.0, 3.0] and seen["psf_variation"] == 0.1
    assert seen["bleed_probability"] == 0.5 and seen["remove_trails"] is True
    defaults = parser.parse_args(["asid-optical"])
    assert tuple(defaults.fwhm_range) == (1.8, 5.0)
    assert defaults.psf_variation == 0.0 and defaults.bleed_probability == 0.0
    assert defaults.remove_trails is False


def test_optical_pool_removes_trails_as_the_detector_does():
    from astro_asid.detection.optical import ASIDOpticalDetector
    from astro_asid.training import optical as training

    kw = dict(shape=(128, 128), seed=5, keep_fields=True, trail_probability=1.0)
    plain = training.simulate_optical_pool(4, **kw)
    removed = training.simulate_optical_pool(4, remove_trails=True, **kw)
    bright = 0
    for f, a, b in zip(plain["fields"], plain["snr"], removed["snr"]):
        band = f.artefact_mask == 2
        # the network's input is the run-time S/N image, trails folded into the background
        ref = ASIDOpticalDetector(box_size=32).snr_maps(f.image)[0]
        np.testing.assert_allclose(b.astype(np.float32), ref, atol=0.01, rtol=1e-3)
        if np.median(a[band]) > 3:  # a trail bright enough to be found and removed
            bright += 1
            assert np.median(b[band].astype(float)) < 1.0
    assert bright >= 1

"""Trail finding and removal in optical images (`astro_asid.instruments.optical_trails`)."""

import numpy as np
import pytest

from astro_asid.instruments.optical_trails import find_trails, remove_trails, trail_model


def _line(shape, angle, rho, sigma, amp):
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    d = (xx - (nx - 1) / 2) * np.cos(angle) + (yy - (ny - 1) / 2) * np.sin(angle) - rho
    return amp * np.exp(-0.5 * (d / sigma) ** 2)


def _stars(shape, n, rng, sigma=1.5):
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    img = np.zeros(shape)
    xs, ys = rng.uniform(5, nx - 5, n), rng.uniform(5, ny - 5, n)
    for x, y, f in zip(xs, ys, rng.uniform(20, 400, n)):
        img += f / (2 * np.pi * sigma**2) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2)
                                                   / sigma**2)
    return img, xs, ys


@pytest.mark.parametrize("angle_deg, rho, sigma, amp", [(30.0, 20.0, 1.5, 6.0),
                                                        (97.0, -60.0, 2.5, 3.0),
                                                        (0.0, 5.0, 1.0, 15.0)])
def test_find_trail_parameters(angle_deg, rho, sigma, amp):
    rng = np.random.default_rng(1)
    shape = (256, 300)
    stars, _, _ = _stars(shape, 40, rng)
    snr = rng.standard_normal(shape) + stars + _line(shape, np.radians(angle_deg), rho, sigma,
                                                     amp)
    tr = find_trails(snr)
    assert len(tr) == 1
    t = tr[0]
    assert abs(np.degrees(t["angle"]) - angle_deg) < 0.5
    assert abs(t["rho"] - rho) < 0.5
    assert t["sigma"] == pytest.approx(sigma, rel=0.15)
    assert t["amplitude"] == pytest.approx(amp, rel=0.2)
    # the line's ends lie on the image border
    for x, y in ((t["x0"], t["y0"]), (t["x1"], t["y1"])):
        assert min(abs(x + 0.5), abs(x - shape[1] + 0.5), abs(y + 0.5),
                   abs(y - shape[0] + 0.5)) < 1e-6


def test_no_trail_in_noise_and_stars():
    rng = np.random.default_rng(2)
    for k in range(5):
        stars, _, _ = _stars((256, 256), 150, rng)
        assert len(find_trails(rng.standard_normal((256, 256)) + stars)) == 0


def test_two_trails_and_a_mask():
    rng = np.random.default_rng(3)
    shape = (200, 200)
    snr = (rng.standard_normal(shape) + _line(shape, np.radians(20), 10.0, 1.5, 8.0)
           + _line(shape, np.radians(120), -30.0, 1.5, 5.0))
    bad = np.zeros(shape, bool)
    bad[:, :40] = True
    snr[bad] = np.nan
    tr = find_trails(snr, bad)
    assert sorted(np.round(np.degrees(tr["angle"])).astype(int)) == [20, 120]


def test_removal_keeps_stars_and_flattens_the_trail():
    rng = np.random.default_rng(4)
    shape = (256, 256)
    angle, rho, sigma, amp = np.radians(45.0), 0.0, 1.8, 10.0
    trail = _line(shape, angle, rho, sigma, amp)
    # a star on the trail (the centre of the image lies on the line)
    yy, xx = np.mgrid[:256, :256]
    star = 60.0 * np.exp(-0.5 * ((xx - 127.5) ** 2 + (yy - 127.5) ** 2) / 1.5**2)
    noise = rng.standard_normal(shape) * np.sqrt(1.0 + trail / 5.0)   # the trail's shot noise
    snr = noise + trail + star
    model, scale, tr = remove_trails(snr)
    assert len(tr) == 1
    clean = (snr - model) / scale
    _, band = trail_model(shape, tr)
    far = np.hypot(xx - 127.5, yy - 127.5) > 8
    resid = clean[band & far]
    assert abs(np.median(resid)) < 0.15
    assert 0.85 < 1.4826 * np.median(np.abs(resid - np.median(resid))) < 1.15
    assert scale[band].max() > 1.1 and np.all(scale[~band] == 1.0)
    # the star stands out as before (its peak is not taken for trail)
    assert clean[127:129, 127:129].max() > 0.8 * (snr - trail)[127:129, 127:129].max() / \
        scale[127:129, 127:129].max()


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        find_trails(np.zeros(100))
    with pytest.raises(ValueError, match="bad has shape"):
        find_trails(np.zeros((64, 64)), np.zeros((32, 32), bool))
    assert len(find_trails(np.zeros((16, 16)))) == 0
    assert len(find_trails(np.full((64, 64), np.nan))) == 0


def test_detector_drops_trail_detections():
    from astro_asid.detection.optical import ASIDOpticalDetector
    from astro_asid.simulate.optical import OpticalSkySimulator

    sim = OpticalSkySimulator(shape=(256, 256), crowding="sparse", trail_probability=1.0,
                              cosmic_ray_density=(1e-9, 1e-9), seed=11)
    on_trail = {True: 0, False: 0}
    found = {True: 0, False: 0}
    for _ in range(3):
        f = sim.sample()
        for remove in (True, False):
            det = ASIDOpticalDetector(min_score=0.5, remove_trails=remove)
            tab = det.detect_arrays(f.image[np.newaxis])[0]
            x = np.rint(np.asarray(tab["x_centroid"])).astype(int).clip(0, 255)
            y = np.rint(np.asarray(tab["y_centroid"])).astype(int).clip(0, 255)
            on_trail[remove] += int((f.artefact_mask[y, x] == 2).sum())
            bright = f.truth["snr"] > 20
            d = np.hypot(np.asarray(tab["x_centroid"])[:, None] - f.truth["x"][bright],
                         np.asarray(tab["y_centroid"])[:, None] - f.truth["y"][bright])
            found[remove] += int((d.min(axis=0) < 1.5).sum()) if len(tab) else 0
    assert on_trail[False] > 0
    assert on_trail[True] < on_trail[False]
    assert found[True] >= 0.97 * found[False]


def test_snr_maps_folds_the_trail_into_the_background():
    from astro_asid.core import SkyImage
    from astro_asid.detection.optical import ASIDOpticalDetector

    rng = np.random.default_rng(7)
    shape = (256, 256)
    stars, _, _ = _stars(shape, 60, rng)
    trail = _line(shape, np.radians(40), 15.0, 1.8, 10.0)
    data = 500.0 + 20.0 * (rng.standard_normal(shape) + stars + trail)
    band = trail > 5.0
    snr, bad, back, noise = ASIDOpticalDetector(remove_trails=True).snr_maps(data)
    kept, *_ = ASIDOpticalDetector(remove_trails=False).snr_maps(data)
    assert not bad.any() and snr.dtype == np.float32
    assert np.median(kept[band]) > 5.0          # the trail is in the plain S/N ...
    assert abs(np.median(snr[band])) < 0.5      # ... and gone once folded into the background
    assert np.median(back[band]) - np.median(back[~band]) > 5.0 * 20.0
    # block_snr of a whole image is snr_maps of its data
    got = ASIDOpticalDetector().block_snr(SkyImage(data[np.newaxis].astype(np.float32)),
                                          (0, shape[0], 0, shape[1]))
    np.testing.assert_allclose(got[0], snr)
    # the image's own maps are used as given
    own = ASIDOpticalDetector(remove_trails=False).snr_maps(data, background=back, noise=noise)
    np.testing.assert_allclose(own[0], snr, atol=1e-5)


def test_snr_maps_bad_inputs():
    from astro_asid.detection.optical import ASIDOpticalDetector

    det = ASIDOpticalDetector()
    with pytest.raises(ValueError, match="2-D"):
        det.snr_maps(np.zeros((2, 64, 64)))
    with pytest.raises(ValueError, match="both background and noise"):
        det.snr_maps(np.ones((64, 64)), background=np.zeros((64, 64)))


def test_snr_maps_returns_the_trails():
    from astro_asid.detection.optical import ASIDOpticalDetector

    rng = np.random.default_rng(8)
    shape = (256, 256)
    data = 100.0 + 10.0 * (rng.standard_normal(shape) + _line(shape, np.radians(70), -30.0,
                                                               1.5, 8.0))
    *maps, trails = ASIDOpticalDetector().snr_maps(data, return_trails=True)
    assert len(maps) == 4 and len(trails) == 1
    assert abs(np.degrees(trails["angle"][0]) - 70.0) < 1.0
    *_, none = ASIDOpticalDetector(remove_trails=False).snr_maps(data, return_trails=True)
    assert len(none) == 0 and set(trails.colnames) == set(none.colnames)


def test_trail_min_snr_drops_faint_candidates_on_the_band_only():
    from astro_asid.detection.decoders import Candidates
    from astro_asid.detection.optical import ASIDOpticalDetector

    rng = np.random.default_rng(9)
    shape = (128, 128)
    snr = rng.standard_normal(shape)
    angle, rho, sigma = np.radians(90.0), 0.0, 1.5      # the horizontal line y = 63.5
    trails = find_trails(snr, max_trails=0)
    trails.add_row(dict(angle=angle, rho=rho, sigma=sigma, amplitude=5.0, significance=20.0,
                        length=128.0, x0=-0.5, y0=63.5, x1=127.5, y1=63.5))
    # a faint peak and a bright star on the band, a faint peak off it
    for x, y, amp in ((30, 64, 1.0), (90, 63, 8.0), (60, 20, 1.0)):
        snr[y - 1:y + 2, x - 1:x + 2] = amp
    cand = Candidates(np.array([30.0, 90.0, 60.0]), np.array([64.0, 63.0, 20.0]), np.ones(3))
    det = ASIDOpticalDetector(trail_min_snr=5.0)
    kept = det._veto_on_trails(cand, snr, trails)
    np.testing.assert_array_equal(kept.x, [90.0, 60.0])
    # the same in a block that starts at (y, x) = (100, 200) of the image
    moved = Candidates(cand.x + 200, cand.y + 100, cand.raw_score)
    np.testing.assert_array_equal(det._veto_on_trails(moved, snr, trails, (100, 200)).x,
                                  [290.0, 260.0])
    assert len(ASIDOpticalDetector(trail_min_snr=None)._veto_on_trails(cand, snr, trails)) == 3
    assert len(det._veto_on_trails(cand, snr, trails[:0])) == 3


def test_trail_min_snr_in_detection():
    from astro_asid.detection.optical import ASIDOpticalDetector
    from astro_asid.simulate.optical import OpticalSkySimulator

    sim = OpticalSkySimulator(shape=(256, 256), crowding="moderate", trail_probability=1.0,
                              cosmic_ray_density=(1e-9, 1e-9), seed=12)
    fields = sim.sample_fields(2)
    n_on = {}
    for k in (None, 5.0):
        det = ASIDOpticalDetector(min_score=0.3, trail_min_snr=k)
        n_on[k] = 0
        for f in fields:
            snr, bad, _, _, trails = det.snr_maps(f.image, return_trails=True)
            assert len(trails) == 1
            tab = det.detect_snr(snr, bad, trails)
            band = trail_model(snr.shape, trails)[1]
            x = np.rint(np.asarray(tab["x_centroid"])).astype(int).clip(0, 255)
            y = np.rint(np.asarray(tab["y_centroid"])).astype(int).clip(0, 255)
            n_on[k] += int(band[y, x].sum())
            # detection block by block (detect_arrays) applies the same rule
            again = det.detect_arrays(f.image[np.newaxis])[0]
            np.testing.assert_allclose(np.sort(np.asarray(again["x_centroid"])),
                                       np.sort(np.asarray(tab["x_centroid"])))
    assert n_on[5.0] < n_on[None]

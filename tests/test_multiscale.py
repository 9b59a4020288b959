"""Multi-scale (binned-map) detection of asid-ctao: binning, merging, calibration fit."""

import warnings

import numpy as np
import pytest
from astropy.table import QTable, Table

from astro_asid.detection.multiscale import bin_counts, check_scales, merge_scales
from astro_asid.evaluate.ctao import match
from astro_asid.utils.exceptions import WeightsError


def _ctao_weights_or_skip():
    from astro_asid.instruments.fermi import _deep_weights_missing
    from astro_asid.plugins.manager import get_registry

    reg = get_registry().detectors
    if "asid-ctao" not in reg or _deep_weights_missing(reg.get("asid-ctao")):
        pytest.skip("asid-ctao weights not installed")


# -- binning -------------------------------------------------------------------------------------
def test_bin_counts_sums_blocks_and_pads_with_masked_pixels():
    cubes = np.ones((2, 3, 5, 6), np.float32)
    binned, mask = bin_counts(cubes, None, 2)
    assert binned.shape == mask.shape == (2, 3, 3, 3)
    # full blocks sum 4 counts; the padded last row has 2 valid pixels of 4,
    # scaled to the same expected counts as a full block
    np.testing.assert_allclose(binned, 4.0)
    assert not mask.any()
    assert bin_counts(cubes, None, 1)[0] is cubes


def test_bin_counts_masks_and_nan():
    cubes = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    cubes[0, 0, 0, 0] = np.nan                      # NaN is masked when no mask is given
    binned, mask = bin_counts(cubes, None, 2)
    np.testing.assert_allclose(binned[0, 0, 0, 0], (1 + 4 + 5) * 4 / 3)
    masks = np.zeros(cubes.shape, bool)
    masks[0, 0, 2:, 2:] = True                      # a whole block masked
    binned, mask = bin_counts(np.nan_to_num(cubes), masks, 2)
    assert mask[0, 0, 1, 1] and binned[0, 0, 1, 1] == 0
    assert mask.sum() == 1
    np.testing.assert_allclose(binned[0, 0, 0, 1], 2 + 3 + 6 + 7)


@pytest.mark.parametrize("bad", [(2, 4), (1, 2.5), ("a",), (), (0, 1)])
def test_check_scales_rejects(bad):
    with pytest.raises(ValueError, match="scales"):
        check_scales(bad)


def test_check_scales_sorts_and_dedupes():
    assert check_scales([4, 1, 2, 2]) == (1, 2, 4)


# -- merging -------------------------------------------------------------------------------------
def _tab(x, y, score, scale):
    return QTable({"x_centroid": np.asarray(x, float), "y_centroid": np.asarray(y, float),
                   "score": np.asarray(score, float),
                   "scale": np.full(len(x), scale, np.int16)})


def test_merge_scales_suppresses_only_across_binnings():
    fine = _tab([10, 13, 50], [10, 10, 50], [0.3, 0.2, 0.9], 1)
    coarse = _tab([11, 80], [11, 80], [0.95, 0.6], 2)
    out = merge_scales([fine, coarse], radius=5.0)
    # the coarse detection at (11, 11) beats both fine ones within 5 px; the two fine
    # ones (3 px apart) would both have been kept without it
    assert sorted(zip(out["x_centroid"].tolist(), out["scale"].tolist())) == \
        [(11.0, 2), (50.0, 1), (80.0, 2)]
    assert np.all(np.diff(out["score"]) <= 0)
    both = merge_scales([fine, coarse[1:]], radius=5.0)
    assert len(both) == 4


def test_merge_scales_near_tie_goes_to_the_finer_binning():
    fine = _tab([20.0], [20.0], [0.995], 1)
    coarse = _tab([21.5], [20.0], [0.999], 4)
    out = merge_scales([fine, coarse], radius=5.0)
    assert len(out) == 1 and out["scale"][0] == 1
    out = merge_scales([fine, coarse], radius=5.0, tie=0.0)
    assert out["scale"][0] == 4


def test_merge_scales_empty():
    empty = _tab([], [], [], 1)
    assert merge_scales([empty, _tab([], [], [], 2)], 5.0) is empty
    one = _tab([1.0], [2.0], [0.5], 2)
    assert merge_scales([empty, one], 5.0) is one


# -- matching (shared with benchmarks/ctao_gps.py) -------------------------------------------------
def test_match_by_score_nearest_and_margin_sources():
    truth = Table({"patch": [0, 0, 0], "x": [10.0, 14.0, 40.0], "y": [10.0, 10.0, 40.0],
                   "lat": [0.0, 0.0, 0.0], "inside": [True, True, False],
                   "radius": [0.1, 0.1, 0.1]})
    preds = Table({"patch": [0, 0, 0, 0], "x": [13.0, 11.0, 41.0, 100.0],
                   "y": [10.0, 10.0, 40.0, 100.0], "score": [0.9, 0.8, 0.7, 0.6]})
    order, tp, found_at = match(preds, truth, cdelt=0.02)
    # 13 -> nearest source 14; 11 -> 10; the margin-source detection is ignored
    assert order.tolist() == [0, 1, 3]
    assert tp.tolist() == [True, True, False]
    assert found_at.tolist() == [1, 0]


# -- the detector --------------------------------------------------------------------------------
def _wide_source_map(seed, n=256, total=1500.0, sigma_px=15.0):
    """Three CTAO-like bands: flat background and one wide Gaussian source (0.3 deg)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    prof = np.exp(-0.5 * ((xx - 128.3) ** 2 + (yy - 127.6) ** 2) / sigma_px ** 2)
    prof /= prof.sum()
    model = np.array([3.0, 0.8, 0.05])[:, None, None] + \
        total * np.array([0.5, 0.4, 0.1])[:, None, None] * prof
    return np.random.default_rng(seed).poisson(model).astype(np.float32)


def _best_near(tab, x=128.3, y=127.6, radius=8.0):
    near = np.hypot(np.asarray(tab["x_centroid"]) - x, np.asarray(tab["y_centroid"]) - y) < radius
    if not near.any():
        return 0.0, 0
    k = np.flatnonzero(near)[np.argmax(np.asarray(tab["score"])[near])]
    return float(tab["score"][k]), int(tab["scale"][k])


def test_ctao_detector_finds_a_wide_source_on_binned_maps():
    _ctao_weights_or_skip()
    from astro_asid.detection.deep import ASIDCTAODetector

    cubes = np.stack([_wide_source_map(seed) for seed in range(4)])
    multi = ASIDCTAODetector()
    assert multi.scales == (1, 2, 4)                 # the shipped card calibrates them
    assert multi.halo_pixels == 4 * multi.tile_size
    single = ASIDCTAODetector(scales=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got_multi = multi.detect_arrays(cubes)
        got_single = single.detect_arrays(cubes)
    for m, s in zip(got_multi, got_single):
        score_m, scale_m = _best_near(m)
        score_s, _ = _best_near(s)
        assert score_m > 0.7 and scale_m > 1
        assert score_s < 0.5
        assert m.meta["scales"] == [1, 2, 4] and set(s["scale"]) <= {1}


def test_ctao_detector_single_scale_is_the_plain_network():
    _ctao_weights_or_skip()
    from astro_asid.detection.deep import ASIDCTAODetector, ASIDUNetDetector

    cube = _wide_source_map(7, n=128)[None]
    det = ASIDCTAODetector(scales=[1])
    got = det.detect_arrays(cube)[0]
    plain = ASIDUNetDetector._detect_stack(det, cube, None)[0]
    np.testing.assert_array_equal(got["x_centroid"], plain["x_centroid"])
    np.testing.assert_array_equal(got["score"], plain["score"])
    assert np.all(got["scale"] == 1)


def test_ctao_detector_bad_options():
    _ctao_weights_or_skip()
    from astro_asid.detection.deep import ASIDCTAODetector

    with pytest.raises(ValueError, match="merge_radius"):
        ASIDCTAODetector(merge_radius=0)
    with pytest.raises(ValueError, match="scales"):
        ASIDCTAODetector(scales=(2, 4))
    with pytest.raises(ValueError, match="binned_min_score"):
        ASIDCTAODetector(binned_min_score=1.5)
    det = ASIDCTAODetector(scales=(1, 3))
    with pytest.raises(WeightsError, match=r"no score calibration for binning\(s\) \[3\]"):
        det.detect_arrays(_wide_source_map(0, n=96)[None])


def test_fit_scale_calibration_writes_the_card(tmp_path):
    """The fitting command on a copy of the shipped model (4 patches: a smoke test)."""
    _ctao_weights_or_skip()
    import shutil

    from astro_asid.detection.deep import ASIDCTAODetector
    from astro_asid.nn.io import read_card, shipped_model_path, weights_path
    from astro_asid.training import ctao_scales

    src = shipped_model_path("asid-ctao")
    card = read_card(src)
    shutil.copy(weights_path(src, card), tmp_path / card["weights_file"])
    shutil.copy(src.with_suffix(".json"), tmp_path / "asid-ctao.json")
    card_path = tmp_path / "asid-ctao.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry = ctao_scales.main(["--weights", str(card_path), "--n-patches", "4",
                                  "--seed", "5", "--scales", "1", "2"])
    written = read_card(card_path)["scale_calibration"]["asid-ctao"]
    assert written["scales"] == [1, 2] and set(written["calibration"]) == {"2"}
    assert written["fitted_on"]["n_patches"] == 4 and "--n-patches 4" in written["command"]
    assert entry["calibration"] == written["calibration"]
    scan = written["extended_search"]            # the TS scan is calibrated on the same patches
    assert scan["n_candidates"] >= scan["n_true"] >= 0 and len(scan["weights"]) == 3
    assert read_card(card_path)["sha256"] == card["sha256"]        # weights untouched
    assert ASIDCTAODetector(weights=card_path).scales == (1, 2)

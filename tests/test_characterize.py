"""Tests of astro_asid.characterize: cutouts, the ensemble model, calibration, find_sources."""

import json

import numpy as np
import pytest
import torch
from astropy import units as u

from astro_asid import find_sources
from astro_asid.characterize import (Characterizer, SigmaCalibration, extract_cutouts,
                                     resolve_characterizer, shipped_characterizer)
from astro_asid.characterize import metrics
from astro_asid.characterize.network import CutoutNet
from astro_asid.characterize.train import _augment, _binned_scales, _fit_temperature
from astro_asid.utils.exceptions import WeightsError


# -- cutouts -------------------------------------------------------------------------------
def test_cutout_centre_and_padding():
    data = np.zeros((2, 20, 30), np.float32)
    data[:, 5, 7] = [3, 4]
    cut, val, off = extract_cutouts(data, [7.3, 0.0], [4.8, 0.0], 5)
    assert cut.shape == (2, 2, 5, 5) and val.shape == (2, 5, 5)
    # the candidate's nearest pixel (7, 5) is the centre
    assert cut[0, :, 2, 2].tolist() == [3, 4]
    np.testing.assert_allclose(off[0], [0.3, -0.2], atol=1e-12)
    # at the corner, outside pixels are 0 and not valid
    assert val[1, 0, 0] == 0 and val[1, 2, 2] == 1 and val[1].sum() == 9


def test_cutout_mask_and_nan_read_as_invalid():
    data = np.ones((1, 9, 9), np.float32)
    data[0, 4, 5] = np.nan
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 4, 3] = True
    cut, val, _ = extract_cutouts(data, [4], [4], 3, mask=mask)
    assert cut[0, 0, 1].tolist() == [0, 1, 0]
    assert val[0, 1].tolist() == [0, 1, 0]


def test_cutout_binning_sums_blocks():
    data = np.ones((1, 40, 40), np.float32)
    cut, val, off = extract_cutouts(data, [20], [20], 4, binning=2)
    assert cut.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(cut[0, 0], 4.0)
    np.testing.assert_array_equal(val[0], 1.0)
    # an 8 px span centred on pixel 20 has its centre at 19.5 input pixels
    np.testing.assert_allclose(off[0], [0.25, 0.25])


def test_cutout_bad_shape():
    with pytest.raises(ValueError, match="n_bands, ny, nx"):
        extract_cutouts(np.zeros((5, 5)), [1], [1], 3)


# -- augmentation keeps pixels and targets consistent -------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_augment_moves_target_with_pixels(k, flip):
    size, h = 9, 4
    dx, dy = 2, -3
    x = torch.zeros(1, 1, size, size)
    x[0, 0, h + dy, h + dx] = 1.0
    scal = torch.tensor([[0.25, -0.125]])
    xa, sa, tx, ty = _augment(x, scal, torch.tensor([float(dx)]), torch.tensor([float(dy)]), k,
                              flip)
    iy, ix = np.unravel_index(int(torch.argmax(xa[0, 0])), (size, size))
    assert (ix - h, iy - h) == (int(tx[0]), int(ty[0]))
    # the sub-pixel offsets turn like the target
    norm = np.hypot(*sa[0].numpy())
    assert norm == pytest.approx(np.hypot(0.25, 0.125))


# -- calibration helpers ---------------------------------------------------------------------
def test_sigma_calibration_interpolates_and_clamps():
    cal = SigmaCalibration([0.0, 1.0], [2.0, 4.0])
    np.testing.assert_allclose(cal([-1, 0.5, 3]), [2.0, 3.0, 4.0])
    assert SigmaCalibration.from_dict(cal.as_dict())(0.25) == pytest.approx(2.5)
    np.testing.assert_array_equal(SigmaCalibration.identity()([1, 2]), [1, 1])


def test_binned_scales_recover_a_known_error_inflation():
    rng = np.random.default_rng(1)
    n = 20000
    bright = rng.uniform(-10, -8, n)
    true_factor = np.where(bright < -9, 2.0, 0.5)
    z = rng.normal(size=n) * true_factor
    c, s = _binned_scales(bright, lambda m: np.sqrt(np.mean(z[m] ** 2)), width=0.5)
    assert len(c) == 4
    np.testing.assert_allclose(s, [2.0, 2.0, 0.5, 0.5], rtol=0.06)


def test_bin_edges_merge_sparse_bins():
    from astro_asid.characterize.train import _bin_edges
    x = np.concatenate([np.full(500, 0.1), np.full(10, 0.6), np.full(10, 1.1)])
    edges = _bin_edges(x, width=0.25, min_count=100)
    counts = np.histogram(x, edges)[0]
    assert counts.sum() == len(x) and np.all(counts >= 100)


def test_coverage_scale_for_gaussian_and_inflated_errors():
    from astro_asid.characterize.train import _coverage_scale
    rng = np.random.default_rng(4)
    r2 = (rng.normal(size=(2, 40000)) ** 2).sum(axis=0)
    assert _coverage_scale(r2) == pytest.approx(1.0, abs=0.03)
    assert _coverage_scale(4 * r2) == pytest.approx(2.0, rel=0.03)


def test_temperature_fit_undoes_overconfidence():
    rng = np.random.default_rng(2)
    n = 20000
    true_logit = rng.normal(0, 2, n)
    label = (rng.uniform(size=n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    t = _fit_temperature(3.0 * true_logit, label, binary=True)
    assert t == pytest.approx(3.0, rel=0.08)


def test_metrics_on_gaussian_errors():
    rng = np.random.default_rng(3)
    ex, ey = rng.normal(size=(2, 50000)) * np.array([[1.0], [2.0]])
    c1, c95 = metrics.ellipse_coverage(ex, ey, np.ones(50000), np.full(50000, 2.0))
    assert c1 == pytest.approx(metrics.COVERAGE_1SIGMA, abs=0.01)
    assert c95 == pytest.approx(0.95, abs=0.005)
    per, bal = metrics.balanced_completeness([0, 0, 1, 2], [0, 1, 1, 2], 3)
    np.testing.assert_allclose(per, [0.5, 1, 1])
    assert bal == pytest.approx(2.5 / 3)
    # a perfectly calibrated binary classifier has a small ECE; a wrong one a large ECE
    p = rng.uniform(size=50000)
    y = (rng.uniform(size=50000) < p).astype(int)
    assert metrics.expected_calibration_error(p, y) < 0.02
    assert metrics.expected_calibration_error(np.clip(p * 2, 0, 1), y) > 0.1


# -- the model -----------------------------------------------------------------------------
def _tiny(n_members=2, heads=None):
    heads = heads or {"position": 4, "flux": 2, "source": 1, "cls": 3}
    torch.manual_seed(0)
    nets = [CutoutNet(6, 9, 2, heads, width=4, hidden=8) for _ in range(n_members)]
    card = {"name": "tiny", "instrument": "fermi-lat", "detector": "peaks", "n_bands": 5,
            "cutouts": [{"size": 9, "binning": 1}], "class_names": ["AGN", "PSR", "FAKE"],
            "flux": {"log10_mean": -9.0, "log10_std": 0.5, "unit": "cm-2 s-1",
                     "band": "1-100 GeV", "nominal_exposure": [1e10] * 5,
                     "exposure_unit": "cm2 s"},
            "calibration": {"temperature": {"source": 1.0, "cls": 1.0},
                            "position": {"centres": [-9.0], "scales": [1.0]},
                            "flux": {"centres": [-9.0], "scales": [1.0]}}}
    return Characterizer(nets, card)


def _sky(n_bands=5, shape=(32, 32), exposure=None):
    from astro_asid import SkyImage
    from astro_asid.evaluate.challenge import challenge_wcs
    rng = np.random.default_rng(0)
    data = rng.poisson(2.0, (n_bands,) + shape).astype(np.float32)
    wcs = challenge_wcs(0.0, 30.0, npix=shape[0])
    return SkyImage(data=data, wcs=wcs, instrument="fermi-lat", unit=u.ct, exposure=exposure)


def _cands(x, y):
    from astropy.table import QTable
    t = QTable()
    t["x_centroid"] = np.asarray(x, float)
    t["y_centroid"] = np.asarray(y, float)
    t["score"] = np.linspace(0.9, 0.5, len(x))
    return t


def test_characterize_fills_columns_in_input_order(tmp_path):
    char = _tiny()
    cands = _cands([3.2, 16.0, 30.7], [5.0, 16.4, 1.0])
    out = char.characterize(_sky(), cands)
    assert len(out) == 3
    np.testing.assert_array_equal(out["x_detector"], cands["x_centroid"])
    for col in ("x_err", "y_err"):
        assert np.all(np.asarray(out[col]) > 0)
    assert out["flux"].unit == u.Unit("cm-2 s-1") and np.all(out["flux_err"].value > 0)
    np.testing.assert_allclose(np.asarray(out["class_prob"]).sum(axis=1), 1.0, rtol=1e-6)
    assert np.all((out["source_prob"] >= 0) & (out["source_prob"] <= 1))
    # refined positions stay within the cutout
    assert np.all(np.abs(out["x_centroid"] - np.rint(cands["x_centroid"])) <= 4.5)
    # candidates are characterised independently of each other
    one = char.characterize(_sky(), cands[1:2])
    assert one["flux"][0].value == pytest.approx(out["flux"][1].value, rel=1e-5)


def test_exposure_converts_flux():
    char = _tiny()
    cands = _cands([10.0], [12.0])
    base = char.characterize(_sky(), cands)
    twice = char.characterize(_sky(exposure=np.full(5, 2e10)), cands)
    # twice the nominal exposure: the same counts mean half the flux
    assert twice["flux"][0].value == pytest.approx(base["flux"][0].value / 2, rel=1e-5)
    assert "flux_exposure" in base.meta and "flux_exposure" not in twice.meta


def test_save_load_round_trip_and_corruption(tmp_path):
    char = _tiny()
    card = char.save(tmp_path / "tiny")
    assert card["n_members"] == 2 and card["architecture"] == "cutout-ensemble"
    back = Characterizer.load(tmp_path / "tiny")
    cands = _cands([10.0, 20.0], [12.0, 5.0])
    a = char.predict(_sky().data, cands["x_centroid"], cands["y_centroid"])
    b = back.predict(_sky().data, cands["x_centroid"], cands["y_centroid"])
    # weights are stored as float16
    np.testing.assert_allclose(a["log10_flux"], b["log10_flux"], atol=2e-2)
    w = tmp_path / "tiny.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="corrupt"):
        Characterizer.load(tmp_path / "tiny")


def test_load_rejects_a_card_of_another_model(tmp_path):
    char = _tiny()
    char.save(tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card["architecture"] = "unet"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="characteriser"):
        Characterizer.load(tmp_path / "m")


def test_check_image_names_band_mismatch():
    char = _tiny()
    problems = char.check_image(_sky(n_bands=1))
    assert problems and "5 energy bands" in problems[0]


# -- find_sources integration --------------------------------------------------------------------
def test_resolve_options():
    assert resolve_characterizer(False, "fermi-lat") is None
    assert resolve_characterizer(None, "no-such-instrument") is None
    with pytest.raises(ValueError, match="ships no characteriser"):
        resolve_characterizer(True, None)
    with pytest.raises(TypeError, match="characterize must be"):
        resolve_characterizer(3.5, "fermi-lat")
    char = _tiny()
    assert resolve_characterizer(char, None) is char


def test_find_sources_with_explicit_characterizer_and_without():
    sky = _sky()
    sky.data[:, 16, 16] += 200
    cat = find_sources(sky, detector="peaks", characterize=_tiny())
    assert len(cat) >= 1
    assert not np.any(cat["flux"].mask) and not np.any(cat["source_prob"].mask)
    assert cat["flux"].unit == u.Unit("cm-2 s-1")
    assert cat.meta["characterizer"]["name"] == "tiny"
    plain = find_sources(sky, detector="peaks", characterize=False)
    assert np.all(plain["source_prob"].mask)


def test_explicit_characterizer_that_does_not_fit_raises():
    sky = _sky(n_bands=1)
    sky.data[:, 16, 16] += 200
    with pytest.raises(ValueError, match="energy bands"):
        find_sources(sky, detector="peaks", characterize=_tiny())


@pytest.mark.skipif(shipped_characterizer("fermi-lat") is None,
                    reason="no Fermi-LAT characteriser shipped")
def test_default_characterizer_on_a_simulated_patch():
    from astro_asid.simulate import FermiSkySimulator
    sim = FermiSkySimulator(seed=5)
    b = sim.sample_patches(1)
    cat = find_sources(b.counts[0], b.wcs(0), instrument="fermi-lat",
                       energy_edges=b.energy_edges)
    assert len(cat) > 0
    assert cat.meta["characterizer"]["name"] == "characterize-fermi-lat"
    assert not np.any(cat["sky_centroid_err"].mask)
    assert cat["flux"].unit == u.Unit("cm-2 s-1")
    assert set(np.unique(cat["class_label"])) <= {"AGN", "PSR", "FAKE"}
    # a summed 2-D image does not fit the 5-band characteriser: skipped, the reason in meta
    cat2 = find_sources(b.counts[0].sum(axis=0), b.wcs(0), instrument="fermi-lat")
    assert np.all(cat2["source_prob"].mask)
    assert "5 energy bands" in cat2.meta["characterizer_skipped"]


def test_cutout_input_modes():
    from astro_asid.characterize.cutouts import cutout_input
    rng = np.random.default_rng(5)
    cut = rng.poisson(100.0, (3, 2, 9, 9)).astype(np.float32)
    cut[:, :, 4, 4] += 300
    val = np.ones((3, 9, 9), np.float32)
    p, s = cutout_input(cut, val)
    assert p.shape == (3, 3, 9, 9) and s.shape == (3, 0)
    np.testing.assert_allclose(p[:, :2], np.log1p(cut), rtol=1e-6)
    p, s = cutout_input(cut, val, "significance")
    assert s.shape == (3, 2)
    # the source stands out by ~30 sigma, the background is ~0
    assert np.all(p[:, :2, 4, 4] > np.arcsinh(20)) and abs(np.median(p[:, :2])) < 0.2
    np.testing.assert_allclose(s, np.log1p(np.median(cut.reshape(3, 2, -1), axis=2)), rtol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        cutout_input(cut, val, "sqrt")


def test_to_gammapy_models_uses_extension_class_and_flux_band():
    pytest.importorskip("gammapy")
    from astropy.coordinates import SkyCoord
    from astropy.table import QTable
    from astro_asid.catalog import to_gammapy_models
    cat = QTable()
    cat["id"] = [1, 2]
    cat["sky_centroid"] = SkyCoord([0.0, 1.0], [0.0, 0.5], unit="deg", frame="galactic")
    cat["sky_centroid_err"] = np.full((2, 2), 0.01) * u.deg
    cat["flux"] = [1e-12, 2e-12] * u.Unit("cm-2 s-1")
    cat["extension"] = [0.02, 0.2] * u.deg
    cat["extension_prob"] = np.array([[0.9, 0.08, 0.02], [0.1, 0.8, 0.1]])
    cat.meta.update(energy_edges=[0.07, 0.788, 8.88, 100.0], energy_unit="TeV",
                    flux_energy_range=[1.0, 100.0, "TeV"], flux_spectral_index=2.2)
    models = to_gammapy_models(cat)
    assert models[0].spatial_model.tag[0] == "PointSpatialModel"
    assert models[1].spatial_model.tag[0] == "GaussianSpatialModel"
    # the amplitude reproduces the flux above 1 TeV, not over the whole cube
    f = models[0].spectral_model.integral(1 * u.TeV, 100 * u.TeV).to_value("cm-2 s-1")
    assert f == pytest.approx(1e-12, rel=1e-6)


def test_simulated_candidate_sets_in_parts(tmp_path):
    from astro_asid.characterize.train import _load_or_simulate
    d = _load_or_simulate(tmp_path, "train", 4, "fermi-lat", 7, lambda *a: None, workers=2)
    assert (tmp_path / "fermi-lat-train-4-7-w2.npz").exists()
    n = len(d["real"])
    assert n > 0 and d["cutouts"].shape == (n, 5, 17, 17)
    assert set(np.unique(d["patch"])) <= {0, 1, 2, 3}
    # labels are consistent: real candidates have a true position and flux, FAKEs none
    real = d["real"].astype(bool)
    assert np.all(np.isfinite(d["log10_flux"][real])) and np.all(np.isnan(d["tx"][~real]))
    assert np.all(d["cls"][~real] == 2)
    again = _load_or_simulate(tmp_path, "train", 4, "fermi-lat", 7, lambda *a: None, workers=2)
    np.testing.assert_array_equal(again["cutouts"], d["cutouts"])


@pytest.mark.skipif(shipped_characterizer("ctao") is None, reason="no CTAO characteriser shipped")
def test_ctao_fluxes_follow_the_dataset_exposure():
    """The CTAO card knows the simulation's exposure, so a dataset's exposure rescales fluxes."""
    pytest.importorskip("gammapy")
    from astro_asid.instruments.ctao import dataset_to_sky_image
    from astro_asid.simulate.ctao import (CTAO_LIVETIME_H, CTAOResponse, CTAOSkySimulator,
                                          to_gammapy_dataset)
    char = shipped_characterizer("ctao")
    nominal = np.asarray(char.card["flux"]["nominal_exposure"])
    np.testing.assert_allclose(nominal, CTAOResponse().band_centre_exposure(
        CTAO_LIVETIME_H * 3600.0), rtol=1e-9)
    b = CTAOSkySimulator(seed=7, npix=128).sample_patches(1, livetime_h=2 * CTAO_LIVETIME_H)
    sky = dataset_to_sky_image(to_gammapy_dataset(b, 0))
    # the simulated dataset's exposure, reduced as the adapter does, is twice the nominal one
    ratio = np.median(sky.exposure.reshape(3, -1), axis=1) / nominal
    np.testing.assert_allclose(ratio, 2.0, rtol=0.02)
    cands = _cands([40.0, 80.0], [60.0, 30.0])
    with_exp = char.characterize(sky, cands)
    without = char.characterize(sky.copy(exposure=None), cands)
    assert "flux_exposure" in without.meta and "flux_exposure" not in with_exp.meta
    scale = char.exposure_scale(sky, cands["x_centroid"], cands["y_centroid"])
    np.testing.assert_allclose(with_exp["flux"].value, without["flux"].value / scale, rtol=1e-6)
    np.testing.assert_allclose(scale, 2.0, rtol=0.02)


def test_reliability_and_precision_recall_tables():
    from astro_asid.characterize.metrics import precision_recall_table, reliability_table
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20000)
    # calibrated by construction: the event happens with probability p
    rows = reliability_table(p, rng.uniform(0, 1, p.size) < p, n_bins=10)
    assert len(rows) == 10 and sum(r["n"] for r in rows) == p.size
    for r in rows:
        assert r["lo"] <= r["mean_prob"] < r["hi"]
        assert abs(r["frac"] - r["mean_prob"]) < 4 * r["frac_err"] + 1e-9
    # an overconfident probability is caught
    rows = reliability_table(p, rng.uniform(0, 1, p.size) < 0.5 + 0.5 * (p - 0.5), n_bins=5)
    assert rows[-1]["frac"] < rows[-1]["mean_prob"] - 0.05
    # weights: balanced evaluation of a rare class
    lab = np.r_[np.ones(100, bool), np.zeros(900, bool)]
    rows = reliability_table(np.full(1000, 0.5), lab, n_bins=2,
                             weights=np.where(lab, 9.0, 1.0))
    assert rows[0]["frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        reliability_table(p, p[:-1] > 0.5)
    score = np.array([0.9, 0.8, 0.7, 0.2])
    real = np.array([True, False, True, True])
    pr = precision_recall_table(score, real, [0.0, 0.75, 0.95], n_real=4)
    assert [r["n"] for r in pr] == [4, 2, 0]
    assert pr[0]["precision"] == 0.75 and pr[0]["recall"] == 0.75
    assert pr[1]["precision"] == 0.5 and pr[1]["recall"] == 0.25
    assert np.isnan(pr[2]["precision"]) and pr[2]["recall"] == 0.0


def test_temperature_and_bias_fit_undo_balanced_training():
    from astro_asid.characterize.train import _fit_temperature_bias
    rng = np.random.default_rng(4)
    # true logits with a rare class 1; the "network" adds +1.5 to class 1 (as class
    # weights would) and is twice too confident
    true = rng.normal(0, 2, (20000, 2)) + np.array([1.0, -1.0])
    prob = np.exp(true) / np.exp(true).sum(1, keepdims=True)
    lab = (rng.uniform(size=len(prob)) < prob[:, 1]).astype(int)
    shown = 2.0 * (true + np.array([0.0, 1.5]))
    t, bias = _fit_temperature_bias(shown, lab)
    assert t == pytest.approx(2.0, rel=0.05)
    assert bias[0] == 0.0 and bias[1] - (-1.5) == pytest.approx(0.0, abs=0.1)


@pytest.mark.skipif(shipped_characterizer("ctao") is None, reason="no CTAO characteriser shipped")
def test_ctao_extension_prob_by_likelihood_when_the_background_is_known():
    pytest.importorskip("gammapy")
    from astro_asid.instruments.ctao import dataset_to_sky_image
    from astro_asid.simulate.ctao import CTAOSkySimulator, to_gammapy_dataset
    char = shipped_characterizer("ctao")
    assert char.use_extension_likelihood and "extension_likelihood" in char.card
    b = CTAOSkySimulator(seed=7, npix=128).sample_patches(1)
    sky = dataset_to_sky_image(to_gammapy_dataset(b, 0))
    assert sky.background is not None and sky.psf.get("sigma_pix") is not None
    cands = _cands([40.0, 80.0, 64.0], [60.0, 30.0, 64.0])
    lik = char.characterize(sky, cands)
    assert lik.meta["characterizer"]["extension_prob"].startswith("likelihood")
    p = np.asarray(lik["extension_prob"])
    assert p.shape == (3, 3) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(1), 1.0)
    # the same candidates without the background: the network's head
    net = char.characterize(sky.copy(background=None), cands)
    assert net.meta["characterizer"]["extension_prob"] == "network"
    assert not np.allclose(np.asarray(net["extension_prob"]), p)
    try:
        char.use_extension_likelihood = False
        off = char.characterize(sky, cands)
    finally:
        char.use_extension_likelihood = True
    np.testing.assert_allclose(np.asarray(off["extension_prob"]),
                               np.asarray(net["extension_prob"]))
    # everything else is unchanged by the choice
    np.testing.assert_allclose(np.asarray(off["flux"]), np.asarray(lik["flux"]))
    # a background or PSF that does not fit the data is named
    with pytest.raises(ValueError, match="background has shape"):
        char.characterize(sky.copy(background=sky.background[:2]), cands)
    with pytest.raises(ValueError, match="sigma_pix"):
        char.characterize(sky.copy(psf={"sigma_pix": [1.0]}), cands)


def test_simulated_candidates_report_each_patch():
    from astro_asid.characterize.data import simulate_candidates
    seen = []
    d = simulate_candidates(3, instrument="fermi-lat", seed=7, log=None, on_patch=seen.append)
    assert seen and sum(len(p["rows"]) for p in seen) == int((~d["injected"]).sum())
    for p in seen:
        r = p["rows"]
        assert p["counts"].shape == p["background"].shape == p["sources"].shape
        # the counts are a Poisson draw of background + sources: equal means
        mu = p["background"] + p["sources"]
        assert abs(p["counts"].mean() - mu.mean()) < 5 * np.sqrt(mu.mean() / mu.size)
        assert np.all(d["patch"][r] == d["patch"][r[0]]) and not d["injected"][r].any()
        # the detector's candidates, in order: the matched ones are the real ones
        np.testing.assert_array_equal(d["real"][r], p["match"] >= 0)
        np.testing.assert_allclose(d["scalars"][r, 0], p["x"] - np.rint(p["x"]))
        m = p["match"] >= 0
        np.testing.assert_allclose(d["tx"][r][m],
                                   np.asarray(p["truth"]["x"])[p["match"][m]] - np.rint(p["x"][m]))

"""Tests of astro_asid.fermi_catalog on the real 4FGL catalogs (skipped without fermipy)."""

import importlib.util
import json

import numpy as np
import pytest

from astro_asid.fermi_catalog import (BaselineClassifier, CatalogClassifier, FeatureConfig,
                                      candidate_mask, classification_metrics, ece_noise_floor,
                                      expected_calibration_error, extract_features, load_4fgl,
                                      task_labels)
from astro_asid.fermi_catalog import io as fio
from astro_asid.fermi_catalog.models import smote
from astro_asid.utils.exceptions import WeightsError


def _have_catalogs():
    try:
        return all((fio.catalog_dir() / name).exists() for name in fio.RELEASES.values())
    except FileNotFoundError:
        return False


needs_catalogs = pytest.mark.skipif(not _have_catalogs(),
                                    reason="4FGL catalogs need `pip install --no-deps fermipy`")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: faster than two on the small, shared test machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dr2():
    return load_4fgl("DR2")


@pytest.fixture(scope="module")
def dr4():
    return load_4fgl("DR4")


# ----------------------------------------------------------------------------- I/O
def test_missing_fermipy_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fermipy"):
        fio.catalog_dir()


def test_unknown_release():
    with pytest.raises(ValueError, match="unknown 4FGL release"):
        fio.catalog_path("DR9")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_4fgl(tmp_path / "nothere.fit")


@needs_catalogs
@pytest.mark.parametrize("release, n_bands, n_years", [("DR1", 7, 8), ("DR2", 7, 10),
                                                        ("DR3", 8, 12), ("DR4", 8, 14)])
def test_load_quirks(release, n_bands, n_years):
    t = load_4fgl(release)
    assert t.meta["release"] == release
    assert (t.meta["n_bands"], t.meta["n_years"]) == (n_bands, n_years)
    assert t["Flux_Band"].shape[1] == n_bands and t["Flux_History"].shape[1] == n_years
    assert len(t.meta["band_edges"]) == n_bands + 1
    # CLASS1: plain, stripped strings; unassociated sources are "".
    cls = np.asarray(t["CLASS1"])
    assert not hasattr(t["CLASS1"], "mask")
    assert np.all(cls == np.char.strip(cls))
    assert (cls == "").sum() > 1000
    # Variability: finite or NaN, never +-inf; masked errors are NaN.
    var = np.asarray(t["Variability_Index"])
    assert not np.isinf(var).any()
    unc = np.asarray(t["Unc_Flux_Band"])
    assert not hasattr(t["Unc_Flux_Band"], "mask") and np.isnan(unc[..., 0]).any()
    # Loading by path gives the same table.
    same = load_4fgl(fio.catalog_path(release))
    assert same.meta["release"] == release and len(same) == len(t)


# ------------------------------------------------------------------------ features
@needs_catalogs
def test_labels(dr2, dr4):
    y = task_labels(dr2, "agn-psr")
    cls = np.char.lower(np.asarray(dr2["CLASS1"]))
    assert set(cls[y == 1]) == {"psr"}
    assert "bcu" in set(cls[y == 0]) and "" not in set(cls[y >= 0])
    assert np.all(candidate_mask(dr2, "agn-psr") == (cls == ""))
    assert np.all(candidate_mask(dr2, "bll-fsrq") == (cls == "bcu"))
    with pytest.raises(ValueError, match="MSP"):
        task_labels(dr2, "msp-young")
    y4 = task_labels(dr4, "msp-young")
    assert set(np.char.lower(np.asarray(dr4["CLASS1"]))[y4 == 1]) == {"msp"}
    with pytest.raises(ValueError, match="unknown task"):
        task_labels(dr2, "agn-star")


@needs_catalogs
def test_features(dr2, dr4):
    cfg = FeatureConfig(extras=("glat", "curvature", "variability", "index")).resolve(dr2)
    f = extract_features(dr2, cfg)
    assert f["spectrum"].shape == (len(dr2), 7, 4)
    assert f["history"].shape == (len(dr2), 10, 4)
    assert f["extras"].shape == (len(dr2), 5)
    assert np.isfinite(f["spectrum"]).all() and np.isfinite(f["history"]).all()
    # The normalised spectrum: fractions of the summed flux, so <= 1 (log <= 0).
    assert f["spectrum"][..., 0].max() <= 1e-6
    # Upper-limit flag = masked lower error.
    assert np.array_equal(f["spectrum"][..., 2] == 1, np.isnan(np.asarray(dr2["Unc_Flux_Band"])[..., 0]))
    # DR4 read with a DR2-shaped model: bands 7 and 8 merged, first 10 years.
    f4 = extract_features(dr4, cfg)
    assert f4["spectrum"].shape == (len(dr4), 7, 4) and f4["history"].shape == (len(dr4), 10, 4)
    flux = np.asarray(dr4["Flux_Band"])
    total = flux.clip(0).sum(axis=1)
    expect = np.log10(np.clip((flux[:, 6] + flux[:, 7]) / total, 1e-4, None))
    assert np.allclose(f4["spectrum"][:, 6, 0], expect, atol=1e-5)
    with pytest.raises(ValueError, match="only 10"):
        extract_features(dr2, FeatureConfig(n_bands=7, n_years=14))
    with pytest.raises(ValueError, match="8 energy bands"):
        extract_features(dr2, FeatureConfig(n_bands=8, n_years=10))
    with pytest.raises(ValueError, match="LP_SigCurv"):
        extract_features(dr2[["Flux_Band", "Unc_Flux_Band", "Flux_History", "Unc_Flux_History"]],
                         FeatureConfig(extras=("curvature",)))
    with pytest.raises(ValueError, match="unknown extra"):
        FeatureConfig(extras=("redshift",))


@needs_catalogs
def test_catalog_extras(dr2, dr4):
    """The spectral-shape extras: plain values, logs, and DR3-only columns."""
    names = ("pl_index", "frac_variability", "pivot", "epeak", "plec")
    f = extract_features(dr4, FeatureConfig(extras=names).resolve(dr4))["extras"]
    assert f.shape == (len(dr4), 6)

    def col(name):
        c = dr4[name]
        return np.asarray(c.filled(np.nan) if hasattr(c, "filled") else c, float)

    assert np.allclose(f[:, 0], col("PL_Index"), equal_nan=True)
    assert np.allclose(f[:, 2], np.log10(np.asarray(dr4["Pivot_Energy"], float)), atol=1e-5)
    epeak = col("LP_EPeak")
    # No nuFnu peak (NaN in the catalog) stays NaN for the scaler to impute, not -inf.
    assert np.array_equal(np.isnan(f[:, 3]), np.isnan(epeak))
    assert np.allclose(f[:, 3], np.log10(epeak), equal_nan=True, atol=1e-5)
    assert np.allclose(f[:, 4:], np.stack([col("PLEC_IndexS"), col("PLEC_ExpfactorS")], 1),
                       equal_nan=True)
    # DR1/DR2 have no LP_EPeak: the error names the column.
    with pytest.raises(ValueError, match="LP_EPeak"):
        extract_features(dr2, FeatureConfig(extras=("epeak",)))


# --------------------------------------------------------------- metrics and SMOTE
def test_ece():
    rng = np.random.default_rng(1)
    p1 = rng.random(200000)
    y = (rng.random(p1.size) < p1).astype(int)  # calibrated by construction
    prob = np.stack([1 - p1, p1], axis=1)
    assert expected_calibration_error(y, prob) < 0.01
    # Always 90 % confident but right half the time: ECE = 0.4.
    prob = np.tile([0.1, 0.9], (1000, 1))
    y = np.r_[np.ones(500, int), np.zeros(500, int)]
    assert expected_calibration_error(y, prob) == pytest.approx(0.4)
    m = classification_metrics(y, prob)
    assert m["accuracy"] == 0.5 and m["auc"] == 0.5


def test_smote():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (200, 3)), rng.normal(5, 0.1, (20, 3))].astype(np.float32)
    y = np.r_[np.zeros(200, int), np.ones(20, int)]
    xs, ys = smote(x, y, rng)
    assert np.bincount(ys).tolist() == [200, 200]
    new = xs[len(x):]
    # Synthetic rows lie between minority rows: inside their bounding box.
    assert np.all(new >= x[20 * -1:].min(0) - 1e-6) and np.all(new <= x[-20:].max(0) + 1e-6)


# -------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def small_fit(dr2):
    y = task_labels(dr2, "agn-psr")
    rng = np.random.default_rng(0)
    rows = np.r_[rng.choice(np.flatnonzero(y == 0), 300, replace=False), np.flatnonzero(y == 1)]
    clf = CatalogClassifier(n_members=3, epochs=6, batch_size=64, extras=("curvature",), seed=3)
    clf.fit(dr2[rows], "agn-psr")
    return clf, rows, y


@needs_catalogs
def test_fit_predict_save_load(dr2, small_fit, tmp_path):
    clf, rows, y = small_fit
    assert clf.networks[0].logit_bias[1] < 0 < clf.networks[0].logit_bias[0]  # PSR up-weighted
    sel = dr2[rows[::-1]]
    out = clf.predict(sel)
    assert out.colnames == ["Source_Name", "class_label", "class_prob", "class_prob_err"]
    assert list(out["Source_Name"]) == list(sel["Source_Name"])  # input order
    assert out.meta["class_names"] == ["AGN", "PSR"] and out["class_prob"].shape == (len(sel), 2)
    assert np.allclose(out["class_prob"].sum(axis=1), 1, atol=1e-5)
    assert (out["class_prob_err"] > 0).any() and (out["class_prob_err"] >= 0).all()
    assert np.all(out["class_label"] == np.array(["AGN", "PSR"])[out["class_prob"].argmax(1)])
    # It learnt something: training accuracy well above the majority fraction.
    truth = y[rows[::-1]]
    assert (out["class_prob"].argmax(1) == truth).mean() > 0.85
    card = clf.save(tmp_path / "m", name="test")
    back = CatalogClassifier.load(tmp_path / "m")
    assert back.card["sha256"] == card["sha256"]
    assert np.allclose(back.predict(sel)["class_prob"], out["class_prob"], atol=1e-6)
    # Corrupt weights are refused.
    wfile = tmp_path / "m.safetensors"
    data = bytearray(wfile.read_bytes())
    data[-1] ^= 0xFF
    wfile.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        CatalogClassifier.load(tmp_path / "m")
    # Zero rows give a zero-row table.
    assert len(clf.predict(dr2[:0])) == 0


@needs_catalogs
def test_mc_dropout_and_rnn(dr2):
    y = task_labels(dr2, "bll-fsrq")
    rows = np.flatnonzero(y >= 0)[:120]
    for kwargs in (dict(uncertainty="mc-dropout", mc_samples=10, dropout=0.2),
                   dict(arch="gru", n_members=2, net_kwargs=dict(hidden=4, n_layers=1))):
        clf = CatalogClassifier(epochs=1, seed=1, batch_size=64, **kwargs).fit(dr2[rows],
                                                                               "bll-fsrq")
        a = clf.predict(dr2[rows[:50]])
        b = clf.predict(dr2[rows[:50]])
        assert np.array_equal(a["class_prob"], b["class_prob"])  # reproducible
        assert (a["class_prob_err"] > 0).all()


@needs_catalogs
def test_mixed_ensemble(dr2, tmp_path):
    """dnn+gru: both kinds trained, each weighted half; the save/load round trip is exact."""
    y = task_labels(dr2, "bll-fsrq")
    rows = np.flatnonzero(y >= 0)[:120]
    clf = CatalogClassifier(arch="dnn+gru", n_members=2, rnn_members=1, epochs=1, seed=1,
                            rnn_lr=1e-2).fit(dr2[rows], "bll-fsrq")
    assert len(clf.networks) == 2
    assert type(clf.networks[0]).__name__ == "TwoBranchDNN"
    assert type(clf.networks[1]).__name__ == "TwoBranchRNN"
    prob, err = clf.predict_proba(dr2[rows[:30]])
    from astro_asid.fermi_catalog.models import predict_proba_samples

    samples = predict_proba_samples(clf.networks, clf._scale(clf._raw_arrays(dr2[rows[:30]])))
    assert samples.shape[0] == 3  # two dense members, one recurrent
    expected = 0.5 * samples[:2].mean(0) + 0.5 * samples[2]
    np.testing.assert_allclose(prob, expected, rtol=1e-6)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-6)
    assert (err > 0).all()
    clf.save(tmp_path / "mixed")
    back = CatalogClassifier.load(tmp_path / "mixed")
    assert (back.arch, back.n_members, back.rnn_members, back.rnn_lr) == ("dnn+gru", 2, 1, 1e-2)
    p2, e2 = back.predict_proba(dr2[rows[:30]])
    np.testing.assert_array_equal(p2, prob)
    np.testing.assert_array_equal(e2, err)
    # the temperature fit weights the two kinds the same way
    cal = CatalogClassifier(arch="dnn+lstm", n_members=2, rnn_members=1, epochs=1, seed=1,
                            calibration="temperature").fit(dr2[rows], "bll-fsrq")
    t = float(cal.networks[0].temperature)
    assert np.isfinite(t) and t > 0
    assert all(float(net.temperature) == t for net in cal.networks)
    assert type(cal.networks[1]).__name__ == "TwoBranchRNN"


@needs_catalogs
def test_fit_is_reproducible(dr2):
    import torch

    y = task_labels(dr2, "agn-psr")
    rows = np.r_[np.flatnonzero(y == 0)[:100], np.flatnonzero(y == 1)[:40]]
    state = torch.get_rng_state()
    fits = [CatalogClassifier(n_members=2, epochs=2, dropout=0.2, seed=7).fit(dr2[rows], "agn-psr")
            for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    for (k, a), b in zip(fits[0].networks[0].state_dict().items(),
                         fits[1].networks[0].state_dict().values()):
        assert torch.equal(a, b), k
    other = CatalogClassifier(n_members=2, epochs=2, dropout=0.2, seed=8).fit(dr2[rows], "agn-psr")
    assert not torch.equal(other.networks[0].out.weight, fits[0].networks[0].out.weight)


def test_bad_options():
    with pytest.raises(ValueError, match="arch"):
        CatalogClassifier(arch="cnn")
    with pytest.raises(ValueError, match="n_members"):
        CatalogClassifier(n_members=1)
    with pytest.raises(ValueError, match="imbalance"):
        CatalogClassifier(imbalance="undersample")
    with pytest.raises(RuntimeError, match="not trained"):
        CatalogClassifier().predict_proba(None)
    with pytest.raises(ValueError, match="no shipped model"):
        CatalogClassifier.pretrained("agn-star")
    # layer sizes of the dense network given to the recurrent one (and a typo)
    with pytest.raises(ValueError, match=r"\['branch'\] are not options of the 'gru'"):
        CatalogClassifier(arch="gru", net_kwargs={"branch": (16, 8), "head": (8,)})
    with pytest.raises(ValueError, match=r"\['hiden'\].*'dnn'"):
        CatalogClassifier(net_kwargs={"hiden": 8})
    with pytest.raises(ValueError, match="mixed arch"):
        CatalogClassifier(arch="dnn+gru", uncertainty="mc-dropout")
    with pytest.raises(ValueError, match="rnn_members"):
        CatalogClassifier(arch="dnn+gru", rnn_members=0)


@needs_catalogs
def test_baseline(dr2):
    y = task_labels(dr2, "bll-fsrq")
    rows = np.flatnonzero(y >= 0)
    rf = BaselineClassifier("rf", seed=0, n_estimators=100).fit(dr2[rows[::2]], "bll-fsrq")
    prob = rf.predict_proba(dr2[rows[1::2]])
    assert classification_metrics(y[rows[1::2]], prob)["auc"] > 0.85


# --------------------------------------------------------------- shipped models
@needs_catalogs
@pytest.mark.parametrize("name", ["agn-psr", "msp-young", "bll-fsrq"])
def test_pretrained_matches_card(name):
    """The shipped weights reproduce the held-out metrics written in their card."""
    from astro_asid.fermi_catalog.train import RECIPES, heldout_split

    clf = CatalogClassifier.pretrained(name)
    card = clf.card
    assert card["training_command"].startswith("python -m astro_asid.fermi_catalog.train")
    assert clf.task == name
    table = load_4fgl(RECIPES[name]["release"])
    labels = task_labels(table, name)
    seed = int(card["training_command"].split("--seed")[1])
    _, test = heldout_split(labels, seed)
    assert len(test) == card["data"]["n_test"]
    prob, _ = clf.predict_proba(table[test])
    m = classification_metrics(labels[test], prob)
    for key in ("accuracy", "auc", "ece"):
        assert m[key] == pytest.approx(card["metrics_heldout"][key], abs=1e-6)
    # ECE <= 0.03, or for the ~100 test pulsars of msp-young, not significantly
    # above the ECE a perfectly calibrated model shows on so few sources.
    assert m["ece"] <= max(0.03, 1.5 * ece_noise_floor(prob))
    size = (fio.Path(clf.card["weights_file"]).name)
    from astro_asid.fermi_catalog.classifier import MODELS_DIR
    assert (MODELS_DIR / size).stat().st_size < 1_000_000
    assert json.loads((MODELS_DIR / f"{name}.json").read_text())["sha256"] == card["sha256"]


@needs_catalogs
def test_pretrained_on_other_release(dr4):
    """The DR2 AGN/PSR model applies to DR4 (8 -> 7 bands, first 10 years)."""
    clf = CatalogClassifier.pretrained("agn-psr")
    y = task_labels(dr4, "agn-psr")
    rows = np.flatnonzero(y >= 0)
    prob, _ = clf.predict_proba(dr4[rows])
    assert classification_metrics(y[rows], prob)["auc"] > 0.9


# ------------------------------------------------------------------------- CLI
@needs_catalogs
def test_cli(tmp_path, capsys):
    from astropy.table import QTable

    from astro_asid.fermi_catalog.cli import main

    out = tmp_path / "cand.ecsv"
    assert main(["--release", "DR2", "--task", "bll-fsrq", "-o", str(out),
                 "--plots", str(tmp_path / "plots")]) == 0
    t = QTable.read(out)
    dr2 = load_4fgl("DR2")
    assert len(t) == candidate_mask(dr2, "bll-fsrq").sum()
    assert set(np.char.lower(np.asarray(t["CLASS1"]).astype(str))) == {"bcu"}
    assert t["class_prob"].shape == (len(t), 2) and t.meta["class_names"] == ["BLL", "FSRQ"]
    assert len(list((tmp_path / "plots").glob("*.png"))) == 3
    assert "BLL" in capsys.readouterr().out
    # A model for another task is refused.
    assert main(["--release", "DR2", "--task", "agn-psr", "--model",
                 str(fio.Path(__file__).resolve().parent.parent / "astro_asid" / "fermi_catalog"
                     / "models" / "bll-fsrq")]) == 2
    # msp-young was trained on 8 bands: DR2 has 7.
    assert main(["--release", "DR2", "--task", "msp-young"]) == 2
    # On DR4 it classifies the pulsar-like unassociated sources only.
    out = tmp_path / "msp.ecsv"
    assert main(["--release", "DR4", "--task", "msp-young", "-o", str(out)]) == 0
    t = QTable.read(out)
    dr4 = load_4fgl("DR4")
    assert 0 < len(t) < candidate_mask(dr4, "msp-young").sum()
    assert (t["psr_prob"] >= 0.5).all() and set(t["class_label"]) <= {"YNG", "MSP"}

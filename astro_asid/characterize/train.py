"""Training, calibrating and exporting a characteriser (one command).

Recipe
------
1. `~astro_asid.characterize.data.simulate_candidates`: the instrument's
   detector is run on simulated patches (random exposure and background
   scales), and every candidate is labelled (real / FAKE, true position,
   flux, class, extension). Three independent sets: training, calibration,
   test.
2. A deep ensemble of ``members`` `~astro_asid.characterize.network.CutoutNet`
   networks, each from its own random initialisation and batch order, is
   trained on the training set with random 90-degree rotations and flips:
   Gaussian negative log-likelihood for the position and the log10 flux (and
   the extension; real sources only), binary cross-entropy for source/FAKE
   (natural class frequencies, so ``source_prob`` is a probability on the
   detector's own output) and class-weighted cross-entropy for the classes
   (balanced, as in seed 002).
3. Calibration on the calibration set: temperatures of the classification
   heads (negative log-likelihood), and per 0.25 dex bin of predicted
   brightness (merged up to >= 150 sources) a factor on the predicted
   standard deviations of position (2-D coverage of the 1-sigma and 95 %
   ellipses, see `_coverage_scale`) and flux (unit root-mean-square z-score).
4. The test set gives the card's metrics (`evaluate`).

Command::

    asid train characterizer --instrument fermi-lat --n-patches 12000 --members 5 --out DIR
"""

import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from astro_asid import __version__
from astro_asid.characterize import metrics
from astro_asid.characterize.data import INSTRUMENTS, simulate_candidates
from astro_asid.characterize.model import (CHARACTERIZER_NAMES, Characterizer,
                                           _class_stack_features, _logit)
from astro_asid.characterize.network import CutoutNet

__all__ = ["inputs_from_arrays", "train_members", "fit_calibration", "evaluate",
           "train_characterizer", "recalibrate_characterizer", "main"]


def inputs_from_arrays(d, n_scales, mode="log1p"):
    """Network input ``(n, n_scales * (n_bands + 1), s, s)`` and scalars (the
    sub-pixel offset, then `~astro_asid.characterize.cutouts.cutout_input`'s)
    from stored arrays."""
    from astro_asid.characterize.cutouts import cutout_input
    cut = d["cutouts"]
    nb = cut.shape[1] // n_scales
    planes, scal = [], [d["scalars"].astype(np.float32)]
    for s in range(n_scales):
        p, e = cutout_input(cut[:, s * nb:(s + 1) * nb], d["valid"][:, s] / 255.0, mode)
        planes.append(p)
        scal.append(e)
    return np.concatenate(planes, axis=1), np.concatenate(scal, axis=1)


def _injected(d):
    """Examples that are not detector candidates (see ``simulate_candidates(inject_snr=)``)."""
    return d["injected"].astype(bool) if "injected" in d else np.zeros(len(d["real"]), bool)


def _augment(x, scal, tx, ty, k, flip):
    """Rotate by k * 90 deg (counter-clockwise in array display) and flip in x.

    The offsets (the first two scalars and the targets) stay measured from the
    candidate's pixel. For an odd cutout span that pixel is the centre and the
    turns are exact. For the even spans of CTAO (32 x 2 and 32 x 4 pixels) it
    lies half a pixel off the centre, so six of the eight turns move the image
    by one input pixel against its targets. An exact variant (offsets from the
    cutout's centre) was tried on 2026-11-24 and trained worse: the turns then
    spread the targets' prior over the four half-pixel positions around the
    centre, the faint sources' positions shrank towards it, and the median
    position error on the test set rose from 0.51 to 0.69 px. Training with
    only the two turns that keep the candidate's pixel in place (none and the
    transpose) was no better either. The one-pixel noise of the turns is the
    smaller harm.
    """
    # only the first two scalars (the sub-pixel offset) are a vector
    if flip:
        x = torch.flip(x, (3,))
        scal = torch.cat([-scal[:, :1], scal[:, 1:]], dim=1)
        tx = -tx
    for _ in range(k):
        x = torch.rot90(x, 1, dims=(2, 3))
        # (dx, dy) -> (dy, -dx): see astro_asid.training.fermi.PatchPool._transform
        scal = torch.cat([scal[:, 1:2], -scal[:, :1], scal[:, 2:]], dim=1)
        tx, ty = ty, -tx
    return x, scal, tx, ty


def _gauss_nll(mu, logvar, target):
    logvar = logvar.clamp(-12, 8)
    return 0.5 * (logvar + (target - mu) ** 2 * torch.exp(-logvar))


def _loss(out, b, class_weights, ext_weights=None):
    real = b["real"]
    parts = {}
    nreal = real.sum().clamp(min=1.0)
    if "position" in out:
        p = out["position"]
        nll = _gauss_nll(p[:, 0], p[:, 2], b["tx"]) + _gauss_nll(p[:, 1], p[:, 3], b["ty"])
        parts["pos"] = (nll * real).sum() / nreal
    if "flux" in out:
        f = out["flux"]
        parts["flux"] = (_gauss_nll(f[:, 0], f[:, 1], b["flux"]) * real).sum() / nreal
    if "source" in out:
        w = b["detected"]
        bce = F.binary_cross_entropy_with_logits(out["source"][:, 0], real, reduction="none")
        parts["src"] = (bce * w).sum() / w.sum().clamp(min=1.0)
    if "cls" in out:
        parts["cls"] = F.cross_entropy(out["cls"], b["cls"], weight=class_weights)
    if "extension" in out:
        e = out["extension"]
        parts["ext"] = (_gauss_nll(e[:, 0], e[:, 1], b["ext"]) * real).sum() / nreal
    if "ext_cls" in out:
        w = real / nreal
        ce = F.cross_entropy(out["ext_cls"], b["ext_cls"], weight=ext_weights, reduction="none")
        parts["ext_cls"] = (ce * w).sum()
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def _tensors(d, spec, flux_norm):
    n_scales = len(spec["cutouts"])
    real = d["real"].astype(np.float32)
    x, scal = inputs_from_arrays(d, n_scales, spec.get("input", "log1p"))
    t = {
        "x": torch.from_numpy(x),
        "scal": torch.from_numpy(scal),
        "real": torch.from_numpy(real),
        "detected": torch.from_numpy(~_injected(d)).float(),
        "tx": torch.from_numpy(np.nan_to_num(d["tx"]).astype(np.float32)),
        "ty": torch.from_numpy(np.nan_to_num(d["ty"]).astype(np.float32)),
        "flux": torch.from_numpy(np.nan_to_num((d["log10_flux"] - flux_norm[0])
                                               / flux_norm[1]).astype(np.float32)),
        "cls": torch.from_numpy(d["cls"].astype(np.int64)),
    }
    if "ext_class_names" in spec:
        ext = np.nan_to_num(d["extension"])
        t["ext"] = torch.from_numpy(ext.astype(np.float32))
        t["ext_cls"] = torch.from_numpy(np.digitize(ext, spec["ext_edges_deg"]).astype(np.int64))
    return t


def heads_for(spec):
    """Head name -> size for an instrument's characteriser."""
    heads = {"position": 4, "flux": 2, "source": 1}
    if len(spec["class_names"]) > 2:
        heads["cls"] = len(spec["class_names"])
    if "ext_class_names" in spec:
        heads["extension"] = 2
        heads["ext_cls"] = len(spec["ext_class_names"])
    return heads


def _balanced_weights(labels, k, mask=None):
    labels = labels if mask is None else labels[mask]
    counts = torch.bincount(labels, minlength=k).float().clamp(min=1.0)
    return counts.sum() / (k * counts)


def train_members(train, spec, members=5, epochs=8, batch_size=256, lr=2e-3, seed=0,
                  width=32, hidden=128, log=print):
    """Train the ensemble on the training tensors (see `_tensors`)."""
    heads = heads_for(spec)
    n = len(train["x"])
    torch.set_flush_denormal(True)  # denormal activations make CPU training crawl
    cw = _balanced_weights(train["cls"], len(spec["class_names"])) if "cls" in heads else None
    # extension classes: square root of the balanced weights, so that the rare
    # C2 sources (about 2% of those detected) do not swamp the point-like majority
    ew = (_balanced_weights(train["ext_cls"], len(spec["ext_class_names"]),
                            train["real"] > 0).sqrt() if "ext_cls" in heads else None)
    nets = []
    for m in range(members):
        torch.manual_seed(seed * 1000 + m)
        rng = np.random.default_rng(seed * 1000 + m)
        net = CutoutNet(train["x"].shape[1], train["x"].shape[2], train["scal"].shape[1], heads,
                        width=width, hidden=hidden, norm=spec.get("norm", False))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * (n // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                    pct_start=0.1)
        t0 = time.time()
        net.train()
        for ep in range(epochs):
            perm = torch.from_numpy(rng.permutation(n))
            acc = {}
            for i in range(0, n - batch_size + 1, batch_size):
                idx = perm[i:i + batch_size]
                b = {k: v[idx] for k, v in train.items()}
                b["x"], b["scal"], b["tx"], b["ty"] = _augment(
                    b["x"], b["scal"], b["tx"], b["ty"], int(rng.integers(4)),
                    bool(rng.integers(2)))
                out = net(b["x"], b["scal"])
                loss, parts = _loss(out, b, cw, ew)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                sched.step()
                for k, v in parts.items():
                    acc[k] = acc.get(k, 0.0) + v
            nb = max(n // batch_size, 1)
            if log:
                log(f"  member {m + 1}/{members} epoch {ep + 1}/{epochs}: "
                    + " ".join(f"{k} {v / nb:.3f}" for k, v in acc.items())
                    + f" ({time.time() - t0:.0f} s)")
        nets.append(net.eval())
    return nets


def _fit_temperature(logits, labels, weights=None, binary=False):
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 121))
    best, best_t = np.inf, 1.0
    w = np.ones(len(labels)) if weights is None else weights
    for t in grid:
        z = logits / t
        if binary:
            nll = np.logaddexp(0, z) - labels * z
        else:
            z = z - z.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1))
            nll = lse - z[np.arange(len(z)), labels]
        v = np.average(nll, weights=w)
        if v < best:
            best, best_t = v, t
    return float(best_t)


def _fit_temperature_bias(logits, labels):
    """Temperature ``t`` and logit offsets ``b`` (``b[0] = 0``) minimising the log
    loss of ``softmax(logits / t + b)``; returns ``(t, list(b))``."""
    from scipy.optimize import minimize

    k = logits.shape[1]

    def nll(p):
        z = logits / np.exp(p[0]) + np.r_[0.0, p[1:]]
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), labels]))

    best = minimize(nll, np.zeros(k), method="Nelder-Mead",
                    options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 4000})
    return float(np.exp(best.x[0])), [0.0] + [float(v) for v in best.x[1:]]


def _bin_edges(predictor, width=0.25, min_count=150):
    """Edges of ``width``-wide bins of ``predictor``, neighbours merged until each
    bin holds at least ``min_count`` values."""
    lo = np.floor(predictor.min() / width) * width
    hi = np.ceil(predictor.max() / width) * width + width / 2
    fine = np.arange(lo, hi, width)
    counts = np.histogram(predictor, fine)[0]
    edges, acc = [fine[0]], 0
    for e, c in zip(fine[1:], counts):
        acc += c
        if acc >= min_count:
            edges.append(e)
            acc = 0
    if acc:  # a sparse tail joins the last full bin
        if len(edges) > 1:
            edges[-1] = fine[-1]
        else:
            edges.append(fine[-1])
    return np.asarray(edges)


def _binned_scales(predictor, stat, width=0.25, min_count=150):
    """Bin centres (medians of ``predictor``) and ``stat(indices)`` per bin of
    `_bin_edges`."""
    edges = _bin_edges(predictor, width, min_count)
    idx = np.clip(np.searchsorted(edges, predictor, side="right") - 1, 0, len(edges) - 2)
    centres, scales = [], []
    for b in range(len(edges) - 1):
        m = np.flatnonzero(idx == b)
        if len(m):
            centres.append(float(np.median(predictor[m])))
            scales.append(float(stat(m)))
    return centres, scales


_SCALE_GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 801))


def _coverage_scale(r2):
    """Factor on the 1-sigma errors that brings the 2-D coverages of the 1-sigma and
    2.45-sigma ellipses closest to 0.393 and 0.950 (each deviation in units of the
    issue's tolerance, 0.03 and 0.02): a compromise when the errors have heavier
    tails than a Gaussian."""
    r2 = np.sort(r2)
    n = len(r2)
    c1 = np.searchsorted(r2, _SCALE_GRID ** 2, side="right") / n
    c95 = np.searchsorted(r2, metrics.R2_95 * _SCALE_GRID ** 2, side="right") / n
    loss = ((c1 - metrics.COVERAGE_1SIGMA) / 0.03) ** 2 + ((c95 - metrics.COVERAGE_95) / 0.02) ** 2
    return float(_SCALE_GRID[np.argmin(loss)])


def fit_calibration(char, cal, spec):
    """Temperatures and sigma scale factors from the calibration set (sets the card)."""
    from sklearn.linear_model import LogisticRegression

    inputs, scalars = inputs_from_arrays(cal, len(spec["cutouts"]),
                                         char.card.get("input", "log1p"))
    raw = char.raw_outputs(inputs, scalars)
    res = char.combine(raw, calibrated=False)
    real = cal["real"].astype(bool)
    calib = {"temperature": {}}
    det = ~_injected(cal)
    calib["temperature"]["source"] = _fit_temperature(raw["source"][..., 0].mean(0)[det],
                                                      real[det].astype(float), binary=True)
    score = np.asarray(cal["score"], float)
    if np.isfinite(score[det]).all() and len(np.unique(real[det])) == 2:
        # the detector's own score is the strongest single real/FAKE feature: the
        # stacked source_prob adds the cutout logit to it (for that detector only)
        feats = np.column_stack([_logit(score[det]), raw["source"][..., 0].mean(0)[det]])
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(feats, real[det])
        calib["source_stack"] = {"detector": spec["detector"],
                                 "features": ["logit(score)", "cutout source logit"],
                                 "coef": lr.coef_[0].tolist(),
                                 "intercept": float(lr.intercept_[0])}
    char.card["calibration"] = calib
    if "cls" in raw:
        k = raw["cls"].shape[-1]
        lab = cal["cls"].astype(int)
        w = (1.0 / np.bincount(lab, minlength=k).clip(1))[lab]
        calib["temperature"]["cls"] = _fit_temperature(raw["cls"].mean(0), lab, w)
        if "source_stack" in calib:
            # classes stacked with the detector's score and aperture photometry:
            # the score tells FAKEs apart, the aperture counts the spectrum
            feats = _class_stack_features(raw, score, res["log10_flux"],
                                          char.aperture_features(inputs))[det]
            mean, std = feats.mean(0), feats.std(0) + 1e-9
            wd = w[det] / w[det].mean()  # balanced, with unit mean (C is per example)
            lr = LogisticRegression(C=1.0, max_iter=3000).fit((feats - mean) / std, lab[det],
                                                              sample_weight=wd)
            calib["class_stack"] = {"detector": spec["detector"], "mean": mean.tolist(),
                                    "std": std.tolist(), "coef": lr.coef_.tolist(),
                                    "intercept": lr.intercept_.tolist(),
                                    "features": "class logits (k), logit(score), log10 flux, "
                                                "log1p aperture counts r <= 1.5, 3, 5 px per band"}
    bright = res["log10_flux"][real]
    ex = cal["tx"][real] - res["dx"][real]
    ey = cal["ty"][real] - res["dy"][real]
    r2 = (ex / res["sigma_x"][real]) ** 2 + (ey / res["sigma_y"][real]) ** 2
    c, s = _binned_scales(bright, lambda m: _coverage_scale(r2[m]))
    calib["position"] = {"centres": c, "scales": s}
    z = (cal["log10_flux"][real] - bright) / res["sigma_log10_flux"][real]
    c, s = _binned_scales(bright, lambda m: np.sqrt(np.mean(z[m] ** 2)))
    calib["flux"] = {"centres": c, "scales": s}
    if "extension" in raw:
        ze = (cal["extension"][real] - res["extension"][real]) / res["extension_err"][real]
        c, s = _binned_scales(bright, lambda m: np.sqrt(np.mean(ze[m] ** 2)))
        calib["extension"] = {"centres": c, "scales": s}
        # The head was trained with (square-root) balanced class weights; a temperature
        # and per-class logit offsets fitted without weights make extension_prob the
        # probability under the survey's own mix of point and extended sources (and its
        # argmax the most accurate class).
        lab = np.digitize(cal["extension"][real], spec["ext_edges_deg"])
        t, bias = _fit_temperature_bias(raw["ext_cls"].mean(0)[real], lab)
        calib["temperature"]["ext_cls"] = t
        calib["ext_cls_bias"] = bias
    char.card["calibration"] = calib
    return calib


def flux_bins(log10_flux, width=0.25):
    """Bin edges of ``width`` dex covering ``log10_flux``."""
    f = log10_flux[np.isfinite(log10_flux)]
    lo = np.floor(f.min() / width) * width
    hi = np.ceil(f.max() / width) * width
    return np.arange(lo, hi + width / 2, width)


def _extremes(rows):
    return {k: [min(r[k] for r in rows), max(r[k] for r in rows)] if rows else None
            for k in ("cov1", "cov95", "z_std")}


def ctao_flux_exposure():
    """The CTAO card's exposure keys: the training simulation's exposure per band.

    With them, `Characterizer.characterize` rescales fluxes by a dataset's
    exposure (`~astro_asid.SkyImage.exposure`, per band at the band centres)
    relative to the simulation's (CTAO prod3b South, 20 h, no off-axis loss).
    """
    from astro_asid.simulate.ctao import CTAO_LIVETIME_H, CTAOResponse

    livetime_h = CTAO_LIVETIME_H
    exposure = CTAOResponse().band_centre_exposure(livetime_h * 3600.0)
    return {"nominal_exposure": [float(v) for v in exposure], "exposure_unit": "cm2 s",
            "nominal_exposure_note": (f"no exposure given: fluxes assume the simulation's "
                                      f"exposure ({livetime_h:g} h, CTA prod3b South)")}


def ctao_extension_likelihood(spectral_index=2.2, half_width_px=28):
    """The CTAO card's ``extension_likelihood``: the training population's prior
    and the counts per unit flux at the nominal exposure (a power law of
    ``spectral_index``), with which `Characterizer.characterize` computes
    ``extension_prob`` by likelihood when the image's background and PSF are
    known (see `~astro_asid.characterize.extension_likelihood`)."""
    from astro_asid.characterize.extension_likelihood import ExtensionPrior
    from astro_asid.simulate.ctao import CTAO_LIVETIME_H, CTAOResponse, CTAOSkySimulator

    prior = ExtensionPrior.from_ctao_simulator(CTAOSkySimulator(seed=0))
    per_flux = CTAOResponse().band_counts(np.array([1.0]), np.array([spectral_index]),
                                          CTAO_LIVETIME_H * 3600.0)[0]
    return {**prior.to_dict(),
            "counts_per_flux": [float(v) for v in per_flux], "spectral_index": spectral_index,
            "half_width_px": half_width_px,
            "note": "prior: the training simulation's population (point fraction, log-uniform "
                    "widths, dN/dS ~ S^-2 between its flux limits, > 1 TeV cm-2 s-1); "
                    "counts_per_flux at the nominal exposure"}


def evaluate(char, test, spec, min_count=50):
    """Metrics of a calibrated characteriser on a labelled test set.

    Returns
    -------
    dict
        ``calibration_table`` (per bin of true flux) and
        ``calibration_table_measured`` (per bin of the measured flux), ``worst``
        and ``worst_measured`` (the extremes over bins with ``>= min_count``
        sources), ``source`` (ECE, AUC), ``classes``
        (balanced completeness, confusion, ECE), ``extension`` (CTAO), and the
        per-candidate predictions ``pred`` for further tables.
    """
    inputs, scalars = inputs_from_arrays(test, len(spec["cutouts"]),
                                         char.card.get("input", "log1p"))
    raw = char.raw_outputs(inputs, scalars)
    res = char.combine(raw)
    real = test["real"].astype(bool)
    if "source_stack" in char.card.get("calibration", {}):
        # as find_sources does for the candidates of the model's own detector
        score = np.where(np.isfinite(test["score"]), test["score"], 0.5)
        cut_only = res
        res = char.combine(raw, score=score, aperture=char.aperture_features(inputs))
        res["source_prob_cutout"] = cut_only["source_prob"]
        if "class_prob" in cut_only:
            res["class_prob_cutout"] = cut_only["class_prob"]
    ex = test["tx"] - res["dx"]
    ey = test["ty"] - res["dy"]
    f = test["log10_flux"]
    bins = flux_bins(f[real])
    table = metrics.calibration_table(f[real], ex[real], ey[real], res["sigma_x"][real],
                                      res["sigma_y"][real], res["log10_flux"][real],
                                      res["sigma_log10_flux"][real], bins, min_count)
    table_meas = metrics.calibration_table(res["log10_flux"][real], ex[real], ey[real],
                                           res["sigma_x"][real], res["sigma_y"][real],
                                           res["log10_flux"][real],
                                           res["sigma_log10_flux"][real], bins, min_count,
                                           truth=f[real])
    ok = [r for r in table if r["ok"]]
    ok_meas = [r for r in table_meas if r["ok"]]
    c1, c95 = metrics.ellipse_coverage(ex[real], ey[real], res["sigma_x"][real],
                                       res["sigma_y"][real])
    zm, zs = metrics.zscore_stats(f[real], res["log10_flux"][real],
                                  res["sigma_log10_flux"][real])
    out = {"n_test": int(len(real)), "n_real": int(real.sum()),
           "overall": {"cov1": c1, "cov95": c95, "flux_z_mean": zm, "flux_z_std": zs,
                       "median_pos_err_px": float(np.median(np.hypot(ex[real], ey[real]))),
                       "median_abs_dlog10_flux": float(np.median(np.abs(
                           f[real] - res["log10_flux"][real])))},
           "calibration_table": table, "calibration_table_measured": table_meas,
           "worst": _extremes(ok), "worst_measured": _extremes(ok_meas)}
    from sklearn.metrics import roc_auc_score
    det = ~_injected(test)
    sp = res["source_prob"][det]
    out["source"] = {"ece": metrics.expected_calibration_error(sp, real[det].astype(int)),
                     "auc": float(roc_auc_score(real[det], sp)),
                     "auc_cutout_only": float(roc_auc_score(
                         real[det], res.get("source_prob_cutout", res["source_prob"])[det])),
                     "auc_detector_score": float(roc_auc_score(real[det], test["score"][det]))}
    if "class_prob" in res:
        k = res["class_prob"].shape[1]
        lab = test["cls"].astype(int)
        pred = res["class_prob"].argmax(1)
        per, bal = metrics.balanced_completeness(lab, pred, k)
        w = (1.0 / np.bincount(lab, minlength=k).clip(1))[lab]
        out["classes"] = {"names": spec["class_names"], "completeness": per.tolist(),
                          "balanced_completeness": bal,
                          "confusion": metrics.confusion_matrix(lab, pred, k).tolist(),
                          "ece_balanced": metrics.expected_calibration_error(
                              res["class_prob"], lab, weights=w)}
        if "class_prob_cutout" in res:
            out["classes"]["balanced_completeness_cutout_only"] = metrics.balanced_completeness(
                lab, res["class_prob_cutout"].argmax(1), k)[1]
    if "ext_prob" in res:
        lab = np.digitize(test["extension"][real], spec["ext_edges_deg"])
        pred = res["ext_prob"][real].argmax(1)
        on_det = ~_injected(test)[real]
        pd_ = res["ext_prob"][real][on_det].argmax(1)
        out["extension"] = {
            "names": spec["ext_class_names"],
            "confusion_detected_only": metrics.confusion_matrix(lab[on_det], pd_, 3).tolist(),
            "confusion": metrics.confusion_matrix(lab, pred, 3).tolist(),
            "point_vs_extended_accuracy": float(np.mean((lab == 0) == (pred == 0))),
            "accuracy": float(np.mean(lab == pred))}
        ze = metrics.zscore_stats(test["extension"][real], res["extension"][real],
                                  res["extension_err"][real])
        out["extension"]["z_mean"], out["extension"]["z_std"] = ze
    out["pred"] = res
    return out


def _simulate_part(args):
    n, instrument, seed, kw = args
    torch.set_num_threads(1)
    return simulate_candidates(n, instrument=instrument, seed=seed, log=None, **kw)


def _load_or_simulate(cache, name, n, instrument, seed, log, workers=1, **kw):
    """A labelled candidate set, read from ``cache`` or simulated (and stored there).

    With ``workers > 1`` the set is simulated as ``workers`` independent parts
    (seeds ``seed * 100 + w``) on as many processes: a different, equally valid
    set than the one-process simulation with ``seed``.
    """
    tag = "".join(f"-{k}{v}" for k, v in sorted(kw.items()) if k == "density")
    tag += f"-w{workers}" if workers > 1 else ""
    path = (None if cache is None
            else Path(cache) / f"{instrument}-{name}-{n}-{seed}{tag}.npz")
    if path is not None and path.exists():
        log(f"reading {path}")
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    log(f"simulating the {name} set: {n} patches (seed {seed}, {workers} process(es))")
    kw.setdefault("inject_snr", INSTRUMENTS[instrument].get("inject_snr"))
    if workers > 1:
        import multiprocessing as mp
        sizes = [n // workers + (w < n % workers) for w in range(workers)]
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_simulate_part, [(m, instrument, seed * 100 + w, kw)
                                              for w, m in enumerate(sizes)])
        offset = np.cumsum([0] + sizes[:-1])
        for part, off in zip(parts, offset):
            part["patch"] = part["patch"] + off
        d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        d = simulate_candidates(n, instrument=instrument, seed=seed, log=log, **kw)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **d)
    return d


def train_characterizer(instrument="fermi-lat", n_patches=12000, n_calibration=3000,
                        n_test=3000, members=5, epochs=4, batch_size=512, lr=3e-3, seed=0,
                        width=16, hidden=128, out="asid-characterizer", cache=None,
                        threads=None, workers=1, command=None, log=print):
    """Simulate, train, calibrate, evaluate and write a characteriser.

    ``workers`` processes simulate the training set (see `_load_or_simulate`).

    Returns
    -------
    `~astro_asid.characterize.Characterizer`
        The model, also written as ``out/<name>.safetensors`` + ``.json``.
    """
    if threads:
        torch.set_num_threads(int(threads))
    spec = INSTRUMENTS[instrument]
    t0 = time.time()
    train = _load_or_simulate(cache, "train", n_patches, instrument, seed * 10 + 1, log,
                              workers=workers)
    # CTAO trains at the detector's (denser) training density; source_prob is
    # calibrated and tested at the survey's own density
    survey = {"density": 1.0} if instrument == "ctao" else {}
    cal = _load_or_simulate(cache, "calibration", n_calibration, instrument, seed * 10 + 2, log,
                            **survey)
    test = _load_or_simulate(cache, "test", n_test, instrument, seed * 10 + 3, log, **survey)
    t_sim = time.time() - t0
    fl = train["log10_flux"][train["real"].astype(bool)]
    flux_norm = (float(np.mean(fl)), float(np.std(fl)))
    tt = _tensors(train, spec, flux_norm)
    log(f"training {members} members on {len(tt['x'])} candidates "
        f"({int(train['real'].sum())} real)")
    t1 = time.time()
    nets = train_members(tt, spec, members=members, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, width=width, hidden=hidden, log=log)
    t_train = time.time() - t1
    from astro_asid.simulate.instrument import EXPOSURE_CM2S
    card = {
        "name": CHARACTERIZER_NAMES[instrument],
        "instrument": instrument,
        "detector": spec["detector"],
        "description": "deep-ensemble characteriser: refined position with calibrated errors, "
                       "flux with errors, source/FAKE and class probabilities",
        "n_bands": int(train["cutouts"].shape[1] // len(spec["cutouts"])),
        "cutouts": spec["cutouts"],
        "input": spec.get("input", "log1p"),
        "class_names": spec["class_names"],
        "flux": {"log10_mean": flux_norm[0], "log10_std": flux_norm[1],
                 "unit": spec["flux_unit"], "band": spec["flux_band"],
                 "energy_range": spec["flux_energy_range"]},
        "training": {"command": command, "n_patches": n_patches,
                     "n_calibration": n_calibration, "n_test": n_test, "members": members,
                     "epochs": epochs, "width": width, "hidden": hidden, "workers": workers,
                     "batch_size": batch_size, "lr": lr, "seed": seed,
                     "seconds_simulation": round(t_sim, 1), "seconds_training": round(t_train, 1),
                     "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "torch_threads": torch.get_num_threads(),
                     "astro_asid_version": __version__},
    }
    if instrument == "fermi-lat":
        from astro_asid.training.fermi import PIXEL_SCALE_DEG, FERMI_ENERGY_EDGES_GEV
        card["pixel_scale_deg"] = PIXEL_SCALE_DEG
        card["energy_edges_gev"] = FERMI_ENERGY_EDGES_GEV
        card["flux"]["nominal_exposure"] = [float(v) for v in EXPOSURE_CM2S]
        card["flux"]["exposure_unit"] = "cm2 s"
        card["flux"]["nominal_exposure_note"] = (
            "no exposure given: fluxes assume the data challenge's exposure (9.5 yr)")
    if instrument == "ctao":
        from astro_asid.simulate.ctao import CTAO_PIXEL_DEG
        card["pixel_scale_deg"] = CTAO_PIXEL_DEG
        card["flux"].update(ctao_flux_exposure())
        card["extension_likelihood"] = ctao_extension_likelihood()
    if instrument == "optical":
        card["flux"]["unit"] = "image units"
        card["flux"]["note"] = ("log10 flux is predicted in units of the local noise and "
                                "multiplied by the image's noise map")
    if "ext_class_names" in spec:
        card["ext_class_names"] = spec["ext_class_names"]
        card["ext_edges_deg"] = spec["ext_edges_deg"]
    char = Characterizer(nets, card)
    fit_calibration(char, cal, spec)
    ev = evaluate(char, test, spec)
    ev.pop("pred")
    char.card["metrics"] = ev
    path = Path(out) / card["name"]
    char.save(path)
    log(f"wrote {path}.safetensors; test: 1-sigma coverage {ev['overall']['cov1']:.3f}, "
        f"95% {ev['overall']['cov95']:.3f}, flux z std {ev['overall']['flux_z_std']:.3f}")
    return char


def recalibrate_characterizer(path, n_calibration=3000, n_test=3000, seed=0, cache=None,
                              log=print):
    """Refit the calibration of a trained characteriser and re-evaluate it (the members
    are unchanged; the sets are those `train_characterizer` would use with ``seed``)."""
    char = Characterizer.load(path)
    instrument = char.instrument
    spec = INSTRUMENTS[instrument]
    survey = {"density": 1.0} if instrument == "ctao" else {}
    cal = _load_or_simulate(cache, "calibration", n_calibration, instrument, seed * 10 + 2, log,
                            **survey)
    test = _load_or_simulate(cache, "test", n_test, instrument, seed * 10 + 3, log, **survey)
    fit_calibration(char, cal, spec)
    ev = evaluate(char, test, spec)
    ev.pop("pred")
    char.card["metrics"] = ev
    char.save(path)
    return char


def add_arguments(parser):
    """Options of ``asid train characterizer``."""
    parser.add_argument("--n-patches", type=int, default=12000,
                        help="simulated patches whose candidates train the characterizer")
    parser.add_argument("--n-calibration-patches", type=int, default=3000,
                        help="patches of the calibration set")
    parser.add_argument("--n-test", type=int, default=3000, help="patches of the test set")
    parser.add_argument("--members", type=int, default=5, help="deep-ensemble members")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per member")
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv block")
    parser.add_argument("--hidden", type=int, default=128, help="width of the dense layers")
    parser.add_argument("--sim-workers", type=int, default=1,
                        help="processes simulating the training set (its parts get own seeds)")
    parser.add_argument("--cache", default=None,
                        help="folder for the simulated candidate sets (reused when present)")


def main(argv=None):
    """``python -m astro_asid.characterize.train``."""
    import argparse
    p = argparse.ArgumentParser(prog="asid train characterizer", description=__doc__.split("\n")[0])
    p.add_argument("--instrument", default="fermi-lat", choices=sorted(INSTRUMENTS))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="asid-characterizer")
    p.add_argument("--recalibrate", default=None, metavar="PATH",
                   help="only refit the calibration of the characteriser at PATH")
    add_arguments(p)
    a = p.parse_args(argv)
    if a.recalibrate:
        recalibrate_characterizer(a.recalibrate, a.n_calibration_patches, a.n_test, a.seed,
                                  a.cache)
        return 0
    command = "python -m astro_asid.characterize.train " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    train_characterizer(a.instrument, n_patches=a.n_patches,
                        n_calibration=a.n_calibration_patches, n_test=a.n_test,
                        members=a.members, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                        seed=a.seed, width=a.width, hidden=a.hidden, out=a.out, cache=a.cache,
                        threads=a.threads, workers=a.sim_workers, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the Fermi-LAT characteriser (issue 5): calibration and classification.

Two parts, each printing tables:

1. Simulated test skies (independent of training and calibration): per bin of
   true flux, the fraction of true positions inside the 1-sigma and 95 %
   error ellipses (targets 0.39 +- 0.03 and 0.95 +- 0.02) and the flux z-score
   mean and standard deviation (target std 0.9-1.1); source/FAKE ECE and AUC;
   AGN/PSR/FAKE confusion matrices overall and by observed SNR bin, balanced
   completeness (target >= 0.75); precision/recall after the source_prob cut.
2. The Fermi-LAT data challenge (patches 64-767, ``--seeds`` Poisson draws of
   the expected counts): recall at precision 0.88-0.97 ranked by the
   detector's score and by ``source_prob`` (the source/FAKE cut swept), plus
   score ranking after a fixed ``source_prob >= 0.5`` cut; AGN/PSR/FAKE
   completeness on the challenge's own classes; flux accuracy against the
   challenge's ``flux_1000``.

Usage::

    python benchmarks/fermi_characterize.py --seeds 5 [--cache DIR] [--n-test 3000]
                                            [--weights PATH]

``--weights`` evaluates another characteriser (a ``.safetensors`` file with its
card beside it) instead of the shipped one.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from astro_asid.characterize import metrics, report, shipped_characterizer
from astro_asid.characterize.model import Characterizer
from astro_asid.characterize.data import INSTRUMENTS
from astro_asid.characterize.train import _injected, _load_or_simulate, evaluate
from astro_asid import get_detector

SNR_BINS = (0, 5, 10, 20, np.inf)


def _fmt(v, f=".3f"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, f)


def simulated(char, n_test, seed, cache, nominal, plots=None):
    spec = INSTRUMENTS["fermi-lat"]
    kw = dict(exposure_range=(1, 1), background_range=(1, 1)) if nominal else {}
    name = "test-nominal" if nominal else "test"
    test = _load_or_simulate(cache, name, n_test, "fermi-lat", seed, print, **kw)
    ev = evaluate(char, test, spec)
    res = ev.pop("pred")
    print(f"\n## Simulated test skies ({name}: {n_test} patches, seed {seed}; "
          f"{ev['n_test']} candidates, {ev['n_real']} real)")
    for measured in (False, True):
        print("\n" + report.calibration_markdown(ev, measured=measured, flux_label="log10 F1000"))
    print(report.summary_lines(ev))
    c = ev["classes"]
    print(f"AGN/PSR/FAKE: completeness {np.round(c['completeness'], 3).tolist()}, balanced "
          f"{c['balanced_completeness']:.3f}, balanced ECE {c['ece_balanced']:.3f}")
    print("confusion (rows true AGN/PSR/FAKE, columns predicted):", c["confusion"])
    lab = test["cls"].astype(int)
    pred = res["class_prob"].argmax(1)
    print("\n| observed SNR | n | AGN | PSR | FAKE | balanced | confusion |")
    print("|---|---|---|---|---|---|---|")
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        m = (test["snr_obs"] >= lo) & (test["snr_obs"] < hi)
        per, bal = metrics.balanced_completeness(lab[m], pred[m], 3)
        cm = metrics.confusion_matrix(lab[m], pred[m], 3).tolist()
        print(f"| {lo:g}-{hi:g} | {m.sum()} | " + " | ".join(_fmt(p) for p in per)
              + f" | {_fmt(bal)} | {cm} |")
    # precision / recall among candidates (recall relative to the detected real ones)
    real = test["real"].astype(bool)
    rankings = {"detector score": test["score"], "source_prob": res["source_prob"],
                "cutout-only classifier": res["source_prob_cutout"]}
    print("\n| ranking | P at R 0.5 | R at P 0.9 | R at P 0.97 |")
    print("|---|---|---|---|")
    curves = {}
    for name_, key in rankings.items():
        o_ = np.argsort(-key, kind="stable")
        tp = np.cumsum(real[o_])
        prec = tp / np.arange(1, len(o_) + 1)
        rec = tp / real.sum()
        curves[name_] = (rec, prec)
        r90 = rec[prec >= 0.9].max() if (prec >= 0.9).any() else 0.0
        r97 = rec[prec >= 0.97].max() if (prec >= 0.97).any() else 0.0
        p50 = prec[np.searchsorted(rec, 0.5)]
        print(f"| {name_} | {p50:.3f} | {r90:.3f} | {r97:.3f} |")
    # the whole curve: the cut swept over [0, 1)
    cuts = np.round(np.arange(0.0, 1.0, 0.05), 2)
    pr = {k: metrics.precision_recall_table(rankings[k], real, cuts)
          for k in ("source_prob", "cutout-only classifier")}
    print(f"\nPrecision / recall after the cut `>= threshold` ({real.sum()} real among "
          f"{len(real)} candidates; recall of the detected real sources):\n")
    print(report.precision_recall_markdown(pr))
    # reliability diagrams: source_prob on the detector's candidates, and each class
    # probability against the rest under balanced priors (as it is calibrated)
    det = ~_injected(test)
    w = (1.0 / np.bincount(lab, minlength=3).clip(1))[lab]
    rel = {"source_prob": metrics.reliability_table(res["source_prob"][det], real[det])}
    for k, cname in enumerate(c["names"]):
        rel[f"class_prob {cname} (balanced)"] = metrics.reliability_table(
            res["class_prob"][:, k], lab == k, weights=w)
    print("\nReliability (10 bins of predicted probability):\n")
    print(report.reliability_markdown(rel))
    if plots:
        plots.mkdir(parents=True, exist_ok=True)
        report.plot_reliability(rel, plots / f"reliability-{name}.png",
                                title=f"Fermi-LAT characteriser, {name} set")
        report.plot_precision_recall(curves, plots / f"precision-recall-{name}.png",
                                     title=f"Candidates of the {name} set")
    return ev


def challenge(char, seeds, min_score=0.1):
    from astro_asid.evaluate import challenge as ch

    data = ch.load_challenge()
    det = get_detector(char.card["detector"], min_score=min_score)
    idx = np.arange(64, data.n_patches)
    truth = data.truth[data.truth["patch"] >= 64]
    rows = {k: [] for k in ("score", "source_prob", "source_prob_cutout", "score_cut")}
    cls_stats, flux_stats, times = [], [], []
    for seed in seeds:
        counts = ch.poisson_draw(data.expected, seed=seed)[idx]
        t0 = time.time()
        tables = det.detect_arrays(counts)
        t1 = time.time()
        parts = []
        for i, c, tab in zip(idx, counts, tables):
            if len(tab) == 0:
                continue
            inputs, scal = char.make_input(c, np.asarray(tab["x_centroid"]),
                                           np.asarray(tab["y_centroid"]))
            raw = char.raw_outputs(inputs, scal)
            r = char.combine(raw, score=np.asarray(tab["score"]),
                             aperture=char.aperture_features(inputs))
            r_cut = char.combine({"source": raw["source"]})
            x = np.rint(tab["x_centroid"]) + r["dx"]
            y = np.rint(tab["y_centroid"]) + r["dy"]
            lon, lat = ch.patch_pixel_to_sky(data.patch_lon[i], data.patch_lat[i], x, y)
            parts.append(Table({"patch": np.full(len(tab), i), "lon": lon, "lat": lat,
                                "score": np.asarray(tab["score"]),
                                "source_prob": r["source_prob"],
                                "source_prob_cutout": r_cut["source_prob"],
                                "cls_pred": r["class_prob"].argmax(1),
                                "log10_flux": r["log10_flux"],
                                "sigma_log10_flux": r["sigma_log10_flux"]}))
        t2 = time.time()
        times.append((t1 - t0, t2 - t1))
        pred = vstack(parts)
        by_prob = pred.copy()
        by_prob["score"] = pred["source_prob"]
        by_cut = pred.copy()
        by_cut["score"] = pred["source_prob_cutout"]
        cut = pred[pred["source_prob"] >= 0.5]
        for key, tab in (("score", pred), ("source_prob", by_prob),
                         ("source_prob_cutout", by_cut), ("score_cut", cut)):
            curve = ch.precision_recall_curve(tab, truth)
            rows[key].append([float(ch.recall_at_precision(curve, p))
                              for p in (0.88, 0.90, 0.95, 0.97)])
        sc = ch.score_catalog(pred, truth, order="score")
        tp = np.asarray(sc.pred_tp)
        match = np.asarray(sc.pred_match) if hasattr(sc, "pred_match") else None
        lab = np.full(len(pred), 2)
        if match is not None:
            lab[tp] = np.asarray(truth["cls"])[match[tp]]
            f_true = np.log10(np.asarray(truth["flux_1000"])[match[tp]])
            z = (f_true - pred["log10_flux"][tp]) / pred["sigma_log10_flux"][tp]
            flux_stats.append((np.median(f_true - pred["log10_flux"][tp]),
                               np.std(f_true - pred["log10_flux"][tp]), np.mean(z), np.std(z)))
        per, bal = metrics.balanced_completeness(lab, np.asarray(pred["cls_pred"]), 3)
        sel = np.asarray(pred["score"]) >= 0.5
        per5, bal5 = metrics.balanced_completeness(lab[sel], np.asarray(pred["cls_pred"])[sel], 3)
        cls_stats.append((*per, bal, bal5))
        print(json.dumps({"seed": int(seed), "detect_s": round(t1 - t0, 1),
                          "characterize_s": round(t2 - t1, 1),
                          **{k: v[-1] for k, v in rows.items()}}))
    print(f"\n## Data challenge, patches 64-767, {len(seeds)} Poisson seeds (mean +- std)")
    print("\n| ranking | R@P0.88 | R@P0.90 | R@P0.95 | R@P0.97 |")
    print("|---|---|---|---|---|")
    for key, label in (("score", "detector score (no cut)"),
                       ("source_prob", "source_prob (cut swept)"),
                       ("source_prob_cutout", "cutout-only source/FAKE classifier (cut swept)"),
                       ("score_cut", "score, after source_prob >= 0.5")):
        a = np.array(rows[key])
        print(f"| {label} | " + " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in
                                           zip(a.mean(0), a.std(0))) + " |")
    a = np.array(cls_stats)
    print(f"\nAGN/PSR/FAKE on the challenge (all candidates): completeness "
          f"{np.round(a[:, :3].mean(0), 3).tolist()}, balanced {a[:, 3].mean():.3f}; "
          f"candidates with score >= 0.5: balanced {a[:, 4].mean():.3f}")
    if flux_stats:
        f = np.array(flux_stats)
        print(f"Flux vs the challenge's flux_1000 (true positives): median log10(true/pred) "
              f"{f[:, 0].mean():+.3f}, scatter {f[:, 1].mean():.3f} dex, z mean "
              f"{f[:, 2].mean():+.2f}, z std {f[:, 3].mean():.2f}")
    t = np.array(times)
    print(f"Time per seed (768-64 patches): detect {t[:, 0].mean():.1f} s, characterize "
          f"{t[:, 1].mean():.1f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="Poisson draws of the challenge")
    p.add_argument("--n-test", type=int, default=3000, help="simulated test patches")
    p.add_argument("--test-seed", type=int, default=104)
    p.add_argument("--cache", default=None, help="folder of cached simulated sets")
    p.add_argument("--skip-simulated", action="store_true")
    p.add_argument("--skip-challenge", action="store_true")
    p.add_argument("--plots", default=None, help="folder for reliability and P/R plots")
    p.add_argument("--weights", help="a characteriser's .safetensors (default: the shipped one)")
    a = p.parse_args(argv)
    char = Characterizer.load(a.weights) if a.weights else shipped_characterizer("fermi-lat")
    if char is None:
        raise SystemExit("no Fermi-LAT characteriser is installed")
    print(f"characteriser {char.card['name']} ({char.card['sha256'][:12]}), "
          f"{len(char.members)} members, trained on {char.card['detector']} candidates")
    if not a.skip_simulated:
        # the training command's own test set (seed 103: random exposure and background)
        # and a nominal-sky test set (challenge exposure and background)
        plots = Path(a.plots) if a.plots else None
        simulated(char, a.n_test, 103, a.cache, nominal=False, plots=plots)
        simulated(char, a.n_test, a.test_seed, a.cache, nominal=True, plots=plots)
    if not a.skip_challenge:
        challenge(char, list(range(a.seeds)))


if __name__ == "__main__":
    main()

"""Score a deep detector on Poisson draws of the Fermi-LAT data challenge (evaluation only).

Used to put honest challenge numbers into the model cards; the full benchmark
(all detectors, robustness tables) lives in ``benchmarks/fermi_challenge.py``.
The challenge is never used for training or score calibration.

Usage::

    python -m astro_asid.training.challenge_eval asid-unet --seeds 0 1 2 3 4 \
        [--weights PATH] [--first-patch 64 0] [--detector-option patience=5]
"""

import argparse
import json
import time

import numpy as np
from astropy.table import Table, vstack

__all__ = ["evaluate_on_challenge"]


def _metrics(pred, truth, ch):
    curve = ch.precision_recall_curve(pred, truth)
    res = {}
    for p in (0.88, 0.90, 0.95, 0.97):
        res[f"recall_at_precision_{p:.2f}"] = float(ch.recall_at_precision(curve, p))
    # position errors of the true positives at the precision-0.88 operating point
    ok = np.asarray(curve["precision"]) >= 0.88
    if ok.any():
        rec = np.asarray(curve["recall"])[ok]
        thr = float(np.asarray(curve["threshold"])[ok][np.argmax(rec)])
        sel = pred[np.asarray(pred["score"]) >= thr]
        sc = ch.score_catalog(sel, truth, order="score")
        sep = sc.pred_sep[sc.pred_tp]
        res["score_threshold_at_precision_0.88"] = thr
        res["tp_sep_median_deg"] = float(np.median(sep))
        res["tp_sep_68_deg"] = float(np.quantile(sep, 0.68))
        res["tp_fraction_within_0.15deg"] = float(np.mean(sep <= 0.15))
    sc_all = ch.score_catalog(pred, truth, order="score")
    res["all_candidates_precision"] = sc_all.tp / max(sc_all.tp + sc_all.fp, 1)
    res["all_candidates_recall"] = sc_all.tp / max(len(truth), 1)
    return res


def evaluate_on_challenge(detector, seeds=(0,), first_patches=(64, 0), path=None, log=print,
                          astrometry="readme"):
    """Recall at fixed precision, position errors and timing on the data challenge.

    Parameters
    ----------
    detector : `~astro_asid.detection.deep.DeepDetector`
        Instance (use ``min_score=0`` to get the whole precision/recall curve).
    seeds : sequence of int
        Seeds of the Poisson draws of the expected counts (of all 768 patches).
    first_patches : sequence of int
        Score patches ``first..767`` for each value (64: the public benchmark
        range; 0: all). The detector runs once per seed on the widest range.
    path : str, optional
        Challenge directory (see `astro_asid.evaluate.challenge.find_challenge_dir`).
    astrometry : {"readme", "calibrated"}
        Pixel -> sky with the README's WCS, or with the WCS corrected by the
        template offset measured on patches 0-63
        (`~astro_asid.evaluate.challenge.measure_template_offset`).

    Returns
    -------
    dict
        ``"<first>-767"`` -> per-seed results and their mean/std.
    """
    from astro_asid.evaluate import challenge as ch

    data = ch.load_challenge(path)
    first_patches = [int(f) for f in np.atleast_1d(first_patches)]
    idx = np.arange(min(first_patches), data.n_patches)
    expected = data.expected
    if astrometry not in ("readme", "calibrated"):
        raise ValueError(f"astrometry must be 'readme' or 'calibrated', not {astrometry!r}")
    dx = dy = 0.0
    if astrometry == "calibrated":
        dx, dy, n = ch.measure_template_offset(data)
        log(f"template offset on patches 0-63: dx {dx:+.3f} dy {dy:+.3f} px ({n} sources)")
    per_seed = {f: [] for f in first_patches}
    for seed in seeds:
        counts = ch.poisson_draw(expected, seed=seed)[idx]
        t0 = time.time()
        tables = detector.detect_arrays(counts)
        dt = time.time() - t0
        rows = []
        for i, tab in zip(idx, tables):
            if len(tab) == 0:
                continue
            lon, lat = ch.patch_pixel_to_sky(data.patch_lon[i], data.patch_lat[i],
                                             np.asarray(tab["x_centroid"]) - dx,
                                             np.asarray(tab["y_centroid"]) - dy)
            rows.append(Table({"patch": np.full(len(tab), i), "lon": lon, "lat": lat,
                               "score": np.asarray(tab["score"])}))
        pred = vstack(rows) if rows else Table(names=("patch", "lon", "lat", "score"))
        for f in first_patches:
            truth = data.truth[data.truth["patch"] >= f]
            res = {"seed": int(seed), "time_s": dt, "time_n_patches": len(idx),
                   **_metrics(pred[np.asarray(pred["patch"]) >= f], truth, ch)}
            per_seed[f].append(res)
            log(json.dumps({"patches": f"{f}-767", **res}))
    out = {}
    for f, rs in per_seed.items():
        keys = [k for k in rs[0] if k != "seed"]
        out[f"{f}-767"] = {
            "per_seed": rs, "seeds": list(map(int, seeds)), "astrometry": astrometry,
            "summary": {k: {"mean": float(np.mean([r.get(k, np.nan) for r in rs])),
                            "std": float(np.std([r.get(k, np.nan) for r in rs]))} for k in keys}}
    return out


def main(argv=None):
    from astro_asid.detection.deep import DEEP_DETECTORS

    classes = {c.name: c for c in DEEP_DETECTORS}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("detector", choices=sorted(classes))
    p.add_argument("--weights", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--first-patch", type=int, nargs="+", default=[64, 0])
    p.add_argument("--path", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--detector-option", action="append", default=[],
                   help="NAME=VALUE passed to the detector (repeatable)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--astrometry", choices=["readme", "calibrated"], default="readme",
                   help="pixel -> sky: the README's WCS, or corrected by the template offset "
                        "measured on patches 0-63")
    p.add_argument("--update-card", action="store_true",
                   help="store the result in the model card (metrics.data_challenge_catalog400)")
    a = p.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    opts = {}
    for kv in a.detector_option:
        k, v = kv.split("=", 1)
        opts[k] = json.loads(v)
    det = classes[a.detector](weights=a.weights, min_score=0.0, **opts)
    res = evaluate_on_challenge(det, a.seeds, a.first_patch, a.path, astrometry=a.astrometry)
    for k, v in res.items():
        print(k, json.dumps({kk: round(vv["mean"], 4) for kk, vv in v["summary"].items()}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.update_card:
        _update_card(det, res, opts)
    return 0


def _update_card(det, res, options):
    """Write the challenge result into the detector's card (same weights file)."""
    from astro_asid.nn.io import read_card, save_card, weights_path

    path = det._weights_path()
    card = read_card(path)
    wfile = weights_path(path, card)
    card = {k: v for k, v in card.items() if k not in ("sha256", "weights_file")}
    key = "data_challenge_catalog400"
    if any(v.get("astrometry") == "calibrated" for v in res.values()):
        key += "_calibrated_astrometry"
    card.setdefault("metrics", {})[key] = dict(
        res, detector_options=options,
        note="Poisson draws of the public expected counts; never used for training or "
             "score calibration; astrometry 'readme' = the README's WCS (CRPIX 32.75), "
             "'calibrated' = corrected by the template offset measured on patches 0-63")
    save_card(path.with_suffix(".json"), card, wfile)


if __name__ == "__main__":
    raise SystemExit(main())

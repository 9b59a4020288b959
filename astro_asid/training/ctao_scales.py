"""Score calibration of the binned (multi-scale) CTAO detection.

`~astro_asid.detection.deep.ASIDCTAODetector` runs its network on the map
and on copies binned 2x2 and 4x4 (`astro_asid.detection.multiscale`). The
raw scores of different binnings do not mean the same thing, so each binned
pass gets its own isotonic calibration (the map itself keeps the card's):
the fraction of true sources among the detections it keeps after the merge,
on simulated survey patches (`~astro_asid.simulate.ctao.CTAOSkySimulator`,
512 x 512 pixels at the survey's source density), matched with the benchmark's rule
(`astro_asid.evaluate.ctao.match`). The merge itself depends on the scores,
so the fit is repeated with the scores of the previous round.

The result is written into the model card (``scale_calibration``), with
the command that reproduces it::

    python -m astro_asid.training.ctao_scales --n-patches 64 --seed 1000

The network is not retrained. Use seeds other than those of
``benchmarks/ctao_gps.py`` (0 by default) so the benchmark stays held out.
"""

import argparse
import sys
import time
import warnings

import numpy as np
from astropy.table import Table, vstack

__all__ = ["fit_scale_calibration", "main"]

DEFAULT_SCALES = (1, 2, 4)


def _detections(tabs, patch0):
    """Per-image detector tables -> one table with ``patch``/``x``/``y``/``raw``/``scale``."""
    rows = [Table({"patch": np.full(len(t), patch0 + i),
                   "x": np.asarray(t["x_centroid"], float),
                   "y": np.asarray(t["y_centroid"], float),
                   "raw": np.asarray(t["raw_score"], float),
                   "scale": np.asarray(t["scale"], int)})
            for i, t in enumerate(tabs) if len(t)]
    return vstack(rows) if rows else Table(names=("patch", "x", "y", "raw", "scale"))


def _merge(dets, cals, radius):
    """Score every detection with its binning's calibration and merge each patch."""
    from astro_asid.detection.multiscale import merge_scales

    dets = dets.copy()
    scale, patch = np.asarray(dets["scale"]), np.asarray(dets["patch"])
    dets["score"] = np.zeros(len(dets))
    for s, cal in cals.items():
        dets["score"][scale == s] = cal(np.asarray(dets["raw"])[scale == s])
    dets["x_centroid"], dets["y_centroid"] = dets["x"], dets["y"]
    kept = [merge_scales([dets[(patch == p) & (scale == s)] for s in cals], radius)
            for p in np.unique(patch)]
    return vstack(kept)


def fit_scale_calibration(weights=None, n_patches=64, seed=1000, scales=DEFAULT_SCALES,
                          merge_radius=8.0, n_rounds=2, chunk=8, log=print):
    """Fit the score calibration of every binning on simulated survey patches.

    Parameters
    ----------
    weights : str or path, optional
        The ``asid-ctao`` model (default: the shipped one).
    n_patches : int
        Simulated 512 x 512 survey patches.
    seed : int
        Simulator seed.
    scales : sequence of int
        Binning factors (1 included).
    merge_radius : float
        The detector's merge radius (unbinned pixels).
    n_rounds : int
        Fits; each after merging with the previous round's scores (the first
        merges with the card's own calibration for every binning).
    chunk : int
        Patches simulated and detected at a time.

    Returns
    -------
    dict
        The card's ``scale_calibration`` entry for ``asid-ctao``: ``scales``,
        ``merge_radius_px``, ``calibration`` (one
        `~astro_asid.detection.decoders.ScoreCalibration` dict per binning
        but 1, which keeps the card's own) and what it was fitted on.
    """
    from astro_asid.detection.decoders import ScoreCalibration
    from astro_asid.detection.deep import ASIDCTAODetector
    from astro_asid.detection.multiscale import check_scales
    from astro_asid.evaluate.ctao import match, truth_table
    from astro_asid.simulate.ctao import CTAOSkySimulator

    scales = check_scales(scales)
    if len(scales) < 2:
        raise ValueError("nothing to calibrate: give at least one binning besides 1")
    det = ASIDCTAODetector(weights=weights, min_score=0.0, scales=(1,))
    sim = CTAOSkySimulator(seed=seed)
    t0 = time.time()
    dets, truths, done = [], [], 0
    while done < n_patches:
        n = min(chunk, n_patches - done)
        batch = sim.sample_patches(n)
        truth = truth_table(batch)
        truth["patch"] += done
        truths.append(truth)
        for s in scales:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dets.append(_detections(det.detect_at_scale(batch.counts, None, s), done))
        done += n
        log(f"# {done}/{n_patches} patches simulated and detected ({time.time() - t0:.0f} s)")
    dets, truth, cdelt = vstack(dets), vstack(truths), batch.cdelt
    # the map itself keeps the card's calibration: its scores (and the characteriser fitted
    # on them) stay as they were; only the binned detections are put on that scale. All
    # binned detections enter the fit; the detector then keeps those >= binned_min_score
    base = det._calibration()
    cals = {s: base for s in scales}
    for r in range(n_rounds):
        merged = _merge(dets, cals, merge_radius)
        order, tp, _ = match(merged, truth, cdelt)
        kept_scale = np.asarray(merged["scale"])[order]
        kept_raw = np.asarray(merged["raw"])[order]
        cals = {1: base, **{s: ScoreCalibration.fit(kept_raw[kept_scale == s],
                                                    tp[kept_scale == s])
                            for s in scales[1:]}}
        log(f"# round {r + 1}: " + ", ".join(
            f"binning {s}: {np.sum(kept_scale == s)} kept, {np.sum(tp[kept_scale == s])} true"
            for s in scales))
    return {"scales": list(scales), "merge_radius_px": float(merge_radius),
            "calibration": {str(s): cals[s].to_dict() for s in scales[1:]},
            "fitted_on": {"simulator": "CTAOSkySimulator", "n_patches": int(n_patches),
                          "npix": 512, "seed": int(seed), "n_rounds": int(n_rounds),
                          "n_true_inside": int(np.sum(truth["inside"])),
                          "matching": "astro_asid.evaluate.ctao.match"}}


def main(argv=None):
    from astro_asid.nn.io import read_card, save_card, shipped_model_path, weights_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None,
                   help="asid-ctao model (.safetensors or card; default: the shipped one)")
    p.add_argument("--n-patches", type=int, default=64)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    p.add_argument("--merge-radius", type=float, default=8.0, help="unbinned pixels")
    p.add_argument("--dry-run", action="store_true", help="fit and print, do not write the card")
    a = p.parse_args(argv)
    path = a.weights or shipped_model_path("asid-ctao")
    entry = fit_scale_calibration(path, a.n_patches, a.seed, a.scales, a.merge_radius)
    entry["command"] = ("python -m astro_asid.training.ctao_scales "
                        + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    if a.dry_run:
        print(entry["fitted_on"])
        return entry
    card = read_card(path)
    card.setdefault("scale_calibration", {})["asid-ctao"] = entry
    save_card(path, card, weights_path(path, card))          # recomputes the sha256
    from astro_asid.detection.deep import clear_model_cache
    clear_model_cache()
    print(f"# wrote the scale calibration into {path}")
    return entry


if __name__ == "__main__":
    main()

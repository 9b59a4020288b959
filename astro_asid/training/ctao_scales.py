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

The same patches calibrate the detector's TS scan for wide sources
(`astro_asid.detection.extended`): its candidates that no network detection
of score >= 0.5 explains (after the merge, with the fitted scores) are
matched alone, and an isotonic fit of "is a true source" on sqrt(TS) gives
their score.

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
EXTENDED_TS_MIN = 9.0         # TS scan candidates kept for the fit (and by the detector)
EXTENDED_DROP_SCORE = 0.5     # network detections from this score up explain a candidate
SPECTRAL_INDEX = 2.2          # test spectrum of the TS scan (the survey's mean index)


def _detections(tabs, patch0):
    """Per-image detector tables -> one table with ``patch``/``x``/``y``/``raw``/``scale``."""
    rows = [Table({"patch": np.full(len(t), patch0 + i),
                   "x": np.asarray(t["x_centroid"], float),
                   "y": np.asarray(t["y_centroid"], float),
                   "raw": np.asarray(t["raw_score"], float),
                   "scale": np.asarray(t["scale"], int)})
            for i, t in enumerate(tabs) if len(t)]
    return vstack(rows) if rows else Table(names=("patch", "x", "y", "raw", "scale"))


def _merge(dets, cals, radius, binned_min_score=0.0):
    """Score every detection with its binning's calibration and merge each patch
    (binned detections below ``binned_min_score`` left out, as the detector does)."""
    from astro_asid.detection.multiscale import merge_scales

    dets = dets.copy()
    scale = np.asarray(dets["scale"])
    dets["score"] = np.zeros(len(dets))
    for s, cal in cals.items():
        dets["score"][scale == s] = cal(np.asarray(dets["raw"])[scale == s])
    dets = dets[(scale == 1) | (np.asarray(dets["score"]) >= binned_min_score)]
    scale, patch = np.asarray(dets["scale"]), np.asarray(dets["patch"])
    dets["x_centroid"], dets["y_centroid"] = dets["x"], dets["y"]
    kept = [merge_scales([dets[(patch == p) & (scale == s)] for s in cals], radius)
            for p in np.unique(patch)]
    return vstack(kept)


def _extended(batch, patch0, kernels, weights):
    """TS-scan candidates of every patch -> one table with ``patch``."""
    from astro_asid.detection.extended import extended_candidates

    psf = batch.psf_sigma_deg.to("deg").value
    rows = []
    for i in range(len(batch)):
        t = extended_candidates(np.asarray(batch.counts[i], float),
                                np.asarray(batch.background[i], float), psf, batch.cdelt,
                                kernels=kernels, weights=weights, ts_min=EXTENDED_TS_MIN)
        t = Table(t)
        t["patch"] = np.full(len(t), patch0 + i)
        rows.append(t)
    return vstack(rows)


def _fit_extended(cands, merged, truth, cdelt):
    """Calibration of the TS-scan candidates that the merged detections do not explain."""
    from astro_asid.detection.decoders import ScoreCalibration
    from astro_asid.detection.extended import drop_found
    from astro_asid.evaluate.ctao import match

    patch_c, patch_m = np.asarray(cands["patch"]), np.asarray(merged["patch"])
    kept = vstack([drop_found(cands[patch_c == p], merged[patch_m == p], cdelt,
                              EXTENDED_DROP_SCORE) for p in np.unique(patch_c)])
    kept["x"], kept["y"] = kept["x_centroid"], kept["y_centroid"]
    kept["score"] = np.sqrt(np.asarray(kept["ts"], float))
    order, tp, _ = match(kept, truth, cdelt)
    return ScoreCalibration.fit(np.asarray(kept["score"])[order], tp), len(kept), int(tp.sum())


def fit_scale_calibration(weights=None, n_patches=64, seed=1000, scales=DEFAULT_SCALES,
                          merge_radius=8.0, n_rounds=2, chunk=8, extended=True,
                          binned_min_score=0.5, log=print):
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
    extended : bool
        Also calibrate the TS scan for wide sources (``extended_search``).
    binned_min_score : float
        The detector's ``binned_min_score`` (the binned detections it keeps
        before the TS scan's candidates are compared with them).

    Returns
    -------
    dict
        The card's ``scale_calibration`` entry for ``asid-ctao``: ``scales``,
        ``merge_radius_px``, ``calibration`` (one
        `~astro_asid.detection.decoders.ScoreCalibration` dict per binning
        but 1, which keeps the card's own), ``extended_search`` (the TS
        scan's kernels, spectral weights, fallback PSF and calibration) and
        what it was fitted on.
    """
    from astro_asid.detection.extended import DEFAULT_KERNELS
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
    # share of a source's counts per band for the survey's mean spectrum and this response
    band_weights = sim.response.band_exposure_integrals(SPECTRAL_INDEX)[0]
    band_weights = band_weights / band_weights.sum()
    t0 = time.time()
    dets, truths, cands, done = [], [], [], 0
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
        if extended:
            cands.append(_extended(batch, done, DEFAULT_KERNELS, band_weights))
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
    entry = {"scales": list(scales), "merge_radius_px": float(merge_radius),
             "calibration": {str(s): cals[s].to_dict() for s in scales[1:]}}
    if extended:
        merged = _merge(dets, cals, merge_radius, binned_min_score)
        cal, n_kept, n_true = _fit_extended(vstack(cands), merged, truth, cdelt)
        log(f"# TS scan: {n_kept} candidates not explained by the network, {n_true} true")
        entry["extended_search"] = {
            "kernels": [list(k) for k in DEFAULT_KERNELS], "ts_min": EXTENDED_TS_MIN,
            "drop_score": EXTENDED_DROP_SCORE, "spectral_index": SPECTRAL_INDEX,
            "weights": band_weights.tolist(),
            "psf_sigma_deg": batch.psf_sigma_deg.to("deg").value.tolist(),
            "calibration": cal.to_dict(), "n_candidates": n_kept, "n_true": n_true}
    entry["fitted_on"] = {"simulator": "CTAOSkySimulator", "n_patches": int(n_patches),
                          "npix": 512, "seed": int(seed), "n_rounds": int(n_rounds),
                          "n_true_inside": int(np.sum(truth["inside"])),
                          "matching": "astro_asid.evaluate.ctao.match"}
    return entry


def main(argv=None):
    from astro_asid.nn.io import read_card, save_card, shipped_model_path, weights_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None,
                   help="asid-ctao model (.safetensors or card; default: the shipped one)")
    p.add_argument("--n-patches", type=int, default=64)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    p.add_argument("--merge-radius", type=float, default=8.0, help="unbinned pixels")
    p.add_argument("--no-extended", action="store_true",
                   help="do not calibrate the TS scan for wide sources")
    p.add_argument("--dry-run", action="store_true", help="fit and print, do not write the card")
    a = p.parse_args(argv)
    path = a.weights or shipped_model_path("asid-ctao")
    entry = fit_scale_calibration(path, a.n_patches, a.seed, a.scales, a.merge_radius,
                                  extended=not a.no_extended)
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

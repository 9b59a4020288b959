"""Benchmark source detection on simulated CTAO Galactic-plane-survey patches.

Patches come from `astro_asid.simulate.ctao.CTAOSkySimulator` (512 x 512
pixels of 0.02 deg, three bands 0.07-0.788-8.88-100 TeV, 20-40 sources,
prod3b-v2 South response, 20 h, hadronic + diffuse background). Detectors:

* ``gammapy-tsmap`` (the baseline): gammapy's `~gammapy.estimators.TSMapEstimator`
  on the patch's `~gammapy.datasets.MapDataset` GIVEN the true background and
  PSF (`astro_asid.simulate.ctao.to_gammapy_dataset`), one TS map over
  0.07-100 TeV with a point (or ``--kernel gauss``) power-law (index 2.2)
  kernel, then `gammapy.estimators.utils.find_peaks` on sqrt(TS) >= 2 with
  a 5-pixel (0.1 deg) minimum distance; the score is sqrt(TS) and the
  threshold is swept by the precision/recall curve. To stay fast the TS map
  is computed on 2 x 2 binned maps (``--ts-downsample``, 0.04 deg pixels;
  gammapy upsamples it back) and pixels whose first-guess TS is below 1 are
  not refitted.
* any registered astro_asid detector, run with `astro_asid.find_sources` on a
  `~astro_asid.SkyImage` of the ``(3, npix, npix)`` counts cube
  (``instrument="ctao"``) that also carries the true background, the PSF
  sigma per band and the exposure. By default the deep CTAO detector
  ``asid-ctao`` when it is registered (skipped with a message otherwise).
  Two variants of it: ``asid-ctao-no-ts-scan`` (the network on the map and
  its binned copies, without the TS scan for wide sources) and
  ``asid-ctao-single-scale`` (the network on the map alone).

Matching (`astro_asid.evaluate.ctao.match`): detections are visited by decreasing score over
all patches; each takes the nearest not-yet-matched true source of its patch
within ``max(0.1 deg, 2 sigma_PSF + sigma_src)``, with ``sigma_PSF`` the
Gaussian PSF sigma of the middle band (0.788-8.88 TeV, 0.030 deg) and
``sigma_src`` the source's Gaussian sigma (0 for point sources). A detection
whose nearest source within that radius lies outside the patch (rendered in
the 0.5 deg margin, its light spills in) counts neither as true nor as false.
Because matching goes by score, the detections above any threshold are
matched exactly as the full run, so one pass gives the whole
precision/recall curve.

Reported per detector: recall at precision 0.9 and its score threshold;
S90, the ``flux_1tev`` (cm-2 s-1 above 1 TeV) above which completeness at that
operating point is at least 0.9 in 0.25-dex bins (log-linear interpolation
between the last bin below 0.9 and the next one; ``n/a`` when the brightest
bin is below 0.9), and the same for the point-like sources alone (Gaussian
sigma < 0.1 deg, class C0: wide extended sources of high flux but low surface
brightness otherwise set S90 for every detector; stderr has the completeness
per flux bin for all, point-like and extended sources); the number of
detections and the wall time per patch (detection only: astro_asid detectors
run with ``characterize=False`` since 2026-11-24; before, the wall time included
the characteriser's network too). The
precision/recall curve is printed (sampled) to stderr and written in full
with ``--curves FILE.ecsv``.

Usage::

    python benchmarks/ctao_gps.py --quick              # 2 patches, about a minute
    python benchmarks/ctao_gps.py --n-patches 8 --seed 0
    python benchmarks/ctao_gps.py --detectors gammapy-tsmap asid-ctao tsmap
"""

import argparse
import sys
import time
import warnings

import numpy as np
from astropy import units as u
from astropy.table import Table, vstack

from astro_asid.evaluate.ctao import match, truth_table
from astro_asid.simulate.ctao import CRAB_FLUX_1TEV, CTAOSkySimulator, to_gammapy_dataset

BASELINE = "gammapy-tsmap"
DEEP = "asid-ctao"
SINGLE_SCALE = "asid-ctao-single-scale"   # asid-ctao on the map alone, not on binned copies
NO_SCAN = "asid-ctao-no-ts-scan"          # asid-ctao without its TS scan for wide sources
VARIANTS = (SINGLE_SCALE, NO_SCAN)
PRECISION = 0.9
FLUX_BINS = 10 ** np.arange(np.log10(1.5e-14), np.log10(2e-11) + 0.25, 0.25)
_DET_COLS = ("patch", "x", "y", "score")


# -- detectors ---------------------------------------------------------------------------------
def run_gammapy_tsmap(batch, kernel="point", kernel_sigma_deg=0.1, downsample=2,
                      min_sqrt_ts=2.0):
    """Baseline detections of all patches -> (Table patch/x/y/score, seconds per patch)."""
    from gammapy.estimators import TSMapEstimator
    from gammapy.estimators.utils import find_peaks
    from gammapy.modeling.models import (GaussianSpatialModel, PointSpatialModel,
                                         PowerLawSpectralModel, SkyModel)

    if kernel == "gauss":
        spatial = GaussianSpatialModel(sigma=kernel_sigma_deg * u.deg)
        width = max(0.3, 6 * kernel_sigma_deg) * u.deg
    else:
        spatial = PointSpatialModel()
        width = 0.3 * u.deg
    model = SkyModel(spatial_model=spatial, spectral_model=PowerLawSpectralModel(index=2.2))
    est = TSMapEstimator(kernel_model=model, kernel_width=width,
                         energy_edges=batch.energy_edges[[0, -1]],
                         downsampling_factor=downsample or None, threshold=1.0,
                         selection_optional=[])
    rows = []
    t0 = time.perf_counter()
    for i in range(len(batch)):
        ds = to_gammapy_dataset(batch, i, n_true_per_band=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = est.run(ds)
        image = maps["sqrt_ts"].get_image_by_idx((0,))
        image.data = np.nan_to_num(image.data, nan=0.0)
        peaks = find_peaks(image, threshold=min_sqrt_ts, min_distance=5)
        if len(peaks):
            rows.append(Table({"patch": np.full(len(peaks), i),
                               "x": np.asarray(peaks["x"], float),
                               "y": np.asarray(peaks["y"], float),
                               "score": np.asarray(peaks["value"], float)}))
    seconds = (time.perf_counter() - t0) / max(len(batch), 1)
    return _stack(rows), seconds


def make_astro_asid_detector(name):
    from astro_asid import get_detector
    if name == SINGLE_SCALE:
        return get_detector(DEEP, min_score=0.01, scales=(1,), extended_search=False)
    if name == NO_SCAN:
        return get_detector(DEEP, min_score=0.01, extended_search=False)
    if name == "tsmap":
        return get_detector("tsmap", background=None, ts_threshold=4.0)  # image.background
    try:
        return get_detector(name, min_score=0.01)
    except TypeError:
        return get_detector(name)


def run_astro_asid(name, batch):
    """An astro_asid detector on all patches -> (Table, seconds per patch)."""
    from astro_asid import find_sources
    from astro_asid.core import as_sky_image

    det = make_astro_asid_detector(name)
    sigma_pix = (batch.psf_sigma_deg.to_value(u.deg) / batch.cdelt).tolist()
    rows = []
    t0 = time.perf_counter()
    for i in range(len(batch)):
        img = as_sky_image(batch.counts[i], batch.wcs(i), energy_edges=batch.energy_edges,
                           instrument="ctao")
        img.unit = u.ct
        img.background = batch.background[i]
        img.psf = {"sigma_pix": sigma_pix}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # detection only: the benchmark scores positions and scores, and the
            # characteriser (likelihood extension classes with a known background)
            # would add its own time
            cat = find_sources(img, detector=det, characterize=False)
        if len(cat):
            rows.append(Table({"patch": np.full(len(cat), i),
                               "x": _plain(cat["x_centroid"]), "y": _plain(cat["y_centroid"]),
                               "score": _plain(cat["score"])}))
    seconds = (time.perf_counter() - t0) / max(len(batch), 1)
    return _stack(rows), seconds


def _plain(col):
    return np.asarray(np.ma.filled(np.ma.asarray(getattr(col, "value", col), float), np.nan))


def _stack(rows):
    return vstack(rows) if rows else Table({k: np.zeros(0) for k in _DET_COLS})


# -- scoring -----------------------------------------------------------------------------------
def pr_curve(preds, tp, order, n_true):
    """Precision and recall for thresholds at every distinct score (decreasing)."""
    score = np.asarray(preds["score"], float)[order]
    ctp = np.cumsum(tp)
    n = np.arange(1, len(tp) + 1)
    last = np.r_[np.flatnonzero(np.diff(score) != 0), len(score) - 1] if len(score) else \
        np.zeros(0, int)
    return Table({"threshold": score[last], "n_pred": n[last], "tp": ctp[last],
                  "precision": ctp[last] / n[last],
                  "recall": ctp[last] / n_true if n_true else np.full(len(last), np.nan)})


def operating_point(curve, precision=PRECISION):
    """Highest recall with precision >= ``precision`` -> (recall, threshold, n_pred)."""
    ok = np.asarray(curve["precision"]) >= precision
    if not ok.any():
        return 0.0, np.inf, 0
    j = np.flatnonzero(ok)[np.argmax(np.asarray(curve["recall"])[ok])]
    return float(curve["recall"][j]), float(curve["threshold"][j]), int(curve["n_pred"][j])


def completeness_vs_flux(flux, found, bins=FLUX_BINS):
    """Fraction found per log flux bin -> (bin centres, completeness, counts)."""
    idx = np.digitize(flux, bins) - 1
    nb = len(bins) - 1
    n = np.bincount(idx[(idx >= 0) & (idx < nb)], minlength=nb)
    k = np.bincount(idx[(idx >= 0) & (idx < nb)], weights=found[(idx >= 0) & (idx < nb)],
                    minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return np.sqrt(bins[:-1] * bins[1:]), comp, n


def s90(centres, comp, level=0.9):
    """Flux above which the binned completeness stays >= ``level`` (log-interpolated)."""
    good = np.isfinite(comp)
    c, f = comp[good], np.log10(centres[good])
    if not len(c) or c[-1] < level:
        return np.nan
    below = np.flatnonzero(c < level)
    if not len(below):
        return 10 ** f[0]
    j = below[-1]
    t = (level - c[j]) / (c[j + 1] - c[j])
    return 10 ** (f[j] + t * (f[j + 1] - f[j]))


def evaluate(name, preds, truth, cdelt):
    order, tp, found_at = match(preds, truth, cdelt)
    inside = truth[truth["inside"]]
    curve = pr_curve(preds, tp, order, len(inside))
    recall, thr, n_pred = operating_point(curve)
    found = found_at < n_pred
    flux = np.asarray(inside["flux_1tev"])
    centres, comp, n = completeness_vs_flux(flux, found)
    # the same operating point, point-like (C0, sigma < 0.1 deg) and extended sources apart
    point = np.asarray(inside["sigma_deg"]) < 0.1
    _, comp_pt, n_pt = completeness_vs_flux(flux[point], found[point])
    _, comp_ext, n_ext = completeness_vs_flux(flux[~point], found[~point])
    return dict(name=name, curve=curve, recall=recall, threshold=thr, n_pred=n_pred,
                s90=s90(centres, comp), flux_centres=centres, completeness=comp, n_bin=n,
                s90_point=s90(centres, comp_pt), completeness_point=comp_pt, n_point=n_pt,
                completeness_extended=comp_ext, n_extended=n_ext, n_det=len(order))


# -- report ------------------------------------------------------------------------------------
def _fmt(v, spec=".3g"):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:{spec}}"


def print_curve(res, file=sys.stderr):
    c = res["curve"]
    print(f"# {res['name']}: precision/recall curve (sampled)", file=file)
    if not len(c):
        print("#   no detections", file=file)
        return
    thr = np.asarray(c["threshold"])
    ladder = ((25, 15, 10, 7, 6, 5, 4.5, 4, 3.5, 3, 2.5, 2) if thr.max() > 1      # sqrt(TS)
              else (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05))  # 0..1
    levels = [t for t in ladder if t <= thr.max()]
    for t in levels:
        j = np.flatnonzero(thr >= t)[-1]           # the loosest threshold >= t
        print(f"#   score >= {t:5.2f}  precision {c['precision'][j]:.3f}  "
              f"recall {c['recall'][j]:.3f}  (n={c['n_pred'][j]})", file=file)
    print(f"# {res['name']}: completeness at its P>={PRECISION} point, by flux_1tev bin "
          "(all; point-like, sigma < 0.1 deg; extended)", file=file)
    for f, comp, n, cp, n_p, ce, n_e in zip(res["flux_centres"], res["completeness"],
                                           res["n_bin"], res["completeness_point"],
                                           res["n_point"], res["completeness_extended"],
                                           res["n_extended"]):
        if n:
            print(f"#   {f:9.2e}  {comp:5.2f}  (n={n});  {_fmt(cp, '.2f')} (n={n_p});  "
                  f"{_fmt(ce, '.2f')} (n={n_e})", file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-patches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 patches")
    parser.add_argument("--detectors", nargs="+",
                        help=f"detectors (default: {DEEP} when registered, and {BASELINE})")
    parser.add_argument("--livetime-h", type=float, default=20.0)
    parser.add_argument("--irf", default="prod3b-south")
    parser.add_argument("--kernel", choices=("point", "gauss"), default="point",
                        help="TS-map kernel of the baseline")
    parser.add_argument("--kernel-sigma", type=float, default=0.1,
                        help="sigma (deg) of the gauss kernel")
    parser.add_argument("--ts-downsample", type=int, default=2,
                        help="TS map on maps binned by this factor (0: full resolution)")
    parser.add_argument("--curves", help="write all precision/recall curves to this ECSV")
    args = parser.parse_args(argv)

    n = 2 if args.quick else args.n_patches
    from astro_asid import list_detectors
    available = set(list_detectors()["name"])
    names = args.detectors or ([DEEP] if DEEP in available else []) + [BASELINE]
    if not args.detectors and DEEP not in available:
        print(f"# {DEEP} is not registered: skipped (only the {BASELINE} baseline runs)",
              file=sys.stderr)

    t0 = time.perf_counter()
    sim = CTAOSkySimulator(seed=args.seed, livetime_h=args.livetime_h, irf=args.irf)
    batch = sim.sample_patches(n)
    truth = truth_table(batch)
    n_in = int(np.sum(truth["inside"]))
    print(f"# simulated {n} patches ({n_in} sources inside) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    results, timing = [], {}
    for name in names:
        if name not in (BASELINE,) + VARIANTS and name not in available:
            print(f"# {name} is not registered: skipped", file=sys.stderr)
            continue
        try:
            if name == BASELINE:
                preds, sec = run_gammapy_tsmap(batch, args.kernel, args.kernel_sigma,
                                               args.ts_downsample)
            else:
                preds, sec = run_astro_asid(name, batch)
        except Exception as exc:  # a broken detector must not stop the others
            print(f"# {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        res = evaluate(name, preds, truth, batch.cdelt)
        timing[name] = sec
        results.append(res)
        print(f"# {name}: R@P{PRECISION}={res['recall']:.3f} S90={_fmt(res['s90'])} "
              f"{sec:.2f} s/patch", file=sys.stderr, flush=True)
        print_curve(res)

    kern = args.kernel if args.kernel == "point" else f"gauss {args.kernel_sigma} deg"
    print(f"\n## CTAO GPS patches: {n} x 512x512, seed {args.seed}, {args.livetime_h:g} h, "
          f"{args.irf}, {n_in} true sources (baseline kernel: {kern})\n")
    print(f"| detector | recall @ P>={PRECISION} | score threshold | detections kept | "
          "S90 flux_1tev (cm-2 s-1) | S90 (Crab) | S90 point-like | detections | s/patch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['recall']:.3f} | {_fmt(r['threshold'], '.2f')} | "
              f"{r['n_pred']} | {_fmt(r['s90'], '.2e')} | {_fmt(r['s90'] / CRAB_FLUX_1TEV)} | "
              f"{_fmt(r['s90_point'], '.2e')} | {r['n_det']} | {timing[r['name']]:.2f} |")
    if args.curves and results:
        tabs = []
        for r in results:
            t = r["curve"].copy()
            t["detector"] = r["name"]
            tabs.append(t)
        vstack(tabs).write(args.curves, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

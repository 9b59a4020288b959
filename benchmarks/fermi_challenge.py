"""Benchmark the detectors on the Fermi-LAT data challenge (catalog 400).

For each detector and each Poisson draw (seed) of the 768 expected-counts patches, run the
detector on every patch, keep the detections inside the field (the truth list holds only
sources whose WCS pixel position is inside [0, 63.5)), and score them with the paper's
protocol (`astro_asid.evaluate.challenge`). Reports, as mean +- std over seeds, on patches
64-767 (the public test set, patches 0-63 were used to calibrate instrument facts) and on
all 768:

* recall at precision 0.88 / 0.90 / 0.95 / 0.97 (threshold swept over ``score``);
* precision and recall at the detector's own default operating point;
* S90 (lowest flux_1000 above which precision and completeness are both >= 0.9);
* the position error of true positives (median, 68%, fraction within 0.15 deg);
* inference time per patch on this machine (batched for the deep detectors).

``tsmap-oracle`` is the likelihood TS-map detector GIVEN the true background and the PSF
(the reference the paper quotes); ``tsmap`` estimates the background from the data.
``--robustness`` adds a table where the challenge background is replaced by this package's
alternative background models and scaled by x0.5 and x2 (same sources).

Usage::

    python benchmarks/fermi_challenge.py --seeds 5
    python benchmarks/fermi_challenge.py --quick          # 2 seeds, fewer detectors
    python benchmarks/fermi_challenge.py --detectors asid-unet tsmap-oracle --robustness

Needs the challenge files (``../shared/data/fermi-data-challenge`` or ``ASID_CHALLENGE_DIR``).
"""

import argparse
import sys
import time
import warnings

import numpy as np
from astropy.table import Table, vstack

from astro_asid import get_detector, list_detectors
from astro_asid.core import as_sky_image
from astro_asid.evaluate.challenge import (
    CHALLENGE_ENERGY_EDGES, load_challenge, patch_pixel_to_sky, poisson_draw,
    position_error_stats, precision_recall_curve, recall_at_precision, s90, score_catalog,
)

PRECISIONS = (0.88, 0.90, 0.95, 0.97)
DEEP = ("asid-unet", "unek", "centroidnet", "cedirnet")
CLASSICAL = ("tsmap-oracle", "tsmap", "peaks", "dao")
FIELD_MAX = 63.5


def psf_sigma_pix():
    """Gaussian PSF sigma per band in patch pixels (calibrated instrument facts)."""
    try:
        from astro_asid.simulate.instrument import psf_sigma_pix as calibrated

        return np.asarray(calibrated(), float)
    except (ImportError, AttributeError, TypeError):
        # README of the challenge: effective 68% containment radii per band, deg
        r68 = np.array([0.96, 0.60, 0.40, 0.24, 0.21])
        return r68 / 1.5096 / (10 / 64)


def make_detector(name):
    if name == "tsmap-oracle":
        return get_detector("tsmap", background=None, ts_threshold=4.0)  # uses image.background
    if name == "tsmap":
        return get_detector("tsmap", background="estimate", ts_threshold=4.0)
    if name in ("peaks", "dao"):
        return get_detector(name, nsigma=2.0)
    return get_detector(name, min_score=0.01)


def run_detector(name, det, counts, chal, background=None):
    """Detections of one detector on all patches -> (Table patch/x/y/lon/lat/score, seconds)."""
    rows = []
    t0 = time.perf_counter()
    if hasattr(det, "detect_arrays"):
        tables = []
        for start in range(0, len(counts), 128):
            tables += det.detect_arrays(counts[start:start + 128])
    else:
        sigma = psf_sigma_pix()
        tables = []
        for i in range(len(counts)):
            img = as_sky_image(counts[i], chal.wcs(i), energy_edges=CHALLENGE_ENERGY_EDGES,
                               instrument="fermi-lat")
            img.psf = {"sigma_pix": sigma}
            if name == "tsmap-oracle":
                img.background = background[i]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tables.append(det.detect(img))
    seconds = time.perf_counter() - t0
    for i, t in enumerate(tables):
        if len(t) == 0:
            continue
        x = np.asarray(getattr(t["x_centroid"], "value", t["x_centroid"]), float)
        y = np.asarray(getattr(t["y_centroid"], "value", t["y_centroid"]), float)
        inside = (x >= 0) & (x < FIELD_MAX) & (y >= 0) & (y < FIELD_MAX)
        if not inside.any():
            continue
        lon, lat = patch_pixel_to_sky(chal.patch_lon[i], chal.patch_lat[i], x[inside], y[inside])
        rows.append(Table({"patch": np.full(inside.sum(), i), "x": x[inside], "y": y[inside],
                           "lon": lon, "lat": lat,
                           "score": np.asarray(t["score"], float)[inside]}))
    preds = vstack(rows) if rows else Table(names=("patch", "x", "y", "lon", "lat", "score"))
    return preds, seconds


def metrics(preds, truth, patches):
    sel_p = np.isin(np.asarray(preds["patch"]), patches)
    sel_t = np.isin(np.asarray(truth["patch"]), patches)
    p, t = preds[sel_p], truth[sel_t]
    curve = precision_recall_curve(p, t)
    out = {f"R@P{q:.2f}": recall_at_precision(curve, q) for q in PRECISIONS}
    sc = score_catalog(p, t, order="score")
    out["P(all)"] = sc.precision
    out["R(all)"] = sc.recall
    out["S90"] = s90(sc, t)
    pos = position_error_stats(sc)
    out.update({"pos_med": pos["median"], "pos_68": pos["q68"], "f<0.15": pos["frac_within"]})
    return out


def summarise(values):
    arr = np.array(values, float)
    if np.all(np.isnan(arr)):
        return "n/a"
    m, s = np.nanmean(arr), np.nanstd(arr)
    fmt = ".3g" if abs(m) < 1e-3 and m != 0 else ".3f"
    return f"{m:{fmt}} ± {s:{fmt}}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="challenge directory")
    parser.add_argument("--seeds", type=int, default=5, help="number of Poisson draws")
    parser.add_argument("--detectors", nargs="+", help="detectors (default: all available)")
    parser.add_argument("--quick", action="store_true", help="2 seeds")
    parser.add_argument("--robustness", action="store_true",
                        help="also swap/scale the background (deep detectors and tsmap)")
    args = parser.parse_args(argv)

    chal = load_challenge(args.data)
    truth = chal.truth
    available = set(list_detectors()["name"])
    names = args.detectors or [d for d in DEEP + CLASSICAL
                               if d in available or d.startswith("tsmap")]
    seeds = range(2 if args.quick else args.seeds)
    sets = {"64-767": np.arange(64, 768), "all 768": np.arange(768)}
    results = {(n, s): [] for n in names for s in sets}
    timing = {n: [] for n in names}
    for seed in seeds:
        counts = poisson_draw(chal.expected, seed=seed)
        for name in names:
            det = make_detector(name)
            preds, sec = run_detector(name, det, counts, chal, background=chal.background)
            timing[name].append(sec / len(counts))
            for sname, patches in sets.items():
                results[(name, sname)].append(metrics(preds, truth, patches))
            m = results[(name, "64-767")][-1]
            print(f"# seed {seed} {name:13s} R@P0.88={m['R@P0.88']:.3f} "
                  f"R@P0.97={m['R@P0.97']:.3f} P/R(all)={m['P(all)']:.3f}/{m['R(all)']:.3f} "
                  f"{1e3 * sec / len(counts):.1f} ms/patch", file=sys.stderr, flush=True)

    keys = [f"R@P{q:.2f}" for q in PRECISIONS] + ["P(all)", "R(all)", "S90", "pos_med",
                                                   "pos_68", "f<0.15"]
    print(f"\n## Fermi-LAT data challenge, catalog 400 ({len(seeds)} Poisson seeds, mean ± std)\n")
    for sname in sets:
        print(f"\n### patches {sname}\n")
        print("| detector | " + " | ".join(keys) + " | ms/patch |")
        print("|---" * (len(keys) + 2) + "|")
        for name in names:
            vals = results[(name, sname)]
            cells = [summarise([v[k] for v in vals]) for k in keys]
            print(f"| {name} | " + " | ".join(cells)
                  + f" | {1e3 * np.mean(timing[name]):.1f} |")

    if args.robustness:
        robustness(chal, truth, [n for n in names if n != "tsmap-oracle"], seeds)
    return 0


def robustness(chal, truth, names, seeds):
    """Recall at precision 0.88 with the background swapped or scaled (same sources)."""
    from astro_asid.simulate import FermiSkySimulator

    variants = {"B1 (challenge)": chal.background, "B1 x0.5": 0.5 * chal.background,
                "B1 x2": 2.0 * chal.background}
    for model in ("b2", "b3"):
        sim = FermiSkySimulator(background=model, seed=0)
        variants[f"{model.upper()} (ours)"] = sim.expected_background(chal.patch_lon,
                                                                      chal.patch_lat)
    patches = np.arange(64, 768)
    print("\n### robustness: recall at precision 0.88, patches 64-767\n")
    print("| detector | " + " | ".join(variants) + " | worst relative drop |")
    print("|---" * (len(variants) + 2) + "|")
    for name in names:
        det = make_detector(name)
        rec = {}
        for vname, bkg in variants.items():
            vals = []
            for seed in seeds:
                counts = poisson_draw(bkg + chal.agn + chal.psr, seed=seed)
                preds, _ = run_detector(name, det, counts, chal, background=bkg)
                vals.append(metrics(preds, truth, patches)["R@P0.88"])
            rec[vname] = vals
        base = np.nanmean(rec["B1 (challenge)"])
        swapped = [np.nanmean(v) for k, v in rec.items() if "ours" in k]
        drop = (base - min(swapped)) / base if base > 0 and swapped else np.nan
        print(f"| {name} | " + " | ".join(summarise(v) for v in rec.values())
              + f" | {100 * drop:.1f}% |")


if __name__ == "__main__":
    sys.exit(main())

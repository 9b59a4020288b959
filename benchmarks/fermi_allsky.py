"""Benchmark: a simulated full-sky Fermi-LAT HEALPix cube -> one merged catalog.

1. Simulate a full-sky nside-256, 5-band count cube with known sources
   (`astro_asid.simulate.FermiSkySimulator.sample_allsky`; a simple built-in
   simulation when that is not available), saved to ``--workdir``.
2. In a fresh child process (so that its peak memory is the pipeline's own),
   load the cube and run `astro_asid.instruments.fermi.find_sources_healpix`
   (tile into the data challenge's 768 overlapping 10x10 deg patches, detect,
   keep central detections, merge duplicates). Wall time, its breakdown
   (geometry, resampling, detection, merging) and the peak RSS are recorded.
3. Score the merged catalog against the truth: a detection is a true positive
   when an unmatched true source lies within 0.3 deg (the brightest such, as in
   the challenge's protocol, visited by decreasing score). Reports precision
   and recall by latitude and by ``flux_1000``, and the duplicates: pairs of
   catalog sources closer than 0.2 deg (and 0.3 deg) that are not two real,
   distinct sources.

The tiling/merging overhead (everything but the detector) is reported separately
so that the time with a faster detector can be projected:
``total(detector) ~ overhead + n_tiles * time_per_tile(detector)``.

Usage::

    python benchmarks/fermi_allsky.py                       # tsmap, full sky (slow on 2 cores)
    python benchmarks/fermi_allsky.py --tiles 0:96          # a quick subset of tiles
    python benchmarks/fermi_allsky.py --detector asid-unet --resample area
    python benchmarks/fermi_allsky.py --repeat-geometry     # also time a warm second call
    python benchmarks/fermi_allsky.py --oracle              # tsmap given the true background
    python benchmarks/fermi_allsky.py --detector asid-unet --weights path/to/asid-unet
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.table import QTable, Table

HERE = Path(__file__).resolve().parent
MATCH_RADIUS = 0.3      # deg, the challenge's
DUP_RADII = (0.2, 0.3)  # deg
LAT_BINS = (0, 5, 10, 30, 90)
FLUX_BINS = np.logspace(-11, -7, 9)  # flux_1000, cm-2 s-1


# -- simulation ----------------------------------------------------------------------------
def _simple_allsky(nside, seed):
    """Fallback all-sky simulation: Gaussian-PSF point sources on a disk + isotropic sky."""
    import healpy as hp

    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    lon, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    # background counts per nside-256 pixel and band (challenge-like medians, plane brighter)
    base = np.array([11.0, 6.0, 3.9, 0.56, 0.15]) * (12 * 256 ** 2 / npix)
    bkg = base[:, None] * (1 + 20 * np.exp(-0.5 * (lat / 2.0) ** 2)
                           * np.exp(-0.5 * (((lon + 180) % 360 - 180) / 60) ** 2))[None]
    n_src = 5000
    s_lon = rng.uniform(0, 360, n_src)
    s_lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n_src)))
    flux = 1e-10 * (rng.pareto(0.8, n_src) + 1) * 0.3   # flux_1000-like, cm-2 s-1
    counts_per_flux = np.array([1.0, 1.1, 1.0, 0.35, 0.12]) * 2.5e11  # counts per cm-2 s-1
    sigma = np.array([0.96, 0.60, 0.40, 0.24, 0.21]) / 1.5096
    expected = bkg.copy()
    for b in range(5):
        vec = hp.ang2vec(s_lon, s_lat, lonlat=True)
        for i in range(n_src):
            pix = hp.query_disc(nside, vec[i], np.deg2rad(4 * sigma[b]))
            d = np.rad2deg(hp.rotator.angdist(vec[i], hp.pix2vec(nside, pix)))
            prof = np.exp(-0.5 * (d / sigma[b]) ** 2)
            expected[b, pix] += flux[i] * counts_per_flux[b] * prof / prof.sum()
    counts = rng.poisson(expected).astype(np.float32)
    truth = Table(dict(lon=s_lon, lat=s_lat, flux_1000=flux))
    return counts, truth, bkg


def simulate(nside, seed, workdir):
    path = Path(workdir) / f"allsky_nside{nside}_seed{seed}.npz"
    tpath = path.with_suffix(".truth.ecsv")
    if path.exists() and tpath.exists():
        return path, tpath, "cached"
    t0 = time.perf_counter()
    try:
        from astro_asid.simulate import FermiSkySimulator

        counts, truth, _, background = FermiSkySimulator(seed=seed).sample_allsky(
            nside=nside, return_expected=True)
        how = "FermiSkySimulator.sample_allsky"
    except (ImportError, AttributeError) as exc:
        print(f"FermiSkySimulator.sample_allsky unavailable ({exc}); using the simple simulation")
        counts, truth, background = _simple_allsky(nside, seed)
        how = "simple built-in simulation"
    np.savez(path, counts=np.asarray(counts, np.float32), nside=nside,
             background=np.asarray(background, np.float32))
    Table(truth).write(tpath, overwrite=True)
    print(f"simulated with {how} in {time.perf_counter() - t0:.1f} s")
    return path, tpath, how


# -- child: the measured run ---------------------------------------------------------------
def child(args):
    t_import = time.perf_counter()
    from astro_asid.instruments.fermi import find_sources_healpix
    from astro_asid.plugins.manager import get_registry

    get_registry()  # plugin loading (torch import) is start-up cost, timed on its own
    t_loaded = time.perf_counter()
    with np.load(args.map) as f:
        counts = f["counts"]
        nside = int(f["nside"])
        background = f["background"] if args.oracle else None
    options = dict(nside=nside, detector=args.detector, grid_nside=args.grid_nside,
                   resample=args.resample, seed=args.seed, tiles=_tiles(args.tiles),
                   background=background)
    if args.detector == "tsmap":
        options["ts_threshold"] = args.ts_threshold
    if args.weights:
        from astro_asid import get_detector

        options["detector"] = get_detector(args.detector, weights=args.weights)
    t0 = time.perf_counter()
    c0 = time.process_time()
    cat = find_sources_healpix(counts, **options)
    wall = time.perf_counter() - t0
    result = {"wall_s": wall, "cpu_s": time.process_time() - c0,
              "timing_s": cat.meta["timing_s"],
              "startup_s": t_loaded - t_import,
              "n_tiles": cat.meta["tiling"]["n_tiles"],
              "n_detections_tiles": cat.meta["n_detections_tiles"],
              "n_detections_central": cat.meta["n_detections_central"],
              "n_duplicates_merged": cat.meta["n_duplicates_merged"],
              "n_sources": len(cat)}
    if args.repeat_geometry:
        t0 = time.perf_counter()
        cat2 = find_sources_healpix(counts, **options)
        result["wall_warm_s"] = time.perf_counter() - t0
        result["timing_warm_s"] = cat2.meta["timing_s"]
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    cat.write(args.out_catalog, overwrite=True)
    Path(args.out_json).write_text(json.dumps(result, indent=1))


def _tiles(spec):
    if not spec:
        return None
    if ":" in spec:
        a, b = spec.split(":")
        return np.arange(int(a), int(b))
    return np.array([int(v) for v in spec.split(",")])


# -- scoring -------------------------------------------------------------------------------
def match(cat_lon, cat_lat, order, truth_lon, truth_lat, truth_flux, radius=MATCH_RADIUS):
    """Challenge-style matching: returns (truth index or -1 per detection)."""
    from scipy.spatial import cKDTree

    from astro_asid.instruments.merge import lonlat_to_unit

    tv = lonlat_to_unit(truth_lon, truth_lat)
    cv = lonlat_to_unit(cat_lon, cat_lat)
    chord = 2 * np.sin(np.deg2rad(radius) / 2)
    tree = cKDTree(tv)
    used = np.zeros(len(truth_lon), bool)
    out = np.full(len(cat_lon), -1)
    for i in order:
        cand = [j for j in tree.query_ball_point(cv[i], chord) if not used[j]]
        if cand:
            j = max(cand, key=lambda k: truth_flux[k])
            used[j] = True
            out[i] = j
    return out


def score(cat, truth):
    from astro_asid.instruments.merge import close_pairs

    lon = cat["sky_centroid"].l.deg
    lat = cat["sky_centroid"].b.deg
    order = np.argsort(-np.asarray(cat["score"], float), kind="stable")
    t_lon = np.asarray(truth["lon"], float)
    t_lat = np.asarray(truth["lat"], float)
    t_flux = np.asarray(truth["flux_1000"], float)
    m = match(lon, lat, order, t_lon, t_lat, t_flux)
    tp = m >= 0
    detected = np.zeros(len(truth), bool)
    detected[m[tp]] = True
    out = {"n_detections": int(len(cat)), "tp": int(tp.sum()), "fp": int((~tp).sum()),
           "n_true": int(len(truth)),
           "precision": float(tp.mean()) if len(cat) else float("nan")}
    rows = []
    for lo, hi in zip(LAT_BINS[:-1], LAT_BINS[1:]):
        c_in = (np.abs(lat) >= lo) & (np.abs(lat) < hi)
        t_in = (np.abs(t_lat) >= lo) & (np.abs(t_lat) < hi)
        bright = t_in & (t_flux > 1e-9)
        rows.append({"abs_b": f"{lo}-{hi}", "n_det": int(c_in.sum()),
                     "precision": float(tp[c_in].mean()) if c_in.any() else float("nan"),
                     "recall_all": float(detected[t_in].mean()) if t_in.any() else float("nan"),
                     "recall_flux_gt_1e-9": float(detected[bright].mean()) if bright.any()
                     else float("nan")})
    out["by_latitude"] = rows
    rows = []
    for lo, hi in zip(FLUX_BINS[:-1], FLUX_BINS[1:]):
        t_in = (t_flux >= lo) & (t_flux < hi)
        rows.append({"flux_1000": f"{lo:.1e}-{hi:.1e}", "n_true": int(t_in.sum()),
                     "recall": float(detected[t_in].mean()) if t_in.any() else float("nan"),
                     "recall_abs_b_gt_10": float(detected[t_in & (np.abs(t_lat) > 10)].mean())
                     if (t_in & (np.abs(t_lat) > 10)).any() else float("nan")})
    out["by_flux"] = rows
    # duplicates: close pairs that are not two distinct real sources
    dup = {}
    for r in DUP_RADII:
        pairs, sep = close_pairs(lon, lat, r)
        both_real = (m[pairs[:, 0]] >= 0) & (m[pairs[:, 1]] >= 0) & \
            (m[pairs[:, 0]] != m[pairs[:, 1]]) if len(pairs) else np.zeros(0, bool)
        # a pair is a duplicate when its two members sit on the same true source (the
        # second one unmatched) or neither is real
        dup[f"pairs_lt_{r}deg"] = int(len(pairs))
        dup[f"pairs_lt_{r}deg_not_both_real"] = int((~both_real).sum())
        dup[f"pairs_lt_{r}deg_cross_tile"] = int(
            (np.asarray(cat["tile"])[pairs[:, 0]] != np.asarray(cat["tile"])[pairs[:, 1]]).sum()
        ) if len(pairs) else 0
    # true sources with more than one detection within the matching radius
    from astro_asid.instruments.merge import lonlat_to_unit
    from scipy.spatial import cKDTree

    tree = cKDTree(lonlat_to_unit(lon, lat)) if len(cat) else None
    chord = 2 * np.sin(np.deg2rad(MATCH_RADIUS) / 2)
    if tree is not None:
        near = tree.query_ball_point(lonlat_to_unit(t_lon[detected], t_lat[detected]), chord)
        multi = int(sum(len(v) > 1 for v in near))
    else:
        multi = 0
    dup["detected_sources_with_2plus_detections_within_0.3deg"] = multi
    dup["duplicate_rate"] = multi / max(int(detected.sum()), 1)
    out["duplicates"] = dup
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nside", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--detector", default="tsmap")
    p.add_argument("--ts-threshold", type=float, default=25.0)
    p.add_argument("--weights", default="", help="weights file of a deep detector")
    p.add_argument("--grid-nside", type=int, default=8)
    p.add_argument("--resample", default="split", choices=("split", "area", "nearest"))
    p.add_argument("--oracle", action="store_true",
                   help="give the detector the true expected background (tsmap oracle mode)")
    p.add_argument("--tiles", default="", help="subset of tiles, 'a:b' or 'i,j,k'")
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--repeat-geometry", action="store_true",
                   help="run twice in the child and report the warm (cached geometry) time")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--map", help=argparse.SUPPRESS)
    p.add_argument("--out-json", help=argparse.SUPPRESS)
    p.add_argument("--out-catalog", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    mpath, tpath, how = simulate(args.nside, args.seed, args.workdir)
    tag = f"{args.detector}{'-oracle' if args.oracle else ''}_{args.resample}_" \
        f"g{args.grid_nside}_s{args.seed}" + \
        (f"_t{args.tiles.replace(':', '-').replace(',', '_')}" if args.tiles else "")
    out_json = Path(args.workdir) / f"fermi_allsky_{tag}.json"
    out_cat = Path(args.workdir) / f"fermi_allsky_{tag}.ecsv"
    cmd = [sys.executable, __file__, "--child", "--map", str(mpath), "--out-json", str(out_json),
           "--out-catalog", str(out_cat), "--detector", args.detector, "--grid-nside",
           str(args.grid_nside), "--resample", args.resample, "--seed", str(args.seed),
           "--ts-threshold", str(args.ts_threshold), "--tiles", args.tiles]
    if args.repeat_geometry:
        cmd.append("--repeat-geometry")
    if args.oracle:
        cmd.append("--oracle")
    if args.weights:
        cmd += ["--weights", args.weights]
    subprocess.run(cmd, check=True)
    run = json.loads(out_json.read_text())
    cat = QTable.read(out_cat)
    truth = Table.read(tpath)
    tiles = _tiles(args.tiles)
    if tiles is not None:
        # score only the sky the searched tiles own
        from astro_asid.instruments.fermi import HealpixTiling

        til = HealpixTiling(args.nside, grid_nside=args.grid_nside, tiles=tiles)
        t_lon = np.asarray(truth["lon"], float)
        t_lat = np.asarray(truth["lat"], float)
        # a true source counts when a searched tile holds it well inside (4 px margin)
        inside = np.zeros(len(truth), bool)
        for t in range(til.n_tiles):
            x, y = til.sky_to_pixel(np.full(len(truth), t), t_lon, t_lat)
            inside |= np.maximum(np.abs(x - til.centre_pixel),
                                 np.abs(y - til.centre_pixel)) < til.tile_npix / 2 - 4
        truth = truth[inside]
    res = score(cat, truth)
    t = run["timing_s"]
    overhead = t["total"] - t["detect"]
    print(f"\nsimulation: {how}; nside {args.nside}, 5 bands, {len(truth)} true sources scored")
    print(f"detector {args.detector} (resample={args.resample}, grid_nside={args.grid_nside}, "
          f"{run['n_tiles']} tiles)")
    print(f"wall time find_sources_healpix: {run['wall_s']:.1f} s, CPU time {run['cpu_s']:.1f} s "
          f"(plugin/torch start-up {run['startup_s']:.1f} s not included; on a loaded machine "
          "the CPU time is the better measure)")
    print("  breakdown: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    print(f"  tiling + merging overhead (all but the detector): {overhead:.1f} s; "
          f"detector: {t['detect']:.1f} s = {t['detect'] / run['n_tiles']:.3f} s per tile")
    if "wall_warm_s" in run:
        tw = run["timing_warm_s"]
        print(f"  second call (geometry cached): {run['wall_warm_s']:.1f} s, overhead "
              f"{tw['total'] - tw['detect']:.1f} s")
    print(f"peak RSS of the child process: {run['peak_rss_gb']:.2f} GB")
    print(f"detections in tiles {run['n_detections_tiles']}, central {run['n_detections_central']}"
          f", merged away {run['n_duplicates_merged']}, catalog {run['n_sources']}")
    print(f"\nprecision {res['precision']:.3f} (TP {res['tp']}, FP {res['fp']})")
    print(Table(res["by_latitude"]))
    print(Table(res["by_flux"]))
    print(json.dumps(res["duplicates"], indent=1))
    summary = {"args": vars(args), "run": run, "score": res}
    (Path(args.workdir) / f"fermi_allsky_{tag}_summary.json").write_text(
        json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()

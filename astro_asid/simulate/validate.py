"""Compare simulated patches with the data challenge (``python -m astro_asid.simulate.validate``).

Simulates patches at the 768 challenge centres with the B1 background and
prints, side by side with the challenge's expected-counts maps and truth:

* total expected background and source counts per patch and band (mean,
  median, 10th and 90th percentiles);
* number of true sources per patch, split in AGN and pulsars;
* the ``flux_1000`` distribution of the true sources;
* the fraction of sources with more than 5, 20, 100, 300 expected counts (summed over bands;
  for the challenge estimated from its ``flux_1000`` and ``flux_10000`` with the
  calibrated response, as its truth gives no counts).

The challenge's truth is only compared with, never fitted to.
"""

import argparse
import sys

import numpy as np

__all__ = ["compare_with_challenge", "format_comparison", "measure_speed", "main"]


_LEVELS = (5, 20, 100, 300)


def _pct(a):
    a = np.asarray(a, float)
    return dict(mean=float(np.mean(a)), p10=float(np.percentile(a, 10)),
                median=float(np.median(a)), p90=float(np.percentile(a, 90)))


def compare_with_challenge(challenge, sim=None, seed=0, n_repeat=1):
    """Statistics of simulated vs challenge patches at the same centres.

    Parameters
    ----------
    challenge : `~astro_asid.evaluate.challenge.FermiChallenge`
    sim : `~astro_asid.simulate.FermiSkySimulator`, optional
        Default: B1, flat luminosity function, exposure 1.
    n_repeat : int, optional
        Simulated realizations of the 768 centres.

    Returns
    -------
    dict
        Nested dict of statistics (``"challenge"`` and ``"simulated"``).
    """
    from astro_asid.simulate import FermiSkySimulator
    from astro_asid.simulate.calibrate import band_flux_predictor
    sim = sim or FermiSkySimulator(seed=seed)
    out = {"challenge": {}, "simulated": {}}
    ch = out["challenge"]
    ch["background"] = [_pct(challenge.background[:, b].sum(axis=(1, 2))) for b in range(5)]
    src = challenge.agn + challenge.psr
    ch["sources_counts"] = [_pct(src[:, b].sum(axis=(1, 2))) for b in range(5)]
    t = challenge.truth
    per = np.bincount(t["patch"], minlength=challenge.n_patches)
    ch["n_sources"] = _pct(per)
    ch["n_agn"] = float(np.mean(np.bincount(t["patch"][t["cls"] == 0],
                                            minlength=challenge.n_patches)))
    ch["n_psr"] = float(np.mean(np.bincount(t["patch"][t["cls"] == 1],
                                            minlength=challenge.n_patches)))
    ch["log10_flux_1000"] = _pct(np.log10(t["flux_1000"]))
    pred = band_flux_predictor()(np.asarray(t["cls"]),
                                 np.asarray(t["flux_10000"]) / np.asarray(t["flux_1000"]))
    est = sim.response.counts(pred * np.asarray(t["flux_1000"])[:, None] / sim.exposure_scale)
    ch["frac_above_counts"] = {k: float(np.mean(est.sum(axis=1) > k)) for k in _LEVELS}

    bk, sc, nsrc, nagn, npsr, flux, above = [], [], [], [], [], [], []
    for _ in range(n_repeat):
        batch = sim.sample_patches(challenge.n_patches, lon=challenge.patch_lon,
                                   lat=challenge.patch_lat)
        bk.append(batch.background.sum(axis=(2, 3)))
        sc.append((batch.expected - batch.background).sum(axis=(2, 3)))
        tt = batch.truth()
        nsrc.append(np.bincount(tt["patch"], minlength=len(batch)))
        nagn.append(np.mean(np.bincount(tt["patch"][tt["cls"] == 0], minlength=len(batch))))
        npsr.append(np.mean(np.bincount(tt["patch"][tt["cls"] == 1], minlength=len(batch))))
        flux.append(np.log10(np.asarray(tt["flux_1000"])))
        above.append(np.asarray(tt["counts_band"]).sum(axis=1))
    bk, sc = np.concatenate(bk), np.concatenate(sc)
    si = out["simulated"]
    si["background"] = [_pct(bk[:, b]) for b in range(5)]
    si["sources_counts"] = [_pct(sc[:, b]) for b in range(5)]
    si["n_sources"] = _pct(np.concatenate(nsrc))
    si["n_agn"] = float(np.mean(nagn))
    si["n_psr"] = float(np.mean(npsr))
    si["log10_flux_1000"] = _pct(np.concatenate(flux))
    tot = np.concatenate(above)
    si["frac_above_counts"] = {k: float(np.mean(tot > k)) for k in _LEVELS}
    return out


def format_comparison(res):
    """The comparison as a reStructuredText/markdown-style table (str)."""
    lines = ["| quantity | challenge | simulated |", "|---|---|---|"]
    c, s = res["challenge"], res["simulated"]

    def f(d):
        return f"{d['mean']:.4g} ({d['p10']:.3g} / {d['median']:.3g} / {d['p90']:.3g})"
    for b in range(5):
        lines.append(f"| background counts/patch, band {b} | {f(c['background'][b])} | "
                     f"{f(s['background'][b])} |")
    for b in range(5):
        lines.append(f"| source counts/patch, band {b} | {f(c['sources_counts'][b])} | "
                     f"{f(s['sources_counts'][b])} |")
    lines.append(f"| sources/patch | {f(c['n_sources'])} | {f(s['n_sources'])} |")
    lines.append(f"| AGN / pulsars per patch | {c['n_agn']:.2f} / {c['n_psr']:.2f} | "
                 f"{s['n_agn']:.2f} / {s['n_psr']:.2f} |")
    lines.append(f"| log10 flux_1000 | {f(c['log10_flux_1000'])} | {f(s['log10_flux_1000'])} |")
    for k in _LEVELS:
        lines.append(f"| fraction of sources > {k} expected counts (all bands) | "
                     f"{c['frac_above_counts'][k]:.3f} (est.) | {s['frac_above_counts'][k]:.3f} |")
    return "\n".join(lines)


def measure_speed(n=256, repeats=3, **kwargs):
    """Patches per second of `FermiSkySimulator.sample_patches` (best of ``repeats``).

    Returns
    -------
    dict
        ``wall`` and ``cpu`` rates (patches per CPU second of this process),
        for batches of ``n`` patches.
    """
    import time
    from astro_asid.simulate import FermiSkySimulator
    sim = FermiSkySimulator(**kwargs)
    sim.sample_patches(8)            # warm the PSF stamp caches
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        sim.sample_patches(n)
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / (time.process_time() - c0))
    return dict(wall=max(wall), cpu=max(cpu))


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    from astro_asid.evaluate.challenge import load_challenge
    ap = argparse.ArgumentParser(prog="python -m astro_asid.simulate.validate",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--challenge-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--speed", action="store_true", help="only measure the simulation speed")
    args = ap.parse_args(argv)
    if args.speed:
        for lf in ("flat", "powerlaw"):
            for bkg in ("b1", "b2", "b3"):
                r = measure_speed(luminosity=lf, background=bkg, seed=args.seed,
                                  n=256 if lf == "flat" else 64)
                print(f"{lf:9s} {bkg}: {r['cpu']:.0f} patches per CPU second "
                      f"({r['wall']:.0f} per wall second)", flush=True)
        return 0
    res = compare_with_challenge(load_challenge(args.challenge_dir), seed=args.seed,
                                 n_repeat=args.repeat)
    print("mean (10th pct / median / 90th pct)")
    print(format_comparison(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

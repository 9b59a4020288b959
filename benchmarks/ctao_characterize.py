"""Benchmark of the CTAO characteriser (issue 5): extension classes and calibration.

On simulated CTAO Galactic-plane patches (`astro_asid.simulate.ctao`, the
survey's own source density, independent of the training and calibration
sets), the shipped ``characterize-ctao`` model is run on the candidates of its
detector (``asid-ctao``) and on the significant true sources the detector
missed (injected at their true positions, as in training). Printed as
markdown:

* point vs extended accuracy (C0 < 0.1 deg against C1 + C2; target >= 0.97)
  and the C0/C1/C2 confusion matrix, for the detected sources and for all
  significant sources, and by observed aperture S/N and by true extension;
* the extension estimate: z-score of ``extension`` against its error;
* position and flux calibration per flux bin (as for Fermi-LAT);
* reliability of ``source_prob`` and of the extension class probabilities,
  and precision/recall after the ``source_prob`` cut.

With ``--likelihood`` it prints instead, for the detected real sources of the
same set, the point-vs-extended accuracy (by S/N) and the 3-class ECE of

* the network's extension head (the tables above);
* the likelihood classes that ``find_sources`` returns when the background and
  PSF are known (`Characterizer.extension_likelihood_prob`: the network's
  estimates for every candidate, a power law of index 2.2);
* the likelihood oracle: the same posterior with the true position and
  spectrum and the exact light of every other source: up to its grids, the
  Bayes-optimal classifier of the simulated population given more than the
  data, so no method that sees only the data can beat it on average.

Usage::

    python benchmarks/ctao_characterize.py [--n-test 300] [--seed 103] [--cache DIR] [--plots DIR]
                                           [--weights PATH] [--likelihood]

``--seed 103`` with 300 patches is the test set of the training command, whose
numbers are in the model card; any other seed gives a fresh set (about
1 s per patch to simulate on one core). ``--weights`` evaluates another
characteriser (a ``.safetensors`` file with its card, e.g. a retrained one).
"""

import argparse
import time
from pathlib import Path

import numpy as np

from astro_asid.characterize import Characterizer, metrics, report, shipped_characterizer
from astro_asid.characterize.data import INSTRUMENTS
from astro_asid.characterize.train import _injected, _load_or_simulate, evaluate

SNR_BINS = (-np.inf, 2, 5, 10, np.inf)
EXT_BINS = (0.0, 1e-9, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, np.inf)


def _fmt(v, f=".3f"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, f)


def extension_tables(test, res, spec):
    """Point vs extended accuracy and the C0/C1/C2 confusion, overall and binned."""
    real = test["real"].astype(bool)
    detected = real & ~_injected(test)
    edges = spec["ext_edges_deg"]
    names = spec["ext_class_names"]
    print("\n| sources | n | point vs extended accuracy | 3-class accuracy | "
          f"confusion (rows true {'/'.join(names)}) |")
    print("|---|---|---|---|---|")
    for label, sel in (("detected", detected), ("all significant", real)):
        lab = np.digitize(test["extension"][sel], edges)
        pred = res["ext_prob"][sel].argmax(1)
        cm = metrics.confusion_matrix(lab, pred, 3).tolist()
        print(f"| {label} | {sel.sum()} | {np.mean((lab == 0) == (pred == 0)):.3f} | "
              f"{np.mean(lab == pred):.3f} | {cm} |")
    lab = np.digitize(test["extension"][detected], edges)
    pred = res["ext_prob"][detected].argmax(1)
    ok = (lab == 0) == (pred == 0)
    snr = test["snr_obs"][detected]
    print("\nDetected sources by observed aperture S/N:\n")
    print("| observed S/N | n | fraction C0 | point vs extended accuracy |")
    print("|---|---|---|---|")
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        m = (snr >= lo) & (snr < hi)
        print(f"| {lo:g}-{hi:g} | {m.sum()} | {_fmt(np.mean(lab[m] == 0) if m.any() else np.nan)}"
              f" | {_fmt(np.mean(ok[m]) if m.any() else np.nan)} |")
    ext = test["extension"][detected]
    print("\nDetected sources by true extension (Gaussian sigma, deg):\n")
    print("| true extension | n | point vs extended accuracy | median predicted (deg) |")
    print("|---|---|---|---|")
    for lo, hi in zip(EXT_BINS[:-1], EXT_BINS[1:]):
        m = (ext >= lo) & (ext < hi)
        if m.any():
            med = np.median(res["extension"][detected][m])
            print(f"| {lo:.2f}-{hi:g} | {m.sum()} | {np.mean(ok[m]):.3f} | {med:.3f} |")


def likelihood_reference(char, n, seed, spec):
    """Point vs extended accuracy of the network against two likelihood classifiers
    on the same detected real sources (see the module docstring, ``--likelihood``)."""
    from astro_asid.characterize import extension_likelihood as el
    from astro_asid.characterize.data import simulate_candidates
    from astro_asid.characterize.train import inputs_from_arrays
    from astro_asid import SkyImage
    from astro_asid.simulate.ctao import CTAO_PIXEL_DEG, CTAOResponse, render_gaussian_sources

    t0 = time.time()
    patches = []
    # the same set as the cached test set of this seed (one process)
    test = simulate_candidates(n, instrument="ctao", seed=seed, density=1.0,
                               inject_snr=spec["inject_snr"], log=None, on_patch=patches.append)
    inputs, scalars = inputs_from_arrays(test, len(spec["cutouts"]),
                                         char.card.get("input", "log1p"))
    res = char.combine(char.raw_outputs(inputs, scalars))
    prior = el.ExtensionPrior.from_dict(char.card["extension_likelihood"])
    psf, pix = CTAOResponse().psf_sigma_deg, CTAO_PIXEL_DEG
    nominal = np.asarray(char.card["flux"]["nominal_exposure"], float)
    rows, p_real, p_oracle = [], [], []
    for p in patches:
        det = p["match"] >= 0
        if not det.any():
            continue
        r = p["rows"]
        # what find_sources does with a gammapy dataset: the network's positions,
        # counts and widths of every candidate, the known background, PSF and exposure
        image = SkyImage(p["counts"], background=p["background"], exposure=p["exposure"] * nominal,
                         psf={"sigma_pix": (psf / pix).tolist()}, instrument="ctao")
        p_real.append(char.extension_likelihood_prob(image, p["x"], p["y"],
                                                     {k: v[r] for k, v in res.items()},
                                                     rows=np.flatnonzero(det)))
        # the oracle: true position, spectrum and all other sources' light
        tr = p["truth"]
        for i in np.flatnonzero(det):
            k = p["match"][i]
            cb = np.asarray(tr["counts_band"][k], float) * p["exposure"]
            width = np.hypot(float(tr["sigma_deg"][k]), psf)[None] / pix
            own = render_gaussian_sources(p["counts"].shape[1:], [float(tr["x"][k])],
                                          [float(tr["y"][k])], cb[None], width)
            post = el.extension_posterior(p["counts"], p["background"] + p["sources"] - own,
                                          float(tr["x"][k]), float(tr["y"][k]),
                                          cb / float(tr["flux_1tev"][k]), psf, pix, prior)
            p_oracle.append(el.class_probabilities(post, prior.sigma_deg,
                                                   spec["ext_edges_deg"]))
        rows.append(r[det])
    rows = np.concatenate(rows)
    lab = np.digitize(test["extension"][rows], spec["ext_edges_deg"])
    probs = {"network's extension head": res["ext_prob"][rows],
             "likelihood with the network's estimates (find_sources)": np.concatenate(p_real),
             "likelihood oracle (true position, spectrum, neighbours)": np.asarray(p_oracle)}
    snr = test["snr_obs"][rows]
    bins = list(zip(SNR_BINS[:-1], SNR_BINS[1:]))
    print(f"\n## Point vs extended against likelihood classifiers ({n} patches, seed {seed}; "
          f"{len(rows)} detected real sources; {time.time() - t0:.0f} s)\n")
    print("| classifier | point vs extended | " + " | ".join(
        f"S/N {lo:g}-{hi:g}" for lo, hi in bins) + " | 3-class accuracy | 3-class ECE |")
    print("|---|---|" + "---|" * (len(bins) + 2))
    print("| n | " + f"{len(rows)} | " + " | ".join(
        str(int(((snr >= lo) & (snr < hi)).sum())) for lo, hi in bins) + " | | |")
    for name, prob in probs.items():
        pred = prob.argmax(1)
        ok = (lab == 0) == (pred == 0)
        cells = [_fmt(np.mean(ok[(snr >= lo) & (snr < hi)]) if ((snr >= lo) & (snr < hi)).any()
                      else np.nan) for lo, hi in bins]
        ece = metrics.expected_calibration_error(prob, lab)
        print(f"| {name} | {np.mean(ok):.3f} | " + " | ".join(cells)
              + f" | {np.mean(pred == lab):.3f} | {ece:.3f} |")
    print(f"\nConfusion matrices (rows true {'/'.join(spec['ext_class_names'])}, columns "
          "predicted):\n")
    for name, prob in probs.items():
        print(f"- {name}: {metrics.confusion_matrix(lab, prob.argmax(1), 3).tolist()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-test", type=int, default=300, help="simulated test patches")
    p.add_argument("--seed", type=int, default=103)
    p.add_argument("--cache", default=None, help="folder of cached simulated sets")
    p.add_argument("--workers", type=int, default=1, help="simulation processes")
    p.add_argument("--plots", default=None, help="folder for reliability and P/R plots")
    p.add_argument("--weights", help="a characteriser's .safetensors (default: the shipped one)")
    p.add_argument("--likelihood", action="store_true",
                   help="only compare point vs extended with the likelihood classifiers "
                        "(simulates the set again in one process, about 5 min per 300 patches)")
    a = p.parse_args(argv)
    char = Characterizer.load(a.weights) if a.weights else shipped_characterizer("ctao")
    if char is None:
        raise SystemExit("no CTAO characteriser is installed")
    spec = INSTRUMENTS["ctao"]
    print(f"characteriser {char.card['name']} ({char.card['sha256'][:12]}), "
          f"{len(char.members)} members, trained on {char.card['detector']} candidates")
    if a.likelihood:
        likelihood_reference(char, a.n_test, a.seed, spec)
        return
    t0 = time.time()
    # the survey's own source density, as the training command's test set
    test = _load_or_simulate(a.cache, "test", a.n_test, "ctao", a.seed, print,
                             workers=a.workers, density=1.0)
    t1 = time.time()
    ev = evaluate(char, test, spec)
    res = ev.pop("pred")
    real = test["real"].astype(bool)
    print(f"\n## Simulated CTAO patches: {a.n_test} (seed {a.seed}); {ev['n_test']} examples, "
          f"{int((~_injected(test)).sum())} detector candidates, {ev['n_real']} real "
          f"({int(_injected(test).sum())} significant sources the detector missed)")
    extension_tables(test, res, spec)
    e = ev["extension"]
    print(f"\nExtension estimate: z mean {e['z_mean']:+.2f}, z std {e['z_std']:.2f} "
          "(all significant sources)")
    for measured in (False, True):
        print("\n" + report.calibration_markdown(ev, measured=measured,
                                                 flux_label="log10 F(>1 TeV)"))
    print(report.summary_lines(ev))
    det = ~_injected(test)
    cuts = np.round(np.arange(0.0, 1.0, 0.05), 2)
    pr = {"source_prob": metrics.precision_recall_table(res["source_prob"][det], real[det], cuts),
          "detector score": metrics.precision_recall_table(test["score"][det], real[det], cuts)}
    print(f"\nPrecision / recall of the detector's candidates after the cut `>= threshold` "
          f"({real[det].sum()} real among {det.sum()}):\n")
    print(report.precision_recall_markdown(pr))
    lab = np.digitize(test["extension"][real], spec["ext_edges_deg"])
    rel = {"source_prob": metrics.reliability_table(res["source_prob"][det], real[det])}
    for k, name in enumerate(spec["ext_class_names"]):
        rel[f"extension {name}"] = metrics.reliability_table(res["ext_prob"][real][:, k],
                                                             lab == k)
    print("\nReliability (10 bins of predicted probability):\n")
    print(report.reliability_markdown(rel))
    if a.plots:
        plots = Path(a.plots)
        plots.mkdir(parents=True, exist_ok=True)
        report.plot_reliability(rel, plots / "reliability-ctao.png",
                                title="CTAO characteriser, simulated patches")
        curves = {k: ([r["recall"] for r in v], [r["precision"] for r in v])
                  for k, v in pr.items()}
        report.plot_precision_recall(curves, plots / "precision-recall-ctao.png",
                                     title="asid-ctao candidates")
    print(f"\n(simulation {t1 - t0:.0f} s, evaluation {time.time() - t1:.0f} s)")


if __name__ == "__main__":
    main()

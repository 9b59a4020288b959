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

Usage::

    python benchmarks/ctao_characterize.py [--n-test 300] [--seed 103] [--cache DIR] [--plots DIR]
                                           [--weights PATH]

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

SNR_BINS = (0, 2, 5, 10, np.inf)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-test", type=int, default=300, help="simulated test patches")
    p.add_argument("--seed", type=int, default=103)
    p.add_argument("--cache", default=None, help="folder of cached simulated sets")
    p.add_argument("--workers", type=int, default=1, help="simulation processes")
    p.add_argument("--plots", default=None, help="folder for reliability and P/R plots")
    p.add_argument("--weights", help="a characteriser's .safetensors (default: the shipped one)")
    a = p.parse_args(argv)
    char = Characterizer.load(a.weights) if a.weights else shipped_characterizer("ctao")
    if char is None:
        raise SystemExit("no CTAO characteriser is installed")
    spec = INSTRUMENTS["ctao"]
    print(f"characteriser {char.card['name']} ({char.card['sha256'][:12]}), "
          f"{len(char.members)} members, trained on {char.card['detector']} candidates")
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

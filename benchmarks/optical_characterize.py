"""The optical characteriser on its held-out test set: flux errors by brightness, and
star/galaxy separation against a concentration baseline.

On the characteriser's held-out test set (``asid train characterizer --instrument optical
... --cache CACHE`` writes it as ``CACHE/optical-test-<n>-<seed>.npz``): the real
``asid-optical`` candidates, by S/N bin, with

- ``class_prob``: P(galaxy) / (P(star) + P(galaxy)) of ``characterize-optical``;
- the baseline: the concentration of the light, S/N within 1.5 px over S/N within 5 px
  of the candidate (what SExtractor's CLASS_STAR and size cuts measure);
- flux: per bin of true matched-filter S/N (brightness relative to each field's depth),
  the median absolute error in dex and the mean and spread of the z-score
  ``(log10 F_pred - log10 F_true) / sigma`` (calibrated: spread 0.9-1.1); and the z-score
  per bin of the measured flux (what a catalogue can be cut on; the calibration's bins).

Run::

    python benchmarks/optical_characterize.py CACHE/optical-test-300-103.npz [--weights PATH]

``--weights`` evaluates another characteriser (a ``.safetensors`` file with its card
beside it, as ``asid train characterizer`` writes them) instead of the shipped one.
"""

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from astro_asid.characterize.model import Characterizer, shipped_characterizer
from astro_asid.characterize.train import inputs_from_arrays


def concentration(cutouts, r_in=1.5, r_out=5.0):
    """Inner over outer aperture sum of S/N cutouts ``(n, 1, s, s)``."""
    c = np.asarray(cutouts, np.float32)[:, 0]
    s = c.shape[-1]
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2.0
    r = np.hypot(xx, yy)
    inner = c[:, r <= r_in].sum(-1)
    outer = c[:, r <= r_out].sum(-1)
    return inner / np.where(outer > 0, outer, np.nan)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("testset", help="optical-test-*.npz of the characteriser's training cache")
    p.add_argument("--weights", help="a characteriser's .safetensors (default: the shipped one)")
    a = p.parse_args(argv)
    with np.load(a.testset) as f:
        d = {k: f[k] for k in f.files}
    char = Characterizer.load(a.weights) if a.weights else shipped_characterizer("optical")
    print(f"characteriser {char.card['name']} ({char.card['sha256'][:12]})\n")
    x, scal = inputs_from_arrays(d, len(char.scales), char.card.get("input"))
    r = char.combine(char.raw_outputs(x, scal), calibrated=True)
    p_gal = r["class_prob"][:, 1] / r["class_prob"][:, :2].sum(1)
    conc = concentration(d["cutouts"])
    real = d["real"].astype(bool)
    galaxy = d["cls"] == 1
    snr = d["snr"]
    print("## Flux errors of the real candidates by true S/N\n")
    print("| S/N | n | median abs error (dex) | z mean | z std |")
    print("|---|---|---|---|---|")
    dl = r["log10_flux"] - d["log10_flux"]
    z = dl / r["sigma_log10_flux"]
    for lo, hi in ((5, 10), (10, 30), (30, 100), (100, 1000), (1000, np.inf), (5, np.inf)):
        m = real & (d["snr"] >= lo) & (d["snr"] < hi)
        if m.sum() >= 50:
            print(f"| {lo:g}-{hi:g} | {int(m.sum())} | {np.median(np.abs(dl[m])):.3f} | "
                  f"{z[m].mean():+.2f} | {z[m].std():.2f} |")
    # what a catalogue user can select on: bins of the measured flux (log10, in units of
    # the local noise), where Eddington bias does not enter as it does in true-S/N bins
    print("\n## Flux errors of the real candidates by measured flux (log10 flux / noise)\n")
    print("| measured log10 flux | n | of which saturated | z mean | z std |")
    print("|---|---|---|---|---|")
    lf = r["log10_flux"]
    for lo in np.arange(np.floor(np.nanmin(lf[real]) * 2) / 2, np.nanmax(lf[real]), 0.5):
        m = real & (lf >= lo) & (lf < lo + 0.5)
        if m.sum() >= 50:
            print(f"| {lo:.1f}-{lo + 0.5:.1f} | {int(m.sum())} | "
                  f"{int(d['saturated'][m].sum())} | {z[m].mean():+.2f} | {z[m].std():.2f} |")
    print("\n## Star/galaxy AUC of the real candidates\n")
    print("| S/N | n stars | n galaxies | AUC class_prob | AUC concentration |")
    print("|---|---|---|---|---|")
    for lo, hi in ((5, 10), (10, 30), (30, 100), (100, np.inf), (5, np.inf)):
        m = real & (snr >= lo) & (snr < hi) & np.isfinite(conc)
        ns, ng = int((m & ~galaxy).sum()), int((m & galaxy).sum())
        if ns < 10 or ng < 10:
            continue
        auc_net = roc_auc_score(galaxy[m], p_gal[m])
        # a galaxy is less concentrated than a star: low concentration = galaxy
        auc_base = roc_auc_score(galaxy[m], -conc[m])
        print(f"| {lo:g}-{hi:g} | {ns} | {ng} | {auc_net:.3f} | {auc_base:.3f} |")


if __name__ == "__main__":
    main()

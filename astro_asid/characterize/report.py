"""Markdown tables and plots of a characteriser's evaluation (for the benchmarks).

The numbers come from `astro_asid.characterize.train.evaluate` and
`astro_asid.characterize.metrics`; these functions only lay them out, so
that the Fermi-LAT and CTAO benchmarks print the same tables.
"""

import numpy as np

__all__ = ["calibration_markdown", "summary_lines", "reliability_markdown",
           "precision_recall_markdown", "plot_reliability", "plot_precision_recall"]


def _fmt(v, f=".3f"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, f)


def calibration_markdown(ev, measured=False, min_count=50, flux_label="log10 F"):
    """Per flux bin: ellipse coverages and flux z-scores (``evaluate``'s tables).

    Parameters
    ----------
    ev : dict
        `~astro_asid.characterize.train.evaluate` output.
    measured : bool
        Bin by the measured flux instead of the true one.
    min_count : int
        Bins with fewer sources are left out.
    flux_label : str
        Names the flux in the header.
    """
    key, label = (("calibration_table_measured", "measured") if measured
                  else ("calibration_table", "true"))
    lines = [f"| {label} {flux_label} bin | n | in 1-sigma (0.39) | in 95% (0.95) | "
             "flux z mean | flux z std | sigma log10 F (pred.) | rms error (dex) | "
             "median pos. err (px) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in ev[key]:
        if r["n"] >= min_count:
            lines.append(f"| {r['lo']:.2f}..{r['hi']:.2f} | {r['n']} | {_fmt(r['cov1'])} | "
                         f"{_fmt(r['cov95'])} | {_fmt(r['z_mean'], '+.2f')} | "
                         f"{_fmt(r['z_std'], '.2f')} | {_fmt(r['sigma_median'])} | "
                         f"{_fmt(r['rms_error'])} | {_fmt(r['pos_err_median'], '.2f')} |")
    o = ev["overall"]
    lines.append(f"| all | {ev['n_real']} | {o['cov1']:.3f} | {o['cov95']:.3f} | "
                 f"{o['flux_z_mean']:+.2f} | {o['flux_z_std']:.2f} | | | |")
    w = ev["worst_measured" if measured else "worst"]
    lines += ["", f"Range over {label}-flux bins with >= {min_count} sources: 1-sigma "
              f"{w['cov1'][0]:.3f}..{w['cov1'][1]:.3f}, 95% {w['cov95'][0]:.3f}.."
              f"{w['cov95'][1]:.3f}, flux z std {w['z_std'][0]:.2f}..{w['z_std'][1]:.2f}"]
    return "\n".join(lines)


def summary_lines(ev):
    """Median position and flux errors and the source/FAKE scores of ``evaluate``'s output."""
    o, s = ev["overall"], ev["source"]
    return (f"Median position error {o['median_pos_err_px']:.3f} px; median |dlog10 F| "
            f"{o['median_abs_dlog10_flux']:.3f} dex\n"
            f"source/FAKE: ECE {s['ece']:.3f}, AUC {s['auc']:.3f} (cutout only "
            f"{s['auc_cutout_only']:.3f}, detector score alone {s['auc_detector_score']:.3f})")


def reliability_markdown(curves):
    """One table of reliability diagrams.

    Parameters
    ----------
    curves : dict
        Name -> `~astro_asid.characterize.metrics.reliability_table` rows.
    """
    lines = ["| probability | bin | n | mean predicted | observed fraction |",
             "|---|---|---|---|---|"]
    for name, rows in curves.items():
        for r in rows:
            lines.append(f"| {name} | {r['lo']:.1f}-{r['hi']:.1f} | {r['n']} | "
                         f"{r['mean_prob']:.3f} | {r['frac']:.3f} ± {r['frac_err']:.3f} |")
    return "\n".join(lines)


def precision_recall_markdown(curves):
    """Precision and recall per threshold, side by side for several rankings.

    Parameters
    ----------
    curves : dict
        Name -> `~astro_asid.characterize.metrics.precision_recall_table`
        rows (the same thresholds for every name).
    """
    names = list(curves)
    lines = ["| threshold | " + " | ".join(f"{n}: n / P / R" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for i, r0 in enumerate(curves[names[0]]):
        cells = [f"{curves[n][i]['n']} / {_fmt(curves[n][i]['precision'])} / "
                 f"{_fmt(curves[n][i]['recall'])}" for n in names]
        lines.append(f"| {r0['threshold']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(5, 4.5))


def plot_reliability(curves, filename, title=None):
    """Reliability diagram (observed fraction vs mean predicted probability).

    Parameters
    ----------
    curves : dict
        Name -> `~astro_asid.characterize.metrics.reliability_table` rows.
    filename : str or path
        Where the PNG goes.
    title : str, optional
    """
    import matplotlib.pyplot as plt
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for name, rows in curves.items():
        ax.errorbar([r["mean_prob"] for r in rows], [r["frac"] for r in rows],
                    yerr=[r["frac_err"] for r in rows], marker="o", ms=4, capsize=2, label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction", xlim=(0, 1),
           ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def plot_precision_recall(curves, filename, title=None):
    """Precision against recall for several rankings.

    Parameters
    ----------
    curves : dict
        Name -> ``(recall, precision)`` arrays (e.g. from
        `~astro_asid.characterize.metrics.precision_recall_table` rows).
    filename : str or path
    title : str, optional
    """
    import matplotlib.pyplot as plt
    fig, ax = _figure()
    for name, (rec, prec) in curves.items():
        ax.plot(rec, prec, label=name)
    ax.set(xlabel="recall", ylabel="precision", ylim=(None, 1.0), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)

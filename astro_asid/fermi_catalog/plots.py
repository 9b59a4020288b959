"""Diagnostic plots of 4FGL classifications (seed 004, figures 2 and 3).

Each function takes the catalog rows, the `CatalogClassifier.predict` output
for them (same order) and optionally the labelled rows of the task, and
returns a `matplotlib.figure.Figure`.
"""

import numpy as np

__all__ = ["plot_latitude", "plot_variability_curvature", "plot_uncertainty", "save_plots"]

_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:orange")


def _figure(figsize=(6, 4.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _check(table, result):
    if len(table) != len(result):
        raise ValueError(f"table ({len(table)} rows) and predictions ({len(result)} rows) "
                         "must be the same sources in the same order")


def plot_latitude(table, result, labelled=None, labelled_y=None, bins=36):
    """Galactic-latitude histograms of the candidates per predicted class.

    Parameters
    ----------
    table : `~astropy.table.Table`
        Catalog rows that were classified (needs ``GLAT``).
    result : `~astropy.table.QTable`
        `CatalogClassifier.predict` output for ``table``.
    labelled : `~astropy.table.Table`, optional
        Labelled rows of the task, drawn as outlines for comparison.
    labelled_y : array of int, optional
        Their class indices.
    """
    _check(table, result)
    names = result.meta["class_names"]
    fig, ax = _figure()
    edges = np.linspace(-90, 90, bins + 1)
    glat = np.asarray(table["GLAT"], float)
    for k, name in enumerate(names):
        sel = np.asarray(result["class_label"]) == name
        ax.hist(glat[sel], edges, density=True, alpha=0.45, color=_COLORS[k],
                label=f"predicted {name} ({sel.sum()})")
        if labelled is not None and labelled_y is not None:
            lab = np.asarray(labelled["GLAT"], float)[np.asarray(labelled_y) == k]
            ax.hist(lab, edges, density=True, histtype="step", lw=1.5, color=_COLORS[k],
                    label=f"labelled {name} ({len(lab)})")
    ax.set_xlabel("Galactic latitude [deg]")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title(f"{result.meta.get('task', '')}: latitude of the candidates")
    return fig


def plot_variability_curvature(table, result, labelled=None, labelled_y=None):
    """sqrt(LP_SigCurv) vs log10(Variability_Index), coloured by predicted class.

    Labelled sources (if given) are drawn as faint points per class.
    """
    _check(table, result)
    names = result.meta["class_names"]
    fig, ax = _figure()

    def xy(t):
        var = np.asarray(t["Variability_Index"], float)
        curv = np.asarray(t["LP_SigCurv"], float)
        return (np.log10(np.clip(var, 1e-2, None)), np.sqrt(np.clip(curv, 0, None)))

    if labelled is not None and labelled_y is not None:
        lx, ly = xy(labelled)
        for k, name in enumerate(names):
            sel = np.asarray(labelled_y) == k
            ax.scatter(lx[sel], ly[sel], s=3, color=_COLORS[k], alpha=0.12,
                       label=f"labelled {name}")
    x, y = xy(table)
    for k, name in enumerate(names):
        sel = np.asarray(result["class_label"]) == name
        ax.scatter(x[sel], y[sel], s=10, color=_COLORS[k], marker="os^v"[k], edgecolor="k",
                   linewidth=0.3, label=f"predicted {name} ({sel.sum()})")
    ax.set_xlabel("log10(Variability_Index)")
    ax.set_ylabel("sqrt(LP_SigCurv)")
    ax.legend(fontsize="small", markerscale=2)
    return fig


def plot_uncertainty(result, class_index=1):
    """Spread vs mean probability of one class (seed 004, figure 3 right)."""
    names = result.meta["class_names"]
    prob = np.asarray(result["class_prob"])[:, class_index]
    err = np.asarray(result["class_prob_err"])[:, class_index]
    fig, ax = _figure()
    ax.scatter(prob, err, s=4, alpha=0.4, color="0.3", label="sources")
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(prob, edges) - 1, 0, 9)
    means = [err[which == b].mean() if (which == b).any() else np.nan for b in range(10)]
    ax.stairs(means, edges, color="tab:red", lw=2, label="mean per bin")
    ax.set_xlabel(f"mean {names[class_index]} probability")
    ax.set_ylabel(f"std of the {names[class_index]} probability")
    ax.set_xlim(0, 1)
    ax.legend(fontsize="small")
    return fig


def save_plots(directory, table, result, labelled=None, labelled_y=None):
    """Write the three plots as PNG files; returns their paths."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    task = result.meta.get("task", "4fgl")
    figs = {
        f"{task}_latitude.png": plot_latitude(table, result, labelled, labelled_y),
        f"{task}_variability_curvature.png": plot_variability_curvature(table, result, labelled,
                                                                         labelled_y),
        f"{task}_uncertainty.png": plot_uncertainty(result),
    }
    paths = []
    for name, fig in figs.items():
        fig.savefig(directory / name, dpi=120)
        paths.append(directory / name)
    return paths

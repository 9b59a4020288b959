"""Scoring detections on simulated CTAO survey patches.

Shared by ``benchmarks/ctao_gps.py`` and the score calibration of the binned
(multi-scale) detection, `astro_asid.training.ctao_scales`, so both use one
matching rule: detections are visited by decreasing score over all patches;
each takes the nearest not-yet-matched true source of its patch within
``max(0.1 deg, 2 sigma_PSF + sigma_src)``, with ``sigma_PSF`` the Gaussian
PSF sigma of the middle band and ``sigma_src`` the source's Gaussian sigma
(0 for point sources). A detection whose nearest source within that radius
lies outside the patch (in the simulator's margin) counts neither as true
nor as false.
"""

import numpy as np
from astropy import units as u
from astropy.table import Table, vstack

__all__ = ["truth_table", "match"]


def truth_table(batch):
    """The true sources of a `~astro_asid.simulate.ctao.CTAOPatchBatch`, for `match`.

    Returns
    -------
    `~astropy.table.Table`
        Inside and margin sources of all patches: ``patch``, ``x``, ``y``,
        ``flux_1tev`` (cm-2 s-1), ``lat``, ``inside``, ``sigma_deg`` and the
        match ``radius`` (deg).
    """
    psf_mid = float(batch.psf_sigma_deg[1].to_value(u.deg))
    rows = []
    for i in range(len(batch)):
        for tab, inside in ((batch.sources[i], True), (batch.outside_sources[i], False)):
            if not len(tab):
                continue
            sig = u.Quantity(tab["sigma_deg"]).to_value(u.deg)
            rows.append(Table({
                "patch": np.full(len(tab), i), "x": np.asarray(tab["x"], float),
                "y": np.asarray(tab["y"], float),
                "flux_1tev": u.Quantity(tab["flux_1tev"]).to_value("cm-2 s-1"),
                "lat": np.asarray(tab["lat"], float), "inside": np.full(len(tab), inside),
                "sigma_deg": sig, "radius": np.maximum(0.1, 2 * psf_mid + sig)}))
    return vstack(rows)


def match(preds, truth, cdelt):
    """Greedy matching by decreasing score (see the module docstring).

    Parameters
    ----------
    preds : `~astropy.table.Table`
        Detections of all patches: ``patch``, ``x``, ``y`` (pixels), ``score``.
    truth : `~astropy.table.Table`
        `truth_table` of the same patches.
    cdelt : float
        Pixel size (deg).

    Returns
    -------
    order : `~numpy.ndarray`
        Prediction indices by decreasing score, ignored ones (margin sources) removed.
    tp : `~numpy.ndarray` of bool
        Whether each prediction in ``order`` is a true positive.
    found_at : `~numpy.ndarray`
        For each inside true source, the rank in ``order`` of the detection
        that found it (``len(order)`` when never found).
    """
    inside_idx = np.flatnonzero(truth["inside"])
    rank_of_truth = {int(k): j for j, k in enumerate(inside_idx)}
    found_at = np.full(len(inside_idx), -1)
    taken = np.zeros(len(truth), bool)
    by_patch = {p: np.flatnonzero(truth["patch"] == p) for p in np.unique(truth["patch"])}
    tx, ty = np.asarray(truth["x"]), np.asarray(truth["y"])
    coslat = np.cos(np.deg2rad(np.asarray(truth["lat"])))
    radius = np.asarray(truth["radius"])
    order, tp = [], []
    for k in np.argsort(-np.asarray(preds["score"], float), kind="stable"):
        cand = by_patch.get(int(preds["patch"][k]), np.zeros(0, int))
        cand = cand[~taken[cand]]
        sep = cdelt * np.hypot((tx[cand] - preds["x"][k]) * coslat[cand], ty[cand] - preds["y"][k])
        ok = sep <= radius[cand]
        if not ok.any():
            order.append(k)
            tp.append(False)
            continue
        j = cand[ok][np.argmin(sep[ok])]
        taken[j] = True
        if not truth["inside"][j]:
            continue                   # a margin source: neither true nor false
        found_at[rank_of_truth[int(j)]] = len(order)
        order.append(k)
        tp.append(True)
    found_at[found_at < 0] = len(order)
    return np.array(order, int), np.array(tp, bool), found_at

"""Matching detections to truth and precision/recall, for validation and calibration.

The matching follows the data-challenge protocol (Panes et al. 2021): the
detections of one image are visited by decreasing score; a detection is a
true positive when an unmatched true source lies within the matching radius,
and it takes the brightest such source. (`astro_asid.evaluate` holds the
reference scorer of the benchmark; this is the light version used inside
training.)
"""

import numpy as np

__all__ = ["match_detections", "precision_recall", "recall_at_precision"]

#: The challenge's matching radius, 0.3 deg, in pixels of 10/64 deg.
MATCH_RADIUS_PX = 0.3 / (10 / 64)


def match_detections(det_x, det_y, det_score, true_x, true_y, true_flux=None,
                     radius=MATCH_RADIUS_PX):
    """Match the detections of one image to its true sources.

    Returns
    -------
    is_tp : `~numpy.ndarray` of bool
        Per detection (in the input order).
    match : `~numpy.ndarray` of int
        Index of the matched true source, -1 for false positives.
    """
    det_x = np.asarray(det_x, float)
    det_y = np.asarray(det_y, float)
    true_x = np.asarray(true_x, float)
    true_y = np.asarray(true_y, float)
    flux = np.ones(len(true_x)) if true_flux is None else np.asarray(true_flux, float)
    match = np.full(len(det_x), -1)
    used = np.zeros(len(true_x), bool)
    for i in np.argsort(-np.asarray(det_score, float), kind="stable"):
        d2 = (true_x - det_x[i]) ** 2 + (true_y - det_y[i]) ** 2
        cand = np.nonzero((d2 <= radius ** 2) & ~used)[0]
        if len(cand):
            j = cand[np.argmax(flux[cand])]
            used[j] = True
            match[i] = j
    return match >= 0, match


def precision_recall(scores, is_tp, n_true):
    """Precision and recall of the detections above every score threshold.

    Returns
    -------
    thresholds, precision, recall : `~numpy.ndarray`
        Sorted by decreasing threshold.
    """
    scores = np.asarray(scores, float)
    is_tp = np.asarray(is_tp, bool)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    n = np.arange(1, len(order) + 1)
    return scores[order], tp / n, tp / max(int(n_true), 1)


def recall_at_precision(scores, is_tp, n_true, precision=0.88):
    """Largest recall over the thresholds whose precision is at least ``precision``.

    Returns
    -------
    recall, threshold : float
        0 and ``inf`` when no threshold reaches the precision.
    """
    thr, prec, rec = precision_recall(scores, is_tp, n_true)
    ok = prec >= precision
    if not ok.any():
        return 0.0, float("inf")
    i = np.argmax(np.where(ok, rec, -1))
    return float(rec[i]), float(thr[i])

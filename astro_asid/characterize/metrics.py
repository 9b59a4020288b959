"""Calibration and classification metrics of a characteriser on labelled candidates."""

import numpy as np

__all__ = ["ellipse_coverage", "zscore_stats", "expected_calibration_error",
           "balanced_completeness", "confusion_matrix", "calibration_table",
           "reliability_table", "precision_recall_table"]

#: chi-square (2 dof) radius^2 of the 1-sigma and 95 % ellipses, and their coverage
R2_1SIGMA = 1.0
R2_95 = 2.45 ** 2
COVERAGE_1SIGMA = 1.0 - np.exp(-0.5)        # 0.393
COVERAGE_95 = 1.0 - np.exp(-0.5 * R2_95)    # 0.950


def ellipse_coverage(ex, ey, sx, sy):
    """Fractions of true positions inside the 1-sigma and 2.45-sigma ellipses.

    ``ex``, ``ey``: position errors; ``sx``, ``sy``: predicted 1-sigma errors
    (same units). For calibrated Gaussian errors the fractions are 0.393 and 0.950.
    """
    r2 = (np.asarray(ex) / np.asarray(sx)) ** 2 + (np.asarray(ey) / np.asarray(sy)) ** 2
    if len(r2) == 0:
        return np.nan, np.nan
    return float(np.mean(r2 <= R2_1SIGMA)), float(np.mean(r2 <= R2_95))


def zscore_stats(truth, pred, sigma):
    """Mean and standard deviation of ``(truth - pred) / sigma``."""
    z = (np.asarray(truth, float) - np.asarray(pred, float)) / np.asarray(sigma, float)
    if len(z) == 0:
        return np.nan, np.nan
    return float(np.mean(z)), float(np.std(z))


def expected_calibration_error(prob, label, n_bins=15, weights=None):
    """Expected calibration error of the top-class probability.

    Parameters
    ----------
    prob : `~numpy.ndarray`
        ``(n,)`` probabilities of the positive class (binary) or ``(n, k)``.
    label : `~numpy.ndarray`
        ``(n,)`` 0/1 (binary) or class index.
    weights : `~numpy.ndarray`, optional
        Per-example weights (e.g. to evaluate under balanced class priors).
    """
    prob = np.asarray(prob, float)
    label = np.asarray(label, int)
    if prob.ndim == 1:
        prob = np.column_stack([1 - prob, prob])
    w = np.ones(len(label)) if weights is None else np.asarray(weights, float)
    conf = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == label).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            wb = w[m].sum()
            ece += wb * abs(np.average(correct[m], weights=w[m]) - np.average(conf[m], weights=w[m]))
    return float(ece / w.sum()) if w.sum() > 0 else np.nan


def confusion_matrix(label, pred, k):
    """``(k, k)`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((k, k), int)
    np.add.at(cm, (np.asarray(label, int), np.asarray(pred, int)), 1)
    return cm


def balanced_completeness(label, pred, k):
    """Per-class completeness (recall) and their mean over classes present."""
    cm = confusion_matrix(label, pred, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.diag(cm) / cm.sum(axis=1)
    return per, float(np.nanmean(per))


def calibration_table(log10_flux_true, ex, ey, sx, sy, log10_flux_pred, sigma_log10,
                      bins, min_count=50, truth=None):
    """Per flux bin: counts, ellipse coverages and flux z-score statistics.

    The bins are of ``log10_flux_true``; to bin by another quantity (e.g. the
    measured flux), pass it as ``log10_flux_true`` and the true log10 flux as
    ``truth``.

    Returns
    -------
    list of dict
        ``lo``, ``hi``, ``n``, ``cov1`` (1-sigma), ``cov95``, ``z_mean``,
        ``z_std``, ``sigma_median`` (predicted log10 flux error), ``rms_error``
        (actual), ``pos_err_median`` (same unit as ``ex``), ``ok``
        (``n >= min_count``).
    """
    f = np.asarray(log10_flux_true, float)
    t = f if truth is None else np.asarray(truth, float)
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (f >= lo) & (f < hi)
        c1, c95 = ellipse_coverage(ex[m], ey[m], sx[m], sy[m])
        zm, zs = zscore_stats(t[m], log10_flux_pred[m], sigma_log10[m])
        d = t[m] - np.asarray(log10_flux_pred)[m]
        rows.append(dict(lo=float(lo), hi=float(hi), n=int(m.sum()), cov1=c1, cov95=c95,
                         z_mean=zm, z_std=zs,
                         sigma_median=float(np.median(sigma_log10[m])) if m.any() else np.nan,
                         rms_error=float(np.sqrt(np.mean(d ** 2))) if m.any() else np.nan,
                         pos_err_median=float(np.median(np.hypot(ex[m], ey[m])))
                         if m.any() else np.nan,
                         ok=bool(m.sum() >= min_count)))
    return rows


def reliability_table(prob, label, n_bins=10, weights=None):
    """The numbers of a reliability diagram of one probability.

    Parameters
    ----------
    prob : `~numpy.ndarray`
        ``(n,)`` predicted probabilities that the event is true (e.g.
        ``source_prob``, or one column of ``class_prob``: one class against
        the rest).
    label : `~numpy.ndarray`
        ``(n,)`` bool or 0/1: whether it is.
    n_bins : int
        Equal-width bins of ``prob`` in [0, 1].
    weights : `~numpy.ndarray`, optional
        Per-example weights, e.g. inverse class frequencies to evaluate a
        probability calibrated under balanced class priors.

    Returns
    -------
    list of dict
        One per non-empty bin: ``lo``, ``hi``, ``n``, ``mean_prob`` (mean
        prediction), ``frac`` (weighted fraction of true events) and
        ``frac_err`` (its binomial standard error from the effective number
        of examples ``n_eff``, at least ``0.5 / n_eff``). A calibrated probability has ``frac`` = ``mean_prob``
        within ``frac_err``.
    """
    prob = np.asarray(prob, float)
    label = np.asarray(label, float)
    if prob.shape != label.shape or prob.ndim != 1:
        raise ValueError(f"prob and label must be 1-D of the same length, got {prob.shape} "
                         f"and {label.shape}")
    w = np.ones(len(prob)) if weights is None else np.asarray(weights, float)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.digitize(prob, edges) - 1, 0, int(n_bins) - 1)
    rows = []
    for b in range(int(n_bins)):
        m = idx == b
        if not m.any():
            continue
        wb = w[m]
        frac = float(np.average(label[m], weights=wb))
        n_eff = wb.sum() ** 2 / np.sum(wb ** 2)
        rows.append(dict(lo=float(edges[b]), hi=float(edges[b + 1]), n=int(m.sum()),
                         mean_prob=float(np.average(prob[m], weights=wb)), frac=frac,
                         frac_err=float(np.sqrt(max(frac * (1 - frac), 0.25 / n_eff) / n_eff))))
    return rows


def precision_recall_table(score, real, thresholds, n_real=None):
    """Precision and recall of the candidates above each threshold of a score.

    Parameters
    ----------
    score : `~numpy.ndarray`
        ``(n,)`` ranking value of each candidate (e.g. ``source_prob``).
    real : `~numpy.ndarray`
        ``(n,)`` bool: the candidate is a true source.
    thresholds : sequence of float
        Cuts ``score >= t``.
    n_real : int, optional
        Recall denominator (default: the true candidates, ``real.sum()``; pass
        the number of true sources to include those never detected).

    Returns
    -------
    list of dict
        ``threshold``, ``n`` (kept), ``precision``, ``recall``.
    """
    score = np.asarray(score, float)
    real = np.asarray(real, bool)
    n_real = int(real.sum()) if n_real is None else int(n_real)
    rows = []
    for t in thresholds:
        keep = score >= t
        n = int(keep.sum())
        tp = int(real[keep].sum())
        rows.append(dict(threshold=float(t), n=n, precision=tp / n if n else np.nan,
                         recall=tp / n_real if n_real else np.nan))
    return rows

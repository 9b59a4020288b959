"""Scores of a probabilistic classifier: accuracy, balanced accuracy, AUC, ECE."""

import numpy as np

__all__ = ["expected_calibration_error", "ece_noise_floor", "classification_metrics"]


def expected_calibration_error(y, prob, n_bins=10):
    """Expected calibration error of the most probable class.

    The top-class confidences are put in ``n_bins`` equal-width bins; the ECE
    is the row-weighted mean of ``|accuracy - mean confidence|`` over the bins
    (Guo et al. 2017).

    Parameters
    ----------
    y : array (N,) of int
        True class indices.
    prob : array (N, K)
        Predicted probabilities.
    n_bins : int

    Returns
    -------
    ece : float
    """
    y = np.asarray(y)
    prob = np.asarray(prob, float)
    if prob.ndim != 2 or len(prob) != len(y):
        raise ValueError("prob must have shape (N, K) with N = len(y)")
    if len(y) == 0:
        raise ValueError("no rows to score")
    conf = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    # Confidence is >= 1/K; bins span [0, 1] as usual, the lowest ones stay empty.
    which = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def ece_noise_floor(prob, n_sim=200, n_bins=10, seed=0):
    """ECE that a perfectly calibrated model with these predictions would show.

    The binned ECE is biased upwards on small test sets: labels drawn from the
    predicted probabilities themselves still give a positive ECE. This is its
    mean over ``n_sim`` such draws, the level below which a measured ECE says
    nothing (it matters for the ~100 test pulsars of ``msp-young``).

    Parameters
    ----------
    prob : array (N, K)
    n_sim : int
    n_bins : int
    seed : int

    Returns
    -------
    floor : float
    """
    prob = np.asarray(prob, float)
    rng = np.random.default_rng(seed)
    cum = np.cumsum(prob / prob.sum(axis=1, keepdims=True), axis=1)
    eces = []
    for _ in range(n_sim):
        y = (rng.random((len(prob), 1)) > cum).sum(axis=1).clip(0, prob.shape[1] - 1)
        eces.append(expected_calibration_error(y, prob, n_bins))
    return float(np.mean(eces))


def classification_metrics(y, prob):
    """Accuracy, balanced accuracy, ROC AUC and ECE of binary predictions.

    Parameters
    ----------
    y : array (N,) of int in {0, 1}
    prob : array (N, 2)

    Returns
    -------
    metrics : dict
        ``accuracy``, ``balanced_accuracy``, ``auc`` (of class 1's
        probability), ``ece``, ``n``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    y = np.asarray(y)
    prob = np.asarray(prob, float)
    pred = prob.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "auc": float(roc_auc_score(y, prob[:, 1])),
        "ece": expected_calibration_error(y, prob),
        "n": int(len(y)),
    }

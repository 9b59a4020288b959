"""Input normalisation of counts cubes for the deep detectors.

Why this normalisation
----------------------
A gamma-ray counts map changes in two ways that must not change what the
network sees for the same *significance* of a source: the exposure (mission
length, survey depth: every count scales by the same factor) and the level of
the interstellar background (a factor of >100 between the Galactic plane and
the poles). We therefore

1. apply the Anscombe transform ``a = 2 sqrt(n + 3/8)`` to the counts of each
   band. It stabilises the Poisson variance: the noise of ``a`` is ~1 whatever
   the mean, so a bump of ``+3`` is a ~3 sigma excess at any exposure and any
   background level (a ``log1p`` would instead compress bright sources and
   leave the noise level dependent on the background);
2. subtract, per band and per patch, the median of ``a`` (a robust estimate of
   the background level that the sources hardly move). We deliberately do
   *not* divide by a patch-wide spread: after step 1 the noise unit is already
   the right one, and dividing by a robust spread would rescale a
   source-dominated or nearly empty high-energy band by an arbitrary factor.

The result is ~0 on the background with ~unit noise, in every band. Masked
(or missing) pixels become 0, i.e. "background level, no information".

The model input has ``n_bands + 2`` channels: the normalised bands, the
normalised band *sum*, and a constant "bands available" flag. A plain 2-D
image (or a cube whose bands cannot be used) is fed as the sum channel alone
with the band channels zero and the flag 0: the shipped models are trained
with a fraction of such sum-only examples, so they also work (less well) on
2-D counts maps.
"""

import numpy as np
import torch

__all__ = ["anscombe", "normalize_counts", "model_input", "model_input_torch"]


def anscombe(counts):
    """Anscombe variance-stabilising transform ``2 sqrt(n + 3/8)`` (negatives clipped to 0)."""
    if isinstance(counts, torch.Tensor):
        return 2.0 * torch.sqrt(torch.clamp(counts, min=0.0) + 0.375)
    return 2.0 * np.sqrt(np.clip(counts, 0.0, None) + 0.375)


def _lower_median(values):
    """The lower median (what `torch.median` returns, so training and inference agree)."""
    values = np.ravel(values)
    k = (values.size - 1) // 2
    return np.partition(values, k)[k]


def normalize_counts(cube, mask=None):
    """Normalise a counts cube band by band (Anscombe, minus the per-band median).

    Parameters
    ----------
    cube : `~numpy.ndarray`
        ``(n_bands, ny, nx)`` counts (NaN allowed at masked pixels).
    mask : `~numpy.ndarray` of bool, optional
        Same shape as ``cube`` (or ``(ny, nx)``); True marks pixels to ignore.

    Returns
    -------
    `~numpy.ndarray`
        float32, same shape; masked pixels are 0.
    """
    cube = np.asarray(cube, dtype=np.float32)
    if cube.ndim != 3:
        raise ValueError(f"expected a (n_bands, ny, nx) cube, got shape {cube.shape}")
    bad = ~np.isfinite(cube)
    if mask is not None:
        bad = bad | np.broadcast_to(np.asarray(mask, bool), cube.shape)
    a = anscombe(np.where(bad, 0.0, cube)).astype(np.float32)
    out = np.zeros_like(a)
    for b in range(a.shape[0]):
        good = ~bad[b]
        if good.any():
            out[b] = a[b] - _lower_median(a[b][good])
    out[bad] = 0.0
    return out


def model_input(cube, n_bands, mask=None):
    """Build the network input ``(n_bands + 2, ny, nx)`` from counts.

    Parameters
    ----------
    cube : `~numpy.ndarray`
        ``(n_bands, ny, nx)`` counts in the model's bands, or ``(1, ny, nx)`` /
        ``(ny, nx)`` summed counts (fed through the sum channel only).
    n_bands : int
        Number of energy bands the model was trained with.
    mask : `~numpy.ndarray` of bool, optional
        True marks pixels to ignore.

    Returns
    -------
    `~numpy.ndarray`
        float32 input for the network.

    Raises
    ------
    ValueError
        A cube with a number of bands that is neither ``n_bands`` nor 1.
    """
    cube = np.asarray(cube, dtype=np.float32)
    if cube.ndim == 2:
        cube = cube[np.newaxis]
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.ndim == 2:
            mask = np.broadcast_to(mask, cube.shape)
    nb = cube.shape[0]
    if nb not in (n_bands, 1):
        raise ValueError(
            f"the model was trained on {n_bands} energy bands but the image has {nb}; "
            f"pass a cube with exactly these {n_bands} bands, or sum the bands into a 2-D "
            "counts image (the model then uses its summed-band channel)")
    ny, nx = cube.shape[1:]
    out = np.zeros((n_bands + 2, ny, nx), np.float32)
    bad = ~np.isfinite(cube) if mask is None else (mask | ~np.isfinite(cube))
    filled = np.where(bad, 0.0, cube)
    total = filled.sum(axis=0, keepdims=True)
    bad_all = bad.all(axis=0, keepdims=True)
    out[n_bands:n_bands + 1] = normalize_counts(total, bad_all)
    if nb == n_bands:
        out[:n_bands] = normalize_counts(filled, bad)
        out[n_bands + 1] = 1.0
    return out


def model_input_torch(counts, sum_only=None):
    """Batched `model_input` for training: ``(n, n_bands, ny, nx)`` -> ``(n, n_bands + 2, ny, nx)``.

    Parameters
    ----------
    counts : `torch.Tensor`
        Counts, no masked pixels.
    sum_only : `torch.Tensor` of bool, optional
        ``(n,)``; True makes that example a sum-only (2-D image) example.
    """
    n, nb = counts.shape[:2]
    total = counts.sum(dim=1, keepdim=True)
    a = anscombe(torch.cat([counts, total], dim=1))
    med = a.flatten(2).median(dim=2).values[..., None, None]
    a = a - med
    flag = torch.ones((n, 1) + counts.shape[2:], dtype=a.dtype, device=a.device)
    x = torch.cat([a, flag], dim=1)
    if sum_only is not None and bool(sum_only.any()):
        x[sum_only, :nb] = 0.0
        x[sum_only, nb + 1] = 0.0
    return x

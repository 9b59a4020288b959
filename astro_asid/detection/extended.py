"""Likelihood search for wide, faint sources over a known background.

A Gaussian source of sigma 0.3-0.5 deg at a few 1e-13 cm-2 s-1 on the CTAO
survey's background spreads a few hundred counts over a square degree: no
pixel, and no binned copy the network sees, stands out, yet the matched
filter over the whole source is significant when the background is known
(as it is in a gammapy `~gammapy.datasets.MapDataset`). This module scans
the map with Gaussian test sources of several widths, each on a map binned
so that the kernel spans a few binned pixels (the classical TS map of
`~astro_asid.detection.tsmap.compute_ts_map`, with the PSF widened by the
source sigma), and keeps the peaks.

`extended_candidates` gives the peaks of all widths, one per source
(non-maximum suppression across widths); `drop_found` removes those that a
detection of the network already explains. The deep CTAO detector
(`~astro_asid.detection.deep.ASIDCTAODetector`) calibrates their TS into a
score on simulated survey patches (``python -m astro_asid.training.ctao_scales``).
"""

import numpy as np
from astropy.table import QTable
from scipy import ndimage

from ._classical_utils import quadratic_peak
from .multiscale import bin_counts
from .tsmap import compute_ts_map

__all__ = ["DEFAULT_KERNELS", "check_kernels", "extended_candidates", "drop_found"]

#: (Gaussian sigma in deg, binning factor on 0.02 deg pixels): the kernel spans 1.5-3 binned
#: pixels (sigma), enough to sample it and few enough pixels to be fast.
DEFAULT_KERNELS = ((0.1, 4), (0.2, 4), (0.35, 8), (0.5, 8))

_COLUMNS = ("x_centroid", "y_centroid", "x_err", "y_err", "ts", "flux", "flux_err",
            "kernel_sigma_deg")


def check_kernels(kernels):
    """Validate ``(sigma_deg, binning)`` pairs -> tuple of ``(float, int)`` pairs."""
    try:
        out = tuple((float(s), int(f)) for s, f in kernels)
    except (TypeError, ValueError):
        raise ValueError(f"kernels must be (sigma_deg, binning) pairs, got {kernels!r}") from None
    if not out or any(not s > 0 or f < 1 for s, f in out):
        raise ValueError(f"kernels need sigma_deg > 0 and an integer binning >= 1, "
                         f"got {kernels!r}")
    return out


def _empty():
    return QTable({c: np.zeros(0) for c in _COLUMNS})


def _peaks(ts, mask, ts_min):
    """Local maxima (3x3) of ``ts`` at or above ``ts_min`` outside ``mask`` -> (ys, xs)."""
    local = ndimage.maximum_filter(ts, size=3, mode="constant", cval=0.0) == ts
    return np.nonzero(local & (ts >= ts_min) & ~mask)


def _refine(ts, ys, xs):
    """Sub-pixel peak positions and 1-sigma errors (binned pixels) from the TS curvature."""
    padded = np.pad(ts, 1, mode="edge")
    out = np.empty((len(ys), 4))
    for i, (iy, ix) in enumerate(zip(ys, xs)):
        dx, dy, hess, ok = quadratic_peak(padded[iy:iy + 3, ix:ix + 3])
        if ok:
            cov = 2.0 * np.linalg.inv(-hess)       # TS drops by 1 at 1 sigma
            out[i] = (ix + np.clip(dx, -0.5, 0.5), iy + np.clip(dy, -0.5, 0.5),
                      np.sqrt(cov[0, 0]), np.sqrt(cov[1, 1]))
        else:                                      # flat top: the pixel, half a pixel error
            out[i] = (ix, iy, 0.5, 0.5)
    return out


def extended_candidates(counts, background, psf_sigma_deg, pixel_deg, mask=None,
                        kernels=DEFAULT_KERNELS, weights=None, ts_min=9.0):
    """Peaks of Gaussian-kernel TS maps of several widths, one per source.

    For each ``(sigma, f)`` of ``kernels``, counts and background are summed
    in ``f x f`` blocks (`~astro_asid.detection.multiscale.bin_counts`) and
    the Poisson TS of a Gaussian source of that sigma, convolved with each
    band's PSF, is computed at every binned pixel
    (`~astro_asid.detection.tsmap.compute_ts_map`). Local maxima with
    ``TS >= ts_min`` are candidates. Visited by decreasing TS over all
    widths, a candidate is dropped when a kept one lies within ``0.1 deg``
    plus the kept one's sigma: one source gives one candidate, at the width
    that fits it best.

    Parameters
    ----------
    counts, background : `~numpy.ndarray`
        ``(n_bands, ny, nx)`` counts and expected background counts.
    psf_sigma_deg : array-like
        Gaussian PSF sigma per band (deg).
    pixel_deg : float
        Pixel size (deg).
    mask : `~numpy.ndarray` of bool, optional
        True at pixels to ignore (``(ny, nx)`` or the shape of ``counts``).
    kernels : sequence of (float, int)
        Source sigma (deg) and binning factor of each scan.
    weights : array-like, optional
        Fraction of a source's counts in each band (default: equal).
    ts_min : float
        Smallest TS kept.

    Returns
    -------
    `~astropy.table.QTable`
        ``x_centroid``, ``y_centroid``, ``x_err``, ``y_err`` (unbinned
        pixels), ``ts``, ``flux`` and ``flux_err`` (fitted source counts, all
        bands) and ``kernel_sigma_deg``, by decreasing TS.
    """
    counts = np.asarray(counts, float)
    background = np.broadcast_to(np.asarray(background, float), counts.shape)
    if mask is None:
        mask = ~np.isfinite(counts) | ~np.isfinite(background)
    mask = np.broadcast_to(np.asarray(mask, bool), counts.shape)
    psf = np.broadcast_to(np.asarray(psf_sigma_deg, float), (counts.shape[0],))
    rows = []
    for sigma, f in check_kernels(kernels):
        cb, mb = bin_counts(counts[None], mask[None], f)
        bb, _ = bin_counts(background[None], mask[None], f)
        cb, mb, bb = cb[0].astype(float), mb[0], bb[0].astype(float)
        width = np.sqrt(psf ** 2 + sigma ** 2) / (pixel_deg * f)
        res = compute_ts_map(cb, bb, width, mask=mb, weights=weights)
        ts = np.nan_to_num(res["ts"], nan=0.0)
        ys, xs = _peaks(ts, mb.all(axis=0), ts_min)
        if not len(ys):
            continue
        pos = _refine(ts, ys, xs)
        # the centre of binned pixel i is unbinned pixel (i + 0.5) f - 0.5
        rows.append(np.column_stack([(pos[:, 0] + 0.5) * f - 0.5, (pos[:, 1] + 0.5) * f - 0.5,
                                     pos[:, 2] * f, pos[:, 3] * f, ts[ys, xs],
                                     res["flux"][ys, xs], res["flux_err"][ys, xs],
                                     np.full(len(ys), sigma)]))
    if not rows:
        return _empty()
    cand = np.concatenate(rows)
    cand = cand[np.argsort(-cand[:, 4], kind="stable")]
    keep = []
    for k, row in enumerate(cand):
        if not any(np.hypot(*(cand[j, :2] - row[:2])) * pixel_deg < 0.1 + cand[j, 7]
                   for j in keep):
            keep.append(k)
    return QTable(cand[keep], names=_COLUMNS)


def drop_found(candidates, detections, pixel_deg, min_score=0.5):
    """Candidates with no detection of score >= ``min_score`` within 0.1 deg + their sigma.

    The extended search is for the sources the network misses; a candidate
    near a confident network detection is that source (or its wide halo).

    Parameters
    ----------
    candidates : `~astropy.table.QTable`
        `extended_candidates` output.
    detections : `~astropy.table.Table`
        ``x_centroid``, ``y_centroid`` and ``score`` (same pixel grid).
    pixel_deg : float
        Pixel size (deg).
    min_score : float
        Detections with a lower score do not explain a candidate.
    """
    if not len(candidates) or not len(detections):
        return candidates
    strong = np.asarray(detections["score"], float) >= min_score
    dx = np.asarray(detections["x_centroid"], float)[strong]
    dy = np.asarray(detections["y_centroid"], float)[strong]
    cx = np.asarray(candidates["x_centroid"], float)[:, None]
    cy = np.asarray(candidates["y_centroid"], float)[:, None]
    dist = np.hypot(cx - dx[None], cy - dy[None]) * pixel_deg
    radius = 0.1 + np.asarray(candidates["kernel_sigma_deg"], float)[:, None]
    return candidates[~np.any(dist < radius, axis=1)]

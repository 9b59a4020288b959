"""Per-pixel training targets made from true source positions.

Positions are 0-based pixel coordinates ``(x, y)`` with pixel ``(i, j)``
(row ``j = y``, column ``i = x``) centred on integer values, as in the rest of
astro_asid. All functions work on one image; `make_targets` stacks a batch.

- `disk_targets`: 1 inside disks of radius ``R`` (2.5 px, Panes et al. 2021)
  around each source, else 0 (the segmentation target of UNEK / ASID-L);
- `gaussian_heatmap`: the maximum over sources of a unit-peak Gaussian;
- `offset_targets`: the vector from each pixel to its nearest source centre
  (Centroid-Net);
- `direction_targets`: the unit vector ``(cos, sin)`` along the same
  direction (CeDiRNet), with a weight that is 0 where it is undefined.
"""

import numpy as np
import torch

__all__ = ["nearest_centre", "disk_targets", "gaussian_heatmap", "offset_targets",
           "direction_targets", "make_targets"]


def _positions(xy):
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        return np.zeros((0, 2))
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"positions must have shape (n, 2) as (x, y), got {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise ValueError("source positions must be finite")
    return xy


def nearest_centre(xy, shape):
    """Vector from every pixel to its nearest source and the distance.

    Parameters
    ----------
    xy : array-like, shape (n, 2)
        Source positions ``(x, y)`` in pixels.
    shape : tuple
        ``(ny, nx)``.

    Returns
    -------
    dx, dy, dist : `~numpy.ndarray`
        ``(ny, nx)`` each; ``dist`` is ``inf`` (and ``dx``, ``dy`` 0) when
        there are no sources.
    """
    xy = _positions(xy)
    ny, nx = shape
    if len(xy) == 0:
        z = np.zeros(shape)
        return z, z.copy(), np.full(shape, np.inf)
    yy, xx = np.mgrid[0:ny, 0:nx]
    # brute force: a few tens of sources x a few thousand pixels per patch
    ddx = xy[:, 0][:, None, None] - xx[None]
    ddy = xy[:, 1][:, None, None] - yy[None]
    d2 = ddx ** 2 + ddy ** 2
    k = np.argmin(d2, axis=0)
    dx = np.take_along_axis(ddx, k[None], 0)[0]
    dy = np.take_along_axis(ddy, k[None], 0)[0]
    return dx, dy, np.sqrt(dx ** 2 + dy ** 2)


def disk_targets(xy, shape, radius=2.5):
    """Binary segmentation map: 1 within ``radius`` pixels of any source."""
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    _, _, dist = nearest_centre(xy, shape)
    return (dist <= radius).astype(np.float32)


def gaussian_heatmap(xy, shape, sigma=1.0):
    """Maximum over sources of ``exp(-r^2 / 2 sigma^2)`` (peak 1 at each source)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    _, _, dist = nearest_centre(xy, shape)
    return np.exp(-0.5 * (dist / sigma) ** 2).astype(np.float32)


def offset_targets(xy, shape, max_distance=5.0):
    """Per-pixel vector ``(dx, dy)`` to the nearest source and its loss weight.

    Returns
    -------
    offset : `~numpy.ndarray`
        ``(2, ny, nx)`` float32, pixels.
    weight : `~numpy.ndarray`
        ``(ny, nx)`` float32, 1 where the nearest source is within
        ``max_distance`` (the vector is learnable there), else 0.
    """
    dx, dy, dist = nearest_centre(xy, shape)
    weight = (dist <= max_distance).astype(np.float32)
    return np.stack([dx, dy]).astype(np.float32), weight


def direction_targets(xy, shape, max_distance=5.0, min_distance=0.25):
    """Per-pixel ``(cos, sin)`` of the direction to the nearest source and its weight.

    The direction is undefined on top of a source, so the weight is 0 closer
    than ``min_distance`` and beyond ``max_distance``.
    """
    dx, dy, dist = nearest_centre(xy, shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(dist > 0, dx / dist, 0.0)
        s = np.where(dist > 0, dy / dist, 0.0)
    c = np.nan_to_num(c)
    s = np.nan_to_num(s)
    weight = ((dist >= min_distance) & (dist <= max_distance)).astype(np.float32)
    return np.stack([c, s]).astype(np.float32), weight


def make_targets(positions, shape, radius=2.5, vector_radius=5.0):
    """Targets of a batch for the multi-head U-Net.

    Parameters
    ----------
    positions : list of array-like
        One ``(n_i, 2)`` array of ``(x, y)`` per image.
    shape : tuple
        ``(ny, nx)``.
    radius : float
        Disk radius of the segmentation target.
    vector_radius : float
        Offsets and directions are trained within this distance of a source.

    Returns
    -------
    dict of `torch.Tensor`
        ``seg`` (n, 1, ny, nx), ``offset`` (n, 2, ny, nx), ``offset_w``
        (n, 1, ny, nx), ``direction`` (n, 2, ny, nx), ``direction_w``
        (n, 1, ny, nx).
    """
    seg, off, offw, dirn, dirw = [], [], [], [], []
    for xy in positions:
        dx, dy, dist = nearest_centre(xy, shape)
        seg.append((dist <= radius)[None])
        off.append(np.stack([dx, dy]))
        offw.append((dist <= vector_radius)[None])
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(dist > 0, dist, 1.0)
        dirn.append(np.stack([dx / d, dy / d]))
        dirw.append(((dist >= 0.25) & (dist <= vector_radius))[None])

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))

    return {"seg": t(seg), "offset": t(off), "offset_w": t(offw),
            "direction": t(dirn), "direction_w": t(dirw)}

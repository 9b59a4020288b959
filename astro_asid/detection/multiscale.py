"""Detection on binned copies of a counts map, for sources wider than the network's view.

A U-Net trained on point-like and moderately extended sources sees a wide,
faint source (Gaussian sigma of 0.2-0.5 deg on 0.02 deg CTAO pixels) as a
low, flat excess spread over many pixels and rarely marks it. Summing the
counts in ``f x f`` blocks shrinks such a source to the widths the network
was trained on while keeping every count, so the same network, run on the
binned map, finds it. `bin_counts` makes the binned cubes; `merge_scales`
merges the detections of all binnings into one catalogue.
"""

import numpy as np

__all__ = ["check_scales", "bin_counts", "merge_scales"]


def check_scales(scales):
    """Validate binning factors: a sorted tuple of distinct integers >= 1 that starts with 1."""
    try:
        out = tuple(sorted({int(s) for s in scales}))
    except (TypeError, ValueError):
        raise ValueError(f"scales must be integers >= 1, got {scales!r}") from None
    if not out or out[0] != 1 or any(float(s) != int(s) for s in scales):
        raise ValueError(f"scales must be integers >= 1 and include 1 (the map itself), "
                         f"got {scales!r}")
    return out


def bin_counts(cubes, masks, factor):
    """Sum counts in ``factor x factor`` blocks.

    Parameters
    ----------
    cubes : `~numpy.ndarray`
        ``(n, n_bands, ny, nx)`` counts.
    masks : `~numpy.ndarray` of bool or None
        Same shape, True where a pixel is not valid (None: the non-finite ones).
    factor : int
        Block size. Images whose sides are not multiples of it are padded
        with masked pixels.

    Returns
    -------
    binned, binned_mask : `~numpy.ndarray`
        ``(n, n_bands, ceil(ny/f), ceil(nx/f))``. A block with some masked
        pixels gets the sum of its valid ones scaled to the full block (the
        same expected counts as an unmasked block); a block with none valid
        is masked.
    """
    cubes = np.asarray(cubes, dtype=np.float32)
    masks = ~np.isfinite(cubes) if masks is None else np.asarray(masks, bool)
    f = int(factor)
    if f == 1:
        return cubes, masks
    n, nb, ny, nx = cubes.shape
    py, px = -ny % f, -nx % f
    pad = ((0, 0), (0, 0), (0, py), (0, px))
    data = np.pad(np.where(masks, 0.0, cubes), pad)
    valid = np.pad(~masks, pad).astype(np.float32)
    shape = (n, nb, (ny + py) // f, f, (nx + px) // f, f)
    total = data.reshape(shape).sum(axis=(3, 5))
    n_valid = valid.reshape(shape).sum(axis=(3, 5))
    binned_mask = n_valid == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        binned = np.where(binned_mask, 0.0, total * (f * f) / n_valid).astype(np.float32)
    return binned, binned_mask


def merge_scales(tables, radius, tie=0.02):
    """Merge the catalogues of one image found at several binnings.

    Detections are visited by decreasing ``score - tie * log2(scale)``; one
    is dropped when a detection of *another* binning, already kept, lies
    within ``radius`` pixels (of the unbinned map). Detections of the same
    binning never suppress each other: their decoder already separated them.
    The small ``tie`` term hands near-ties (a bright point source scores about
    1 at every binning) to the finer binning, whose position is better.

    Parameters
    ----------
    tables : list of `~astropy.table.QTable`
        One per binning (at least one), with ``x_centroid``, ``y_centroid``
        (unbinned pixels), ``score`` and ``scale`` columns.
    radius : float
        Suppression radius in unbinned pixels.
    tie : float
        Score handicap per doubling of the binning in the visiting order.

    Returns
    -------
    `~astropy.table.QTable`
        The kept rows, by decreasing score.
    """
    from astropy.table import vstack

    filled = [t for t in tables if len(t)]
    if len(filled) <= 1:
        return filled[0] if filled else tables[0]
    merged = vstack(filled, metadata_conflicts="silent")
    x = np.asarray(merged["x_centroid"], float)
    y = np.asarray(merged["y_centroid"], float)
    scale = np.asarray(merged["scale"])
    rank = np.asarray(merged["score"], float) - tie * np.log2(scale)
    dropped = np.zeros(len(merged), bool)
    keep = []
    r2 = float(radius) ** 2
    for k in np.argsort(-rank, kind="stable"):
        if dropped[k]:
            continue
        keep.append(k)
        dropped |= (scale != scale[k]) & ((x - x[k]) ** 2 + (y - y[k]) ** 2 <= r2)
    keep = np.array(keep, int)
    return merged[keep[np.argsort(-np.asarray(merged["score"], float)[keep], kind="stable")]]

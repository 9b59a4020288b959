"""Merging detections of overlapping tiles by sky separation.

When a large map is cut into overlapping tiles, a source near a tile border
is found once per tile that sees it, at slightly different positions. These
helpers find such duplicates and keep the detection with the best score.

Only detections from *different* tiles can be duplicates of each other: two
detections of the same tile are two sources (the detector already separated
them), even when they are close. A cross-tile pair is a duplicate when the
two detections are within ``radius`` of each other and are each other's
nearest neighbour among the detections of the other tile (so a close pair of
real sources seen in two tiles is matched one to one, not collapsed into
one). Duplicates are resolved greedily by decreasing score.
"""

import numpy as np
from astropy import units as u
from scipy.spatial import cKDTree

__all__ = ["lonlat_to_unit", "angular_separation_deg", "merge_duplicates", "close_pairs"]


def lonlat_to_unit(lon, lat):
    """Unit vectors ``(n, 3)`` of longitudes/latitudes in degrees."""
    lon = np.deg2rad(np.asarray(lon, float))
    lat = np.deg2rad(np.asarray(lat, float))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def _chord(radius_deg):
    """Chord length on the unit sphere of an angle in degrees."""
    return 2.0 * np.sin(np.deg2rad(radius_deg) / 2.0)


def angular_separation_deg(lon1, lat1, lon2, lat2):
    """Great-circle separation in degrees (Vincenty formula, stable at all angles)."""
    l1, b1, l2, b2 = (np.deg2rad(np.asarray(a, float)) for a in (lon1, lat1, lon2, lat2))
    dl = l2 - l1
    num = np.hypot(np.cos(b2) * np.sin(dl),
                   np.cos(b1) * np.sin(b2) - np.sin(b1) * np.cos(b2) * np.cos(dl))
    den = np.sin(b1) * np.sin(b2) + np.cos(b1) * np.cos(b2) * np.cos(dl)
    return np.rad2deg(np.arctan2(num, den))


def _as_deg(radius):
    if isinstance(radius, u.Quantity):
        radius = radius.to_value(u.deg)
    radius = float(radius)
    if not np.isfinite(radius) or radius <= 0 or radius >= 90:
        raise ValueError(f"merge radius must be a positive angle below 90 deg, got {radius} deg")
    return radius


def close_pairs(lon, lat, radius):
    """Index pairs ``(i, j)``, ``i < j``, of positions closer than ``radius``.

    Parameters
    ----------
    lon, lat : array-like
        Positions in degrees.
    radius : float or `~astropy.units.Quantity`
        Angle (degrees when a plain number).

    Returns
    -------
    pairs : `~numpy.ndarray`
        ``(n_pairs, 2)`` int array.
    separation : `~numpy.ndarray`
        Their separations in degrees.
    """
    radius = _as_deg(radius)
    vec = lonlat_to_unit(lon, lat).reshape(-1, 3)
    if len(vec) < 2:
        return np.zeros((0, 2), int), np.zeros(0)
    pairs = cKDTree(vec).query_pairs(_chord(radius), output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros((0, 2), int), np.zeros(0)
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    lon = np.asarray(lon, float).ravel()
    lat = np.asarray(lat, float).ravel()
    sep = angular_separation_deg(lon[pairs[:, 0]], lat[pairs[:, 0]], lon[pairs[:, 1]],
                                 lat[pairs[:, 1]])
    return pairs, sep


def _mutual_nearest(pairs, sep, tile):
    """Keep the pairs whose members are each other's nearest neighbour in the other's tile."""
    # Directed edges a -> b, keyed by (a, tile of b): the nearest b per key wins.
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])
    s = np.concatenate([sep, sep])
    order = np.lexsort((s, tile[b], a))
    a, b, s = a[order], b[order], s[order]
    first = np.ones(a.size, bool)
    first[1:] = (a[1:] != a[:-1]) | (tile[b][1:] != tile[b][:-1])
    nearest = set(zip(a[first].tolist(), b[first].tolist()))
    keep = np.array([(i, j) in nearest and (j, i) in nearest for i, j in pairs.tolist()], bool)
    return keep


def _greedy_duplicates(pairs, score):
    """The duplicates of groups linked by ``pairs``: best score first (ties: lower
    index), every detection linked to an accepted one is a duplicate. Returns
    ``[(i, into), ...]``: detection ``i`` is dropped for ``into``, its best accepted
    neighbour."""
    neighbours = {}
    for i, j in pairs.tolist():
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    involved = np.unique(pairs)
    order = involved[np.lexsort((involved, -score[involved]))]
    accepted, dropped = set(), []
    for i in order.tolist():
        owners = [j for j in neighbours[i] if j in accepted]
        if owners:
            dropped.append((i, max(owners, key=lambda j: (score[j], -j))))
        else:
            accepted.add(i)
    return dropped


def _resolve_duplicates(pairs, score, keep, merged_into):
    """Pick one detection per group of duplicate ``pairs``, in place (`_greedy_duplicates`):
    ``keep`` False and ``merged_into`` the best accepted neighbour for the others."""
    for i, into in _greedy_duplicates(pairs, score):
        keep[i] = False
        merged_into[i] = into


def _suppress_close(lon, lat, score, keep, merged_into, min_separation):
    """Drop kept detections closer than ``min_separation`` to a better kept one (any tile)."""
    idx = np.flatnonzero(keep)
    pairs, _ = close_pairs(lon[idx], lat[idx], min_separation)
    if len(pairs) == 0:
        return
    for i, into in _greedy_duplicates(idx[pairs], score):
        keep[i] = False
        # the detections already merged into i (and i itself) now count for ``into``
        merged_into[merged_into == i] = into


def merge_duplicates(lon, lat, score, tile, radius=0.3 * u.deg, min_separation=None):
    """Find duplicate detections of overlapping tiles and pick one of each.

    Parameters
    ----------
    lon, lat : array-like
        Detected positions (degrees, any one frame).
    score : array-like
        Detector scores; among duplicates the highest score is kept.
    tile : array-like of int
        Tile each detection came from; only detections from different tiles
        are ever merged.
    radius : float or `~astropy.units.Quantity`, optional
        Largest separation of two detections of the same source (degrees
        when a plain number).
    min_separation : float or `~astropy.units.Quantity`, optional
        Afterwards, of two kept detections closer than this (from any tiles,
        also the same one), only the better is kept: a floor below the
        instrument's resolution against double detections of one source.
        None (default): no floor.

    Returns
    -------
    keep : `~numpy.ndarray` of bool
        True for the detections to keep.
    merged_into : `~numpy.ndarray` of int
        For every detection, the index of the kept detection that represents
        it (itself when kept).
    n_merged : `~numpy.ndarray` of int
        For every detection, how many detections it represents (1 for a
        detection without duplicates, 0 for a dropped one).

    Examples
    --------
    >>> keep, into, n = merge_duplicates([10.0, 10.05, 10.4], [0.0, 0.0, 0.0],
    ...                                  [0.5, 0.9, 0.7], [0, 1, 1], radius=0.2)
    >>> keep.tolist(), into.tolist(), n.tolist()
    ([False, True, True], [1, 1, 2], [0, 2, 1])
    """
    lon = np.asarray(lon, float).ravel()
    lat = np.asarray(lat, float).ravel()
    score = np.asarray(score, float).ravel()
    tile = np.asarray(tile).ravel()
    n = lon.size
    if not (lat.size == score.size == tile.size == n):
        raise ValueError(f"lon, lat, score and tile must have the same length, got "
                         f"{lon.size}, {lat.size}, {score.size}, {tile.size}")
    if n and not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise ValueError("positions must be finite")
    keep = np.ones(n, bool)
    merged_into = np.arange(n)
    pairs, sep = close_pairs(lon, lat, radius)
    if len(pairs):
        cross = tile[pairs[:, 0]] != tile[pairs[:, 1]]
        pairs, sep = pairs[cross], sep[cross]
    if len(pairs):
        mutual = _mutual_nearest(pairs, sep, tile)
        pairs = pairs[mutual]
    if len(pairs):
        _resolve_duplicates(pairs, score, keep, merged_into)
    if min_separation is not None and n:
        _suppress_close(lon, lat, score, keep, merged_into, min_separation)
    n_merged = np.bincount(merged_into, minlength=n) * keep
    return keep, merged_into, n_merged

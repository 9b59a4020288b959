"""Turn the per-pixel maps of a U-Net into source positions.

Each decoder works on the maps of one image (numpy arrays ``(ny, nx)`` or
``(2, ny, nx)``) and returns a `Candidates` record: sub-pixel ``x``, ``y``
(0-based pixels) and a *raw* score (larger is more confident, not yet a
probability; `ScoreCalibration` maps it to 0..1).

- `log_peaks`: Laplacian-of-Gaussian blob finding on the segmentation map
  (ASID-L, AutoSourceID);
- `kmeans_penalised`: the penalised k-means of Panes et al. (2021),
  appendix B (UNEK);
- `centroid_votes`: Centroid-Net voting with per-pixel offset vectors
  (Dijkstra et al. 2018);
- `direction_convergence`: CeDiRNet-style localisation from per-pixel
  directions (sine, cosine) to the nearest centre, with hand-made kernels.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Candidates", "log_peaks", "kmeans_penalised", "centroid_votes",
           "direction_convergence", "refine_positions", "ScoreCalibration"]


@dataclass
class Candidates:
    """Source candidates of one image: positions in pixels and raw scores."""

    x: np.ndarray
    y: np.ndarray
    raw_score: np.ndarray

    def __post_init__(self):
        self.x = np.asarray(self.x, dtype=np.float64).ravel()
        self.y = np.asarray(self.y, dtype=np.float64).ravel()
        self.raw_score = np.asarray(self.raw_score, dtype=np.float64).ravel()
        if not (len(self.x) == len(self.y) == len(self.raw_score)):
            raise ValueError("x, y and raw_score must have the same length")

    def __len__(self):
        return len(self.x)

    @classmethod
    def empty(cls):
        """A record with no candidates."""
        return cls(np.zeros(0), np.zeros(0), np.zeros(0))

    def select(self, keep):
        """The candidates where the boolean array ``keep`` is True."""
        return Candidates(self.x[keep], self.y[keep], self.raw_score[keep])


def _check_map(arr, name, ndim=2):
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _local_maxima(img, threshold, size=3):
    """Row and column of the strict-enough local maxima of ``img`` above ``threshold``."""
    mx = ndimage.maximum_filter(img, size=size, mode="constant", cval=-np.inf)
    peaks = (img >= mx) & (img > threshold)
    # flat plateaus give several equal maxima: keep one per connected plateau
    lab, n = ndimage.label(peaks)
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int)
    idx = ndimage.maximum_position(img, lab, index=np.arange(1, n + 1))
    idx = np.array(idx, dtype=int).reshape(-1, 2)
    return idx[:, 0], idx[:, 1]


def _parabolic_offset(fm, f0, fp):
    """Sub-pixel offset of the vertex of the parabola through three samples (clipped to +-0.5)."""
    den = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
    return np.clip(off, -0.5, 0.5)


def log_peaks(seg, sigma=2.5 / np.sqrt(2.0), threshold=0.02, score="log"):
    """Laplacian-of-Gaussian peaks of a segmentation (probability) map.

    A disk of radius ``R`` gives the strongest scale-normalised LoG response
    at ``sigma = R / sqrt(2)``; the default matches the R = 2.5 px training
    disks.

    Parameters
    ----------
    seg : `~numpy.ndarray`
        ``(ny, nx)`` source probabilities.
    sigma : float
        Gaussian scale in pixels.
    threshold : float
        Minimum LoG response (in probability units) of a peak.
    score : {"log", "peak"}
        Raw score: the LoG response at the peak (integrates the probability
        over the disk) or the largest probability within 1 px.

    Returns
    -------
    `Candidates`
    """
    seg = _check_map(seg, "seg")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if score not in ("log", "peak"):
        raise ValueError(f"score must be 'log' or 'peak', not {score!r}")
    resp = -sigma ** 2 * ndimage.gaussian_laplace(seg, sigma, mode="constant", cval=0.0)
    rows, cols = _local_maxima(resp, threshold)
    if len(rows) == 0:
        return Candidates.empty()
    pad = np.pad(resp, 1, mode="edge")
    r, c = rows + 1, cols + 1
    dx = _parabolic_offset(pad[r, c - 1], pad[r, c], pad[r, c + 1])
    dy = _parabolic_offset(pad[r - 1, c], pad[r, c], pad[r + 1, c])
    if score == "log":
        raw = resp[rows, cols]
    else:
        raw = ndimage.maximum_filter(seg, size=3, mode="nearest")[rows, cols]
    return Candidates(cols + dx, rows + dy, raw)


def _disk_offsets(radius):
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dx ** 2 + dy ** 2 <= radius ** 2
    return dy[keep], dx[keep]


def kmeans_penalised(seg, label_threshold=0.2, penalty=-10.0, radius=5.0, k_max=50,
                     patience=None, weighted=False, n_init=1, seed=0):
    """The penalised k-means clustering of UNEK (Panes et al. 2021, appendix B).

    For ``k = 1 .. k_max - 1`` (the paper's ``range(1, 50)``), k-means is run
    on the positions of the pixels whose probability exceeds
    ``label_threshold``; the clusters are visited in turn, the probabilities
    within ``radius`` of each centre are summed into ``S_k`` and then set to
    ``penalty``, so pixels claimed by two clusters count negatively. The k
    with the largest ``S_k`` wins. The working copy of the map is reset for
    every k (the paper's pseudo-code copies it once, which would carry the
    penalties of one k into the next and cannot be what was meant).

    Parameters
    ----------
    seg : `~numpy.ndarray`
        ``(ny, nx)`` source probabilities.
    label_threshold : float
        ``l_sth``: pixels above it are clustered (paper: 0.2).
    penalty : float
        ``l_sng``: the value given to already visited pixels (paper: -10).
    radius : float
        ``R`` in pixels (paper: 5).
    k_max : int
        Largest k tried plus one (paper: 50).
    patience : int or None
        Stop after this many k without improvement of ``S_k`` (None: try all,
        as the paper; a few is ~5x faster and gives the same answer almost always).
    weighted : bool
        Weight the pixels by their probability in k-means (the paper does not).
    n_init, seed : int
        k-means restarts and random seed (scikit-learn ``KMeans``).

    Returns
    -------
    `Candidates`
        The raw score of a centre is the largest probability within 1.5 px.
    """
    from sklearn.cluster import KMeans

    seg = _check_map(seg, "seg")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if k_max < 2:
        raise ValueError(f"k_max must be >= 2, got {k_max}")
    rows, cols = np.nonzero(seg > label_threshold)
    if len(rows) == 0:
        return Candidates.empty()
    pts = np.column_stack([cols, rows]).astype(np.float64)
    w = seg[rows, cols] if weighted else None
    ny, nx = seg.shape
    ddy, ddx = _disk_offsets(radius)
    best_s, best_centres, since_best = 0.0, None, 0
    for k in range(1, min(k_max, len(pts) + 1)):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(pts, sample_weight=w)
        centres = km.cluster_centers_
        work = seg.copy()
        s_k = 0.0
        for cx, cy in centres:
            # pixels whose centres lie within R of the cluster centre
            py = np.rint(cy).astype(int) + ddy
            px = np.rint(cx).astype(int) + ddx
            sel = ((py >= 0) & (py < ny) & (px >= 0) & (px < nx)
                   & ((px - cx) ** 2 + (py - cy) ** 2 <= radius ** 2))
            py, px = py[sel], px[sel]
            s_k += work[py, px].sum()
            work[py, px] = penalty
        if s_k > best_s:
            best_s, best_centres, since_best = s_k, centres, 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    if best_centres is None:
        return Candidates.empty()
    peak = ndimage.maximum_filter(seg, footprint=_footprint(1.5), mode="nearest")
    ci = np.clip(np.rint(best_centres[:, 0]).astype(int), 0, nx - 1)
    ri = np.clip(np.rint(best_centres[:, 1]).astype(int), 0, ny - 1)
    return Candidates(best_centres[:, 0], best_centres[:, 1], peak[ri, ci])


def _footprint(radius):
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2


def centroid_votes(seg, offset, seg_threshold=0.1, max_offset=6.0, sigma=0.7,
                   min_votes=0.5, merge_radius=1.5):
    """Centroid-Net voting: every likely source pixel votes where its vector points.

    Parameters
    ----------
    seg : `~numpy.ndarray`
        ``(ny, nx)`` source probabilities; a pixel's vote weighs its probability.
    offset : `~numpy.ndarray`
        ``(2, ny, nx)``: ``(dx, dy)`` from each pixel to its nearest source (px).
    seg_threshold : float
        Pixels with a lower probability do not vote.
    max_offset : float
        Votes longer than this (px) are ignored (outside the trained range).
    sigma : float
        Gaussian smoothing (px) of the vote map before peak finding.
    min_votes : float
        Minimum smoothed vote density of a centre.
    merge_radius : float
        Votes within this distance of a peak are averaged into its sub-pixel
        position, and their summed weight is the raw score.

    Returns
    -------
    `Candidates`
    """
    seg = _check_map(seg, "seg")
    offset = _check_map(offset, "offset", ndim=3)
    if offset.shape != (2,) + seg.shape:
        raise ValueError(f"offset must have shape {(2,) + seg.shape}, got {offset.shape}")
    ny, nx = seg.shape
    rows, cols = np.nonzero(seg > seg_threshold)
    dx, dy = offset[0, rows, cols], offset[1, rows, cols]
    ok = dx ** 2 + dy ** 2 <= max_offset ** 2
    vx, vy, vw = cols[ok] + dx[ok], rows[ok] + dy[ok], seg[rows[ok], cols[ok]]
    inside = (vx > -0.5) & (vx < nx - 0.5) & (vy > -0.5) & (vy < ny - 0.5)
    vx, vy, vw = vx[inside], vy[inside], vw[inside]
    if len(vx) == 0:
        return Candidates.empty()
    votes = np.zeros(seg.shape)
    np.add.at(votes, (np.rint(vy).astype(int), np.rint(vx).astype(int)), vw)
    dens = ndimage.gaussian_filter(votes, sigma, mode="constant")
    # a point mass of weight w smoothed by the Gaussian peaks at w / (2 pi sigma^2)
    prow, pcol = _local_maxima(dens, min_votes / (2 * np.pi * sigma ** 2))
    if len(prow) == 0:
        return Candidates.empty()
    xs, ys, ss = [], [], []
    for r, c in zip(prow, pcol):
        near = (vx - c) ** 2 + (vy - r) ** 2 <= merge_radius ** 2
        wsum = vw[near].sum()
        if wsum <= 0:
            continue
        xs.append(np.sum(vw[near] * vx[near]) / wsum)
        ys.append(np.sum(vw[near] * vy[near]) / wsum)
        ss.append(wsum)
    cand = Candidates(xs, ys, ss)
    return _merge_close(cand, merge_radius)


def _merge_close(cand, radius):
    """Drop the weaker of two candidates closer than ``radius`` (non-maximum suppression)."""
    if len(cand) < 2:
        return cand
    order = np.argsort(-cand.raw_score)
    keep = []
    for i in order:
        if all((cand.x[i] - cand.x[j]) ** 2 + (cand.y[i] - cand.y[j]) ** 2 > radius ** 2
               for j in keep):
            keep.append(i)
    keep = np.array(sorted(keep))
    return cand.select(keep)


def _direction_kernels(radius):
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    d = np.hypot(xx, yy)
    ring = (d > 0) & (d <= radius)
    kx = np.where(ring, -xx / np.where(d > 0, d, 1), 0.0)
    ky = np.where(ring, -yy / np.where(d > 0, d, 1), 0.0)
    return kx, ky, ring.sum()


def direction_convergence(seg, direction, radius=3.0, threshold=0.1, refine_radius=2.5):
    """CeDiRNet-style localisation: find where the predicted directions converge.

    With ``(cos, sin)`` the unit vector from each pixel towards its nearest
    source, a pixel ``q`` is a centre when its neighbours at ``q + d`` point
    back along ``-d``. Two fixed kernels ``-d_x/|d|`` and ``-d_y/|d|`` over a
    disk of ``radius`` px, correlated with the probability-weighted cosine
    and sine maps, give the *convergence* map (1 for a perfect centre of
    probability-1 pixels). Its peaks are refined to sub-pixel accuracy by the
    weighted least-squares intersection of the direction lines of the
    neighbours within ``refine_radius``.

    Parameters
    ----------
    seg : `~numpy.ndarray`
        ``(ny, nx)`` source probabilities (weights of each pixel's direction).
    direction : `~numpy.ndarray`
        ``(2, ny, nx)``: ``(cos, sin)`` (normalised here).
    radius : float
        Kernel radius (px).
    threshold : float
        Minimum convergence of a centre.
    refine_radius : float
        Neighbourhood of the sub-pixel refinement (px).

    Returns
    -------
    `Candidates`
        The raw score is the convergence at the peak.
    """
    seg = _check_map(seg, "seg")
    direction = _check_map(direction, "direction", ndim=3)
    if direction.shape != (2,) + seg.shape:
        raise ValueError(f"direction must have shape {(2,) + seg.shape}, got {direction.shape}")
    norm = np.hypot(direction[0], direction[1])
    norm = np.where(norm > 1e-6, norm, 1.0)
    c, s = direction[0] / norm, direction[1] / norm
    kx, ky, n_k = _direction_kernels(radius)
    conv = (ndimage.correlate(seg * c, kx, mode="constant")
            + ndimage.correlate(seg * s, ky, mode="constant")) / n_k
    rows, cols = _local_maxima(conv, threshold)
    if len(rows) == 0:
        return Candidates.empty()
    ny, nx = seg.shape
    r = int(np.ceil(refine_radius))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (ox ** 2 + oy ** 2 <= refine_radius ** 2) & ((ox != 0) | (oy != 0))
    oy, ox = oy[disk], ox[disk]
    xs, ys = [], []
    for row, col in zip(rows, cols):
        py, px = row + oy, col + ox
        ok = (py >= 0) & (py < ny) & (px >= 0) & (px < nx)
        py, px = py[ok], px[ok]
        u = np.column_stack([c[py, px], s[py, px]])
        # weight: probability x how well the pixel points back at the peak
        toward = -(u[:, 0] * (px - col) + u[:, 1] * (py - row)) / np.hypot(px - col, py - row)
        w = seg[py, px] * np.clip(toward, 0.0, None)
        a = np.zeros((2, 2))
        b = np.zeros(2)
        for wi, ui, pi in zip(w, u, np.column_stack([px, py]).astype(float)):
            proj = np.eye(2) - np.outer(ui, ui)
            a += wi * proj
            b += wi * proj @ pi
        x0, y0 = float(col), float(row)
        if np.linalg.cond(a) < 1e6:
            xr, yr = np.linalg.solve(a, b)
            if (xr - col) ** 2 + (yr - row) ** 2 <= 1.0:  # a refinement, not a jump
                x0, y0 = xr, yr
        xs.append(x0)
        ys.append(y0)
    return Candidates(xs, ys, conv[rows, cols])


def refine_positions(cand, seg, offset=None, radius=1.5, max_shift=1.0):
    """Refine candidate positions with the pixels around them.

    With ``offset`` (the Centroid-Net head), each pixel within ``radius`` of
    a candidate proposes ``pixel + offset``; the proposals are averaged with
    the source probability as weight. Without it, the probability-weighted
    centroid of those pixels is used. A refinement that moves a candidate by
    more than ``max_shift`` px is not applied (it would be a jump to another
    source, not a refinement).

    Returns
    -------
    `Candidates`
        Same candidates and raw scores, new positions.
    """
    seg = _check_map(seg, "seg")
    if offset is not None:
        offset = _check_map(offset, "offset", ndim=3)
    ny, nx = seg.shape
    if len(cand) == 0:
        return cand
    r = int(np.ceil(radius))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    # all candidates at once: (n_candidates, n_neighbour_pixels)
    x, y = np.asarray(cand.x, float), np.asarray(cand.y, float)
    py = np.rint(y).astype(int)[:, None] + oy.ravel()[None, :]
    px = np.rint(x).astype(int)[:, None] + ox.ravel()[None, :]
    ok = ((py >= 0) & (py < ny) & (px >= 0) & (px < nx)
          & ((px - x[:, None]) ** 2 + (py - y[:, None]) ** 2 <= radius ** 2))
    py, px = np.clip(py, 0, ny - 1), np.clip(px, 0, nx - 1)
    w = np.where(ok, seg[py, px], 0.0)
    if offset is not None:
        tx, ty = px + offset[0, py, px], py + offset[1, py, px]
    else:
        tx, ty = px.astype(float), py.astype(float)
    wsum = w.sum(axis=1)
    has = wsum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        xr = np.sum(w * tx, axis=1) / wsum
        yr = np.sum(w * ty, axis=1) / wsum
    move = has & ((xr - x) ** 2 + (yr - y) ** 2 <= max_shift ** 2)
    x_new = np.where(move, xr, x)
    y_new = np.where(move, yr, y)
    return Candidates(x_new, y_new, cand.raw_score)


class ScoreCalibration:
    """A monotone map from a decoder's raw score to a probability-like score in 0..1.

    Fitted by isotonic regression of "this candidate is a true positive" on
    the raw score over held-out simulated patches, so ``score`` estimates the
    precision of the candidates at that raw score. A tiny strictly
    increasing term keeps the order of the raw scores (no ties), so a
    threshold on ``score`` traces the same precision/recall curve as one on
    the raw score.

    Parameters
    ----------
    raw : array-like
        Increasing raw-score knots.
    calibrated : array-like
        Non-decreasing calibrated values (0..1) at the knots.
    """

    _EPS = 1e-3

    def __init__(self, raw, calibrated):
        raw = np.asarray(raw, dtype=np.float64)
        calibrated = np.asarray(calibrated, dtype=np.float64)
        if raw.ndim != 1 or raw.shape != calibrated.shape or len(raw) < 2:
            raise ValueError("raw and calibrated must be 1-D of the same length >= 2")
        if np.any(np.diff(raw) <= 0):
            raise ValueError("raw knots must increase strictly")
        if np.any(np.diff(calibrated) < 0) or calibrated.min() < 0 or calibrated.max() > 1:
            raise ValueError("calibrated values must be non-decreasing within 0..1")
        self.raw = raw
        self.calibrated = calibrated

    @classmethod
    def fit(cls, raw_score, is_true, n_knots=64):
        """Fit on raw scores and true-positive flags of validation candidates."""
        from sklearn.isotonic import IsotonicRegression

        raw_score = np.asarray(raw_score, dtype=np.float64)
        is_true = np.asarray(is_true, dtype=np.float64)
        if len(raw_score) < 10:
            raise ValueError(f"need at least 10 candidates to calibrate, got {len(raw_score)}")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(raw_score, is_true)
        knots = np.unique(np.quantile(raw_score, np.linspace(0, 1, n_knots)))
        if len(knots) < 2:
            knots = np.array([raw_score.min(), raw_score.min() + 1.0])
        return cls(knots, np.maximum.accumulate(iso.predict(knots)))

    def __call__(self, raw_score):
        raw_score = np.asarray(raw_score, dtype=np.float64)
        base = np.interp(raw_score, self.raw, self.calibrated)
        # strictly increasing tie-breaker in (0, 1), tiny compared with the steps
        tie = 0.5 + np.arctan(raw_score - self.raw[len(self.raw) // 2]) / np.pi
        return np.clip((1 - self._EPS) * base + self._EPS * tie, 0.0, 1.0)

    def to_dict(self):
        """JSON-serialisable form (for the model card)."""
        return {"raw": self.raw.tolist(), "calibrated": self.calibrated.tolist()}

    @classmethod
    def from_dict(cls, d):
        """Inverse of `to_dict`."""
        try:
            return cls(d["raw"], d["calibrated"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid score calibration {d!r}: {exc}") from None

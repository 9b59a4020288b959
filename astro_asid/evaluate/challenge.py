"""The Fermi-LAT point-source data challenge ("catalog 400"): loading and scoring.

The challenge (Panes et al. 2021, A&A 656, A62, seed 002) publishes 768
expected-counts patches of 10 x 10 deg (64 x 64 pixels, 5 energy bands) that
tile the sky, their truth catalog and the paper's own UNEK predictions. This
module loads them, builds the WCS of each patch, makes Poisson draws and
scores a catalog of predictions with the paper's protocol, reproduced exactly:

* per patch, predictions are visited in order; a prediction is a true
  positive (TP) when an unmatched true source of the same patch lies within
  0.3 deg, and it takes the brightest such source (largest ``flux_1000``);
  otherwise it is a false positive (FP);
* unmatched true sources are false negatives (FN); a source that appears in
  two overlapping patches counts once per patch.

The data are never shipped with the package: point `load_challenge` at the
directory, or set the environment variable ``ASID_CHALLENGE_DIR``.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table
from astropy.wcs import WCS

__all__ = [
    "CHALLENGE_ENERGY_EDGES", "MATCH_RADIUS", "FermiChallenge", "ChallengeScore",
    "find_challenge_dir", "load_challenge", "read_truth", "read_unek_predictions",
    "challenge_wcs", "patch_pixel_to_sky", "poisson_draw", "score_catalog",
    "precision_recall_curve", "recall_at_precision", "completeness_vs_flux",
    "precision_vs_flux", "s90", "position_error_stats", "angular_separation",
    "measure_template_offset",
]

#: Energy band edges of the challenge patches.
CHALLENGE_ENERGY_EDGES = [0.5, 1, 2, 7, 20, 200] * u.GeV

#: Matching radius of the paper's protocol.
MATCH_RADIUS = 0.3 * u.deg

# Geometry of a challenge patch (README: verified to 1e-5 deg).
_NPIX = 64
_CDELT = 10.0 / 64.0
_CRPIX = 32.75

_ENV_VAR = "ASID_CHALLENGE_DIR"
_FILES = {
    "patches": "patches_catalog400.npz",
    "truth": "truth_catalog400.csv",
    "unek": "unek_predictions_catalog400.csv",
}


def find_challenge_dir(path=None):
    """Locate the data-challenge directory.

    Parameters
    ----------
    path : str or `~pathlib.Path`, optional
        Explicit directory. When None, try ``$ASID_CHALLENGE_DIR``, then
        ``../shared/data/fermi-data-challenge`` relative to the repository
        (the parent of the installed package) and to the working directory.

    Returns
    -------
    `~pathlib.Path`
        A directory that holds ``truth_catalog400.csv``.

    Raises
    ------
    FileNotFoundError
        When no candidate holds the challenge files; the message lists the
        places that were tried.
    """
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = []
        if os.environ.get(_ENV_VAR):
            candidates.append(Path(os.environ[_ENV_VAR]))
        repo = Path(__file__).resolve().parents[2]
        rel = Path("..") / "shared" / "data" / "fermi-data-challenge"
        candidates += [repo / rel, Path.cwd() / rel,
                       Path.cwd() / "shared" / "data" / "fermi-data-challenge"]
    for cand in candidates:
        if (cand / _FILES["truth"]).is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fermi data-challenge files ({_FILES['truth']} ...) not found; tried: {tried}. "
        f"Pass the directory explicitly or set ${_ENV_VAR}.")


def challenge_wcs(lon, lat, npix=_NPIX):
    """WCS of a challenge patch centred at Galactic ``(lon, lat)``.

    CAR projection, ``CDELT = (-10/64, +10/64)`` deg, ``CRPIX = 32.75`` (FITS,
    1-based), ``CRVAL`` = the patch centre, exactly as the challenge README
    states.

    Parameters
    ----------
    lon, lat : float
        Galactic longitude and latitude of the patch centre, deg.
    npix : int, optional
        Patch width in pixels (64 for the challenge).

    Returns
    -------
    `~astropy.wcs.WCS`
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    w.wcs.crval = [float(lon), float(lat)]
    w.wcs.cdelt = [-_CDELT, _CDELT]
    # CRPIX scales with the patch size so that other sizes keep the same offset convention.
    crpix = _CRPIX * npix / _NPIX
    w.wcs.crpix = [crpix, crpix]
    w.wcs.cunit = ["deg", "deg"]
    w.pixel_shape = (npix, npix)
    return w


def patch_pixel_to_sky(lon_c, lat_c, x, y):
    """Galactic ``(lon, lat)`` in deg of 0-based pixel positions in a challenge patch."""
    w = challenge_wcs(lon_c, lat_c)
    lon, lat = w.wcs_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return np.mod(lon, 360.0), lat


@dataclass
class FermiChallenge:
    """The data challenge held in memory.

    Attributes
    ----------
    background, agn, psr : `~numpy.ndarray`
        Expected counts, float32, shape ``(768, 5, 64, 64)`` (band first, as
        everywhere in astro_asid; the npz file stores band last).
    patch_lon, patch_lat : `~numpy.ndarray`
        Galactic centres of the patches, deg.
    truth : `~astropy.table.Table`
        One row per true source per patch: ``patch``, ``lon``, ``lat``,
        ``flux_1000``, ``flux_10000``, ``cls`` (0 AGN, 1 pulsar), ``x``, ``y``
        (0-based WCS pixel position in its patch).
    path : `~pathlib.Path`
        Directory the files were read from.
    """

    background: np.ndarray
    agn: np.ndarray
    psr: np.ndarray
    patch_lon: np.ndarray
    patch_lat: np.ndarray
    truth: Table
    path: Path = None
    energy_edges: u.Quantity = field(default_factory=lambda: CHALLENGE_ENERGY_EDGES.copy())

    @property
    def n_patches(self):
        """Number of patches (768)."""
        return len(self.patch_lon)

    @property
    def expected(self):
        """Total expected counts ``background + agn + psr``, ``(768, 5, 64, 64)``."""
        return self.background + self.agn + self.psr

    def wcs(self, i):
        """WCS of patch ``i``."""
        return challenge_wcs(self.patch_lon[i], self.patch_lat[i])

    def truth_of(self, i):
        """Truth rows of patch ``i``."""
        return self.truth[self.truth["patch"] == i]

    def unek_predictions(self):
        """The paper's UNEK predictions (see `read_unek_predictions`)."""
        return read_unek_predictions(self.path)


def read_truth(path=None):
    """Read ``truth_catalog400.csv`` into a table with normalised column names.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``patch``, ``lon``, ``lat``, ``flux_1000``, ``flux_10000``,
        ``cls``, ``lon_c``, ``lat_c``, ``x``, ``y`` (0-based WCS pixel of the
        true position in its patch).
    """
    d = find_challenge_dir(path)
    raw = Table.read(d / _FILES["truth"], format="ascii.csv")
    patch = np.array([int(str(f).split("_")[-1].split(".")[0]) for f in raw["filename"]])
    t = Table()
    t["patch"] = patch
    t["lon"] = np.asarray(raw["lon_p"], float)
    t["lat"] = np.asarray(raw["lat_p"], float)
    t["flux_1000"] = np.asarray(raw["flux_1000"], float)
    t["flux_10000"] = np.asarray(raw["flux_10000"], float)
    t["cls"] = np.asarray(raw["class"], int)
    t["lon_c"] = np.asarray(raw["lon_c"], float)
    t["lat_c"] = np.asarray(raw["lat_c"], float)
    x = np.empty(len(t))
    y = np.empty(len(t))
    for p in np.unique(patch):
        sel = patch == p
        w = challenge_wcs(t["lon_c"][sel][0], t["lat_c"][sel][0])
        x[sel], y[sel] = w.wcs_world2pix(t["lon"][sel], t["lat"][sel], 0)
    t["x"] = x
    t["y"] = y
    t.meta["source"] = str(d / _FILES["truth"])
    return t


def read_unek_predictions(path=None):
    """Read the paper's UNEK predictions, in file order.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``patch``, ``x``, ``y`` (pixels), ``lon``, ``lat`` (deg) and
        ``score`` (the source/FAKE classifier's ``probability``).
    """
    d = find_challenge_dir(path)
    raw = Table.read(d / _FILES["unek"], format="ascii.csv")
    t = Table()
    t["patch"] = np.asarray(raw["image_nr"], int)
    t["x"] = np.asarray(raw["centroid_x"], float)
    t["y"] = np.asarray(raw["centroid_y"], float)
    t["lon"] = np.asarray(raw["lon_ps"], float)
    t["lat"] = np.asarray(raw["lat_ps"], float)
    t["score"] = np.asarray(raw["probability"], float)
    return t


def load_challenge(path=None, patches=True):
    """Load the data challenge.

    Parameters
    ----------
    path : str or `~pathlib.Path`, optional
        Directory of the files (see `find_challenge_dir`).
    patches : bool, optional
        Also read the ~100 MB npz of expected-counts patches (default). With
        False, the three arrays are None and only the truth and the patch
        centres are loaded.

    Returns
    -------
    `FermiChallenge`
    """
    d = find_challenge_dir(path)
    truth = read_truth(d)
    if patches:
        with np.load(d / _FILES["patches"]) as f:
            # (patch, y, x, band) -> (patch, band, y, x), the package's layout.
            arrays = {k: np.ascontiguousarray(np.moveaxis(f[k], -1, 1), dtype=np.float32)
                      for k in ("background", "agn", "psr")}
            lon, lat = np.asarray(f["patch_lon"], float), np.asarray(f["patch_lat"], float)
    else:
        import healpy as hp
        arrays = dict(background=None, agn=None, psr=None)
        lon, lat = hp.pix2ang(8, np.arange(768), lonlat=True)
    return FermiChallenge(patch_lon=lon, patch_lat=lat, truth=truth, path=d, **arrays)


def poisson_draw(expected, seed=0):
    """A Poisson draw of expected counts with `numpy.random.Generator`.

    Parameters
    ----------
    expected : `~numpy.ndarray` or `FermiChallenge`
        Expected counts (any shape, >= 0), or a challenge (its
        ``background + agn + psr``).
    seed : int or `~numpy.random.Generator`, optional

    Returns
    -------
    `~numpy.ndarray`
        float32 counts of the same shape.
    """
    if isinstance(expected, FermiChallenge):
        expected = expected.expected
    expected = np.asarray(expected)
    if not np.all(np.isfinite(expected)) or np.any(expected < 0):
        raise ValueError("expected counts must be finite and >= 0")
    rng = np.random.default_rng(seed)
    return rng.poisson(expected).astype(np.float32)


def angular_separation(lon1, lat1, lon2, lat2):
    """Great-circle distance in deg (Vincenty formula, stable at all separations)."""
    lon1, lat1, lon2, lat2 = (np.deg2rad(np.asarray(v, float)) for v in (lon1, lat1, lon2, lat2))
    dlon = lon2 - lon1
    s1, c1 = np.sin(lat1), np.cos(lat1)
    s2, c2 = np.sin(lat2), np.cos(lat2)
    num = np.hypot(c2 * np.sin(dlon), c1 * s2 - s1 * c2 * np.cos(dlon))
    den = s1 * s2 + c1 * c2 * np.cos(dlon)
    return np.rad2deg(np.arctan2(num, den))


@dataclass
class ChallengeScore:
    """Result of `score_catalog`.

    Attributes
    ----------
    tp, fp, fn : int
        Counts of true positives, false positives and false negatives.
    pred_tp : `~numpy.ndarray`
        bool per prediction (input order): True for a TP.
    pred_match : `~numpy.ndarray`
        int per prediction: the truth row it took, -1 for a FP.
    pred_sep : `~numpy.ndarray`
        deg per prediction: distance to the matched source (TP) or to the
        closest true source of its patch (FP; inf when the patch has none).
    pred_flux : `~numpy.ndarray`
        ``flux_1000`` of the matched source (TP) or of the closest true source
        (FP), as in the paper's performance plots (NaN when there is none).
    truth_found : `~numpy.ndarray`
        bool per truth row: matched by some prediction.
    """

    tp: int
    fp: int
    fn: int
    pred_tp: np.ndarray
    pred_match: np.ndarray
    pred_sep: np.ndarray
    pred_flux: np.ndarray
    truth_found: np.ndarray

    @property
    def precision(self):
        """TP / (TP + FP) (the paper's purity); NaN without predictions."""
        n = self.tp + self.fp
        return self.tp / n if n else np.nan

    @property
    def recall(self):
        """TP / (TP + FN) (the paper's completeness); NaN without true sources."""
        n = self.tp + self.fn
        return self.tp / n if n else np.nan

    def as_dict(self):
        """The headline numbers as a plain dict."""
        return dict(tp=self.tp, fp=self.fp, fn=self.fn,
                    precision=self.precision, recall=self.recall)

    def __repr__(self):
        return (f"ChallengeScore(tp={self.tp}, fp={self.fp}, fn={self.fn}, "
                f"precision={self.precision:.4f}, recall={self.recall:.4f})")


def _column(table, names, what):
    for n in names:
        if n in table.colnames:
            return np.asarray(table[n])
    raise KeyError(f"{what} table needs one of the columns {names}; it has {table.colnames}")


def score_catalog(predictions, truth, radius=MATCH_RADIUS, order="given"):
    """Score predictions against the truth with the paper's protocol.

    Parameters
    ----------
    predictions : `~astropy.table.Table`
        Columns ``patch`` and ``lon``, ``lat`` (deg, Galactic); ``score`` is
        needed for ``order="score"``. Predictions given only as pixels can be
        converted with `patch_pixel_to_sky`.
    truth : `~astropy.table.Table`
        Columns ``patch``, ``lon``, ``lat``, ``flux_1000`` (see `read_truth`).
    radius : `~astropy.units.Quantity` or float, optional
        Matching radius (deg when a float); 0.3 deg in the paper.
    order : {"given", "score"}, optional
        Order in which the predictions of a patch are visited: the table's
        row order (the paper's), or by decreasing ``score``. With
        ``"score"``, scoring only the predictions above a threshold gives
        exactly the first rows of the full run, which `precision_recall_curve`
        relies on.

    Returns
    -------
    `ChallengeScore`
    """
    radius = float(u.Quantity(radius, u.deg).value)
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if order not in ("given", "score"):
        raise ValueError(f"order must be 'given' or 'score', got {order!r}")
    p_patch = _column(predictions, ["patch"], "predictions").astype(int)
    p_lon = _column(predictions, ["lon", "glon"], "predictions").astype(float)
    p_lat = _column(predictions, ["lat", "glat"], "predictions").astype(float)
    t_patch = _column(truth, ["patch"], "truth").astype(int)
    t_lon = _column(truth, ["lon", "glon"], "truth").astype(float)
    t_lat = _column(truth, ["lat", "glat"], "truth").astype(float)
    t_flux = _column(truth, ["flux_1000", "flux"], "truth").astype(float)
    if order == "score":
        score = _column(predictions, ["score"], "predictions").astype(float)
        # Stable sort keeps the file order among equal scores.
        visit = np.argsort(-score, kind="stable")
    else:
        visit = np.arange(len(p_patch))

    n_pred = len(p_patch)
    pred_tp = np.zeros(n_pred, bool)
    pred_match = np.full(n_pred, -1, int)
    pred_sep = np.full(n_pred, np.inf)
    pred_flux = np.full(n_pred, np.nan)
    found = np.zeros(len(t_patch), bool)

    truth_rows = {}
    for p in np.unique(t_patch):
        truth_rows[p] = np.flatnonzero(t_patch == p)
    # Group the visiting order by patch, keeping the order inside each patch.
    vp = p_patch[visit]
    grouped = visit[np.argsort(vp, kind="stable")]
    bounds = np.flatnonzero(np.diff(p_patch[grouped])) + 1
    for chunk in np.split(grouped, bounds) if n_pred else []:
        rows = truth_rows.get(p_patch[chunk[0]])
        if rows is None:
            continue
        sep = angular_separation(p_lon[chunk, None], p_lat[chunk, None],
                                 t_lon[None, rows], t_lat[None, rows])
        near = np.argmin(sep, axis=1)
        pred_sep[chunk] = sep[np.arange(len(chunk)), near]
        pred_flux[chunk] = t_flux[rows[near]]
        within = sep < radius
        taken = np.zeros(len(rows), bool)
        flux = t_flux[rows]
        for k, j in enumerate(chunk):
            cand = within[k] & ~taken
            if not cand.any():
                continue
            # The brightest unmatched source within the radius.
            best = np.flatnonzero(cand)[np.argmax(flux[cand])]
            taken[best] = True
            pred_tp[j] = True
            pred_match[j] = rows[best]
            pred_sep[j] = sep[k, best]
            pred_flux[j] = flux[best]
        found[rows] = taken
    tp = int(pred_tp.sum())
    return ChallengeScore(tp=tp, fp=int(n_pred - tp), fn=int(len(t_patch) - tp),
                          pred_tp=pred_tp, pred_match=pred_match, pred_sep=pred_sep,
                          pred_flux=pred_flux, truth_found=found)


def precision_recall_curve(predictions, truth, radius=MATCH_RADIUS):
    """Precision and recall as functions of a threshold on ``score``.

    Predictions are visited by decreasing score (``order="score"`` in
    `score_catalog`), so the greedy matching of the predictions above any
    threshold is the first part of the full run and one pass gives the whole
    curve: each point equals re-scoring the thresholded catalog.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``threshold`` (decreasing; one row per distinct score),
        ``precision``, ``recall``, ``tp``, ``fp``, ``n_pred``.
    """
    res = score_catalog(predictions, truth, radius=radius, order="score")
    score = np.asarray(predictions["score"], float)
    idx = np.argsort(-score, kind="stable")
    s = score[idx]
    tp = np.cumsum(res.pred_tp[idx])
    n = np.arange(1, len(s) + 1)
    # Keep the last row of each run of equal scores: thresholds are ">= s".
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    n_true = len(truth)
    t = Table()
    t["threshold"] = s[last]
    t["tp"] = tp[last]
    t["fp"] = n[last] - tp[last]
    t["n_pred"] = n[last]
    t["precision"] = tp[last] / n[last]
    t["recall"] = tp[last] / n_true if n_true else np.full(len(last), np.nan)
    return t


def recall_at_precision(curve, precision):
    """Highest recall over thresholds whose precision is at least ``precision``.

    Parameters
    ----------
    curve : `~astropy.table.Table`
        Output of `precision_recall_curve`.
    precision : float or sequence of float

    Returns
    -------
    float or `~numpy.ndarray`
        Recall (0 when no threshold reaches the precision), and the same shape
        as ``precision``.
    """
    p = np.atleast_1d(np.asarray(precision, float))
    prec = np.asarray(curve["precision"])
    rec = np.asarray(curve["recall"])
    out = np.array([rec[prec >= q].max() if np.any(prec >= q) else 0.0 for q in p])
    return out if np.ndim(precision) else float(out[0])


def _flux_bins(flux, bins):
    if np.isscalar(bins):
        f = flux[flux > 0]
        bins = np.logspace(np.log10(f.min()), np.log10(f.max()) * (1 + 1e-12), int(bins) + 1)
    return np.asarray(bins, float)


def completeness_vs_flux(score, truth, bins=20):
    """Fraction of true sources found, in bins of ``flux_1000``.

    Parameters
    ----------
    score : `ChallengeScore`
    truth : `~astropy.table.Table`
        The truth table that was scored.
    bins : int or array-like, optional
        Number of log-spaced bins, or the bin edges (cm-2 s-1).

    Returns
    -------
    `~astropy.table.Table`
        ``flux_lo``, ``flux_hi``, ``n_true``, ``n_found``, ``completeness``
        (NaN in empty bins) and ``completeness_err`` (binomial).
    """
    flux = np.asarray(truth["flux_1000"], float)
    edges = _flux_bins(flux, bins)
    n_true, _ = np.histogram(flux, edges)
    n_found, _ = np.histogram(flux[score.truth_found], edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = n_found / n_true
        err = np.sqrt(c * (1 - c) / n_true)
    return Table(dict(flux_lo=edges[:-1], flux_hi=edges[1:], n_true=n_true,
                      n_found=n_found, completeness=c, completeness_err=err))


def precision_vs_flux(score, bins=20, truth=None):
    """Precision in bins of ``flux_1000``.

    False positives take the flux of their closest true source (the paper's
    convention). Returns a table with ``flux_lo``, ``flux_hi``, ``n_pred``,
    ``n_tp`` and ``precision``.
    """
    flux = score.pred_flux
    ok = np.isfinite(flux)
    edges = _flux_bins(flux[ok] if truth is None else np.asarray(truth["flux_1000"]), bins)
    n_pred, _ = np.histogram(flux[ok], edges)
    n_tp, _ = np.histogram(flux[ok & score.pred_tp], edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = n_tp / n_pred
    return Table(dict(flux_lo=edges[:-1], flux_hi=edges[1:], n_pred=n_pred, n_tp=n_tp,
                      precision=p))


def s90(score, truth, level=0.9, min_sources=20):
    """S90: the lowest flux above which precision and completeness both reach ``level``.

    Both are cumulative, over true sources (TPs and FNs) and predictions
    (TPs, and FPs with the flux of their closest true source, the paper's
    convention) with ``flux_1000 >= S``. S90 is the lowest true-source flux
    ``S`` at which both are >= ``level``, among the fluxes that leave at
    least ``min_sources`` true sources above them. Cumulative precision need
    not rise with ``S`` (false positives cluster around bright sources), so
    this is the first crossing, not a promise for every brighter cut.

    Returns
    -------
    float
        S90 in cm-2 s-1, NaN when the level is never reached.
    """
    tflux = np.asarray(truth["flux_1000"], float)
    s = np.sort(tflux)
    if len(s) < min_sources:
        return np.nan
    grid = s[: len(s) - min_sources + 1]
    # Cumulative counts above each grid flux via sorted searches.
    found_flux = np.sort(tflux[score.truth_found])
    n_true_above = len(s) - np.searchsorted(s, grid, side="left")
    n_found_above = len(found_flux) - np.searchsorted(found_flux, grid, side="left")
    pf = score.pred_flux[np.isfinite(score.pred_flux)]
    tpf = np.sort(score.pred_flux[score.pred_tp])
    pf = np.sort(pf)
    n_pred_above = len(pf) - np.searchsorted(pf, grid, side="left")
    n_tp_above = len(tpf) - np.searchsorted(tpf, grid, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = n_found_above / n_true_above
        prec = np.where(n_pred_above > 0, n_tp_above / np.maximum(n_pred_above, 1), 1.0)
    idx = np.flatnonzero((comp >= level) & (prec >= level))
    return float(grid[idx[0]]) if idx.size else np.nan


def position_error_stats(score, within=0.15):
    """Position errors of the true positives.

    Returns
    -------
    dict
        ``median``, ``q68`` (deg) and ``frac_within`` (fraction of TPs within
        ``within`` deg), plus ``n_tp``.
    """
    sep = score.pred_sep[score.pred_tp]
    if sep.size == 0:
        return dict(n_tp=0, median=np.nan, q68=np.nan, frac_within=np.nan)
    return dict(n_tp=int(sep.size), median=float(np.median(sep)),
                q68=float(np.quantile(sep, 0.68)), frac_within=float(np.mean(sep <= within)))


def measure_template_offset(data, patches=range(64), n_brightest=10, isolation=8.0,
                            half_width=4):
    """Offset of the rendered source templates from the truth positions, in pixels.

    The challenge's source templates were projected from HEALPix maps and
    sit about -0.25 px in x and y from where the README's WCS puts the true
    positions (its README). This fits a circular Gaussian to the noise-free
    ``agn + psr`` maps (bands summed) around the ``n_brightest`` isolated
    sources of each calibration patch and returns the median offset: an
    astrometric calibration of the maps that uses patches 0-63 only, as the
    challenge's rules allow for instrument facts.

    Parameters
    ----------
    data : `FermiChallenge`
    patches : iterable of int
        Calibration patches (never the benchmark's 64-767).
    n_brightest : int
        Sources per patch (by ``flux_1000``).
    isolation : float
        No other true source within this many pixels.
    half_width : int
        Fit window half width (pixels).

    Returns
    -------
    dx, dy : float
        Median template position minus truth position (pixels).
    n : int
        Number of sources fitted.
    """
    from scipy.optimize import least_squares

    src = (data.agn + data.psr).sum(axis=1)
    offsets = []
    lo, hi = half_width + 2, _NPIX - half_width - 3
    for i in patches:
        tr = data.truth_of(i)
        if len(tr) == 0:
            continue
        x, y = np.asarray(tr["x"], float), np.asarray(tr["y"], float)
        for k in np.argsort(np.asarray(tr["flux_1000"], float))[::-1][:n_brightest]:
            d = np.hypot(x - x[k], y - y[k])
            d[k] = np.inf
            if not (lo < x[k] < hi and lo < y[k] < hi) or d.min() < isolation:
                continue
            r0, c0 = int(round(y[k])), int(round(x[k]))
            sl = np.s_[r0 - half_width:r0 + half_width + 1, c0 - half_width:c0 + half_width + 1]
            cut = src[i][sl].astype(float)
            yy, xx = np.mgrid[sl]
            if cut.max() <= 0:
                continue

            def resid(p, xx=xx, yy=yy, cut=cut):
                a, x0, y0, s = p
                return (a * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
                        - cut).ravel()

            fit = least_squares(resid, [cut.max(), x[k], y[k], 1.5])
            offsets.append((fit.x[1] - x[k], fit.x[2] - y[k]))
    if not offsets:
        raise ValueError("no isolated bright sources in the calibration patches")
    dx, dy = np.median(np.asarray(offsets), axis=0)
    return float(dx), float(dy), len(offsets)

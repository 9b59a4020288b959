"""Classification tasks and input features from 4FGL catalog rows.

Following seed 004 (Finke, Kraemer & Manconi), the inputs are the measured
quantities rather than hand-made features:

* ``spectrum``: the band fluxes ``Flux_Band`` and their errors, shape
  (N, n_bands, 4): log10 of the band flux over the summed flux (the
  normalised spectrum), log10 of the band error over the summed flux, an
  upper-limit flag (TS < 1 in the band), and log10 of the summed flux
  (brightness, the same value in every band).
* ``history``: the yearly light curve ``Flux_History``, shape
  (N, n_years, 4): log10 of the flux over the mean flux, log10 of the error
  over the mean flux, the upper-limit flag, and asinh of the pull
  (F - mean) / error, a per-year variability significance.
* ``extras`` (optional, a third branch): any of ``"glat"`` (sin |b|),
  ``"curvature"`` (sqrt of ``LP_SigCurv``), ``"variability"`` (log10 of
  ``Variability_Index``), ``"index"`` (``LP_Index`` and ``LP_beta``),
  ``"pl_index"`` (``PL_Index``), ``"frac_variability"`` (``Frac_Variability``),
  ``"pivot"`` (log10 of ``Pivot_Energy``), and, from DR3 on only,
  ``"epeak"`` (log10 of the log-parabola peak energy ``LP_EPeak``, NaN where
  the SED has no peak) and ``"plec"`` (``PLEC_IndexS`` and
  ``PLEC_ExpfactorS``, the pulsar-like spectrum's slope and curvature at the
  pivot energy).

Releases differ in shape: a model trained on 7 bands applied to an 8-band
release (DR3, DR4) gets the last two bands merged (fluxes summed, errors in
quadrature), which is exact for the fluxes; a model trained on n years gets
the first n yearly bins, which cover the same time in every release. Asking
for more bands or years than a table has is an error.
"""

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["TASKS", "Task", "FeatureConfig", "task_labels", "candidate_mask",
           "extract_features", "flatten_features", "EXTRAS"]

#: Optional extra features (name -> number of values).
EXTRAS = {"glat": 1, "curvature": 1, "variability": 1, "index": 2, "pl_index": 1,
          "frac_variability": 1, "pivot": 1, "epeak": 1, "plec": 2}

_EXTRA_COLUMNS = {"glat": "GLAT", "curvature": "LP_SigCurv", "variability": "Variability_Index",
                  "index": ("LP_Index", "LP_beta"), "pl_index": "PL_Index",
                  "frac_variability": "Frac_Variability", "pivot": "Pivot_Energy",
                  "epeak": "LP_EPeak", "plec": ("PLEC_IndexS", "PLEC_ExpfactorS")}

_AGN = ("fsrq", "bll", "bcu", "css", "rdg", "nlsy1", "agn", "ssrq", "sey")


@dataclass(frozen=True)
class Task:
    """A binary classification task on 4FGL ``CLASS1`` labels.

    Attributes
    ----------
    name : str
        Task name (``"agn-psr"``, ``"msp-young"``, ``"bll-fsrq"``).
    class_names : tuple of str
        Output classes, in ``class_prob`` column order.
    members : tuple of tuple of str
        For each class, the lower-case ``CLASS1`` values that belong to it
        (identified and associated sources alike).
    candidates : tuple of str
        Lower-case ``CLASS1`` values of the sources to classify (``""`` is
        unassociated).
    description : str
        One line.
    """

    name: str
    class_names: tuple
    members: tuple
    candidates: tuple
    description: str


TASKS = {
    "agn-psr": Task("agn-psr", ("AGN", "PSR"), (_AGN, ("psr", "msp")), ("",),
                    "active galactic nuclei vs pulsars; candidates: unassociated sources"),
    "msp-young": Task("msp-young", ("YNG", "MSP"), (("psr",), ("msp",)), ("",),
                      "young vs millisecond pulsars (needs DR3 or later, which label MSP "
                      "separately); candidates: unassociated sources"),
    "bll-fsrq": Task("bll-fsrq", ("BLL", "FSRQ"), (("bll",), ("fsrq",)), ("bcu",),
                     "BL Lacs vs flat-spectrum radio quasars; candidates: blazars of uncertain "
                     "type (BCU)"),
}


def _get_task(task):
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {sorted(TASKS)}")
    return TASKS[task]


def _class1(table):
    if "CLASS1" not in table.colnames:
        raise ValueError("the table has no CLASS1 column (a 4FGL catalog from load_4fgl?)")
    col = table["CLASS1"]
    values = np.asarray(col.filled("") if hasattr(col, "filled") else col).astype(str)
    return np.char.lower(np.char.strip(values))


def task_labels(table, task):
    """Labels of the rows that belong to a task's classes.

    Parameters
    ----------
    table : `~astropy.table.Table`
        4FGL catalog rows.
    task : str or `Task`

    Returns
    -------
    labels : ndarray of int
        Class index per row, -1 for rows outside the task's classes.

    Raises
    ------
    ValueError
        Unknown task, or a class with no row (e.g. ``"msp-young"`` on DR1 or
        DR2, which do not label millisecond pulsars).
    """
    task = _get_task(task)
    cls = _class1(table)
    labels = np.full(len(table), -1, int)
    for k, members in enumerate(task.members):
        labels[np.isin(cls, members)] = k
    counts = np.bincount(labels[labels >= 0], minlength=len(task.class_names))
    empty = [n for n, c in zip(task.class_names, counts) if c == 0]
    if empty:
        raise ValueError(f"task {task.name!r}: no source of class {empty} in this table "
                         f"(CLASS1 values {[list(m) for m in task.members]}); "
                         + ("MSPs are labelled separately only from DR3 on"
                            if task.name == "msp-young" else "wrong catalog or rows?"))
    return labels


def candidate_mask(table, task):
    """Rows to classify for a task (unassociated sources, or BCUs for ``bll-fsrq``)."""
    task = _get_task(task)
    return np.isin(_class1(table), task.candidates)


@dataclass
class FeatureConfig:
    """Which inputs a model uses and their shape.

    Attributes
    ----------
    spectrum, history : bool
        Use the band-flux branch / the light-curve branch.
    extras : tuple of str
        Names from `EXTRAS` for a third branch.
    n_bands, n_years : int
        Input shape; set from the training table by `resolve`.
    """

    spectrum: bool = True
    history: bool = True
    extras: tuple = field(default_factory=tuple)
    n_bands: int = None
    n_years: int = None

    def __post_init__(self):
        self.extras = tuple(self.extras)
        bad = [e for e in self.extras if e not in EXTRAS]
        if bad:
            raise ValueError(f"unknown extra features {bad}: use some of {sorted(EXTRAS)}")
        if not (self.spectrum or self.history or self.extras):
            raise ValueError("no input: enable the spectrum or history branch, or some extras")

    def resolve(self, table):
        """Copy with ``n_bands``/``n_years`` taken from ``table`` where unset."""
        cfg = FeatureConfig(**asdict(self))
        if cfg.n_bands is None:
            cfg.n_bands = int(np.shape(table["Flux_Band"])[1])
        if cfg.n_years is None:
            cfg.n_years = int(np.shape(table["Flux_History"])[1])
        return cfg

    def to_dict(self):
        d = asdict(self)
        d["extras"] = list(self.extras)
        return d


def _plain(col):
    """Float ndarray from a (possibly masked) column; masked -> NaN."""
    if hasattr(col, "filled"):
        col = col.filled(np.nan)
    return np.array(col, dtype=float)


def _band_arrays(table, n_bands):
    flux = _plain(table["Flux_Band"])
    unc = _plain(table["Unc_Flux_Band"])
    if unc.ndim != 3:
        raise ValueError("Unc_Flux_Band must have shape (N, n_bands, 2)")
    lo, hi = np.abs(unc[..., 0]), unc[..., 1]
    have = flux.shape[1]
    if have == n_bands:
        return flux, lo, hi
    if have == 8 and n_bands == 7:
        # DR3/DR4 split the last DR2 band (30-300 GeV) at 100 GeV: merge it back.
        # Upper-limit bands carry only an upper error, so the merged band is an
        # upper limit only when both parts are.
        f = flux[:, :7].copy()
        f[:, 6] = flux[:, 6] + flux[:, 7]
        h = hi[:, :7].copy()
        h[:, 6] = np.hypot(hi[:, 6], hi[:, 7])
        lo6 = np.where(np.isnan(lo[:, 6]), 0.0, lo[:, 6]) ** 2
        lo7 = np.where(np.isnan(lo[:, 7]), 0.0, lo[:, 7]) ** 2
        lo_m = lo[:, :7].copy()
        lo_m[:, 6] = np.where(np.isnan(lo[:, 6]) & np.isnan(lo[:, 7]), np.nan, np.sqrt(lo6 + lo7))
        return f, lo_m, h
    raise ValueError(f"the model expects {n_bands} energy bands but the table has {have}; "
                     "only 8 -> 7 (DR3/DR4 -> DR1/DR2 bands) can be converted")


def _history_arrays(table, n_years):
    flux = _plain(table["Flux_History"])
    unc = _plain(table["Unc_Flux_History"])
    have = flux.shape[1]
    if have < n_years:
        raise ValueError(f"the model expects {n_years} yearly light-curve bins but the table has "
                         f"only {have}; use a later 4FGL release")
    # All releases start their yearly bins at the same time: keep the first n_years.
    return flux[:, :n_years], np.abs(unc[:, :n_years, 0]), unc[:, :n_years, 1]


def _safe_log10(x, floor):
    x = np.where(np.isfinite(x), x, np.nan)
    return np.log10(np.clip(x, floor, None))


def _error(lo, hi, flux):
    """A symmetric 1-sigma error: the mean of both sides, or the upper side for upper limits."""
    sym = np.where(np.isnan(lo), hi, 0.5 * (lo + hi))
    # Non-finite or non-positive errors (a handful of +inf in DR1/DR3/DR4): use the flux itself.
    bad = ~np.isfinite(sym) | (sym <= 0)
    return np.where(bad, np.abs(flux) + 1e-30, sym)


def extract_features(table, config):
    """Feature arrays of the rows of a 4FGL table.

    Parameters
    ----------
    table : `~astropy.table.Table`
        4FGL catalog rows (from `~astro_asid.fermi_catalog.load_4fgl`).
    config : `FeatureConfig`
        Branches and shape (use ``config.resolve(table)`` first).

    Returns
    -------
    features : dict
        ``"spectrum"`` (N, n_bands, 4), ``"history"`` (N, n_years, 4),
        ``"extras"`` (N, k) float32 arrays for the enabled branches. Values
        are finite except ``extras`` where the catalog has no value (NaN,
        imputed by the classifier's scaler).
    """
    needed = []
    if config.spectrum:
        needed += ["Flux_Band", "Unc_Flux_Band"]
    if config.history:
        needed += ["Flux_History", "Unc_Flux_History"]
    needed += [_EXTRA_COLUMNS[e] for e in config.extras]
    needed = [c for cols in needed for c in (cols if isinstance(cols, tuple) else (cols,))]
    missing = [c for c in needed if c not in table.colnames]
    if missing:
        raise ValueError(f"the table lacks the 4FGL columns {missing} that these features need")
    if config.n_bands is None or config.n_years is None:
        config = config.resolve(table)
    out = {}
    if config.spectrum:
        flux, lo, hi = _band_arrays(table, config.n_bands)
        ul = np.isnan(lo)
        err = _error(lo, hi, flux)
        total = np.nansum(np.clip(flux, 0, None), axis=1, keepdims=True)
        total = np.where(total > 0, total, np.nanmax(err, axis=1, keepdims=True))
        # Upper-limit bands have fluxes down to 1e-16 (meaningless); floor them at
        # 1e-4 of the summed flux so they do not dominate the scale.
        spec = np.stack([
            _safe_log10(flux / total, 1e-4),
            _safe_log10(err / total, 1e-4),
            ul.astype(float),
            np.broadcast_to(np.log10(total), flux.shape),
        ], axis=-1)
        out["spectrum"] = np.nan_to_num(spec, nan=-4.0).astype(np.float32)
    if config.history:
        flux, lo, hi = _history_arrays(table, config.n_years)
        ul = np.isnan(lo)
        err = _error(lo, hi, flux)
        mean = np.nanmean(np.clip(flux, 0, None), axis=1, keepdims=True)
        mean = np.where(mean > 0, mean, np.nanmax(err, axis=1, keepdims=True))
        pull = np.clip((flux - mean) / err, -1e4, 1e4)
        hist = np.stack([
            _safe_log10(flux / mean, 1e-3),
            _safe_log10(err / mean, 1e-3),
            ul.astype(float),
            np.arcsinh(pull),
        ], axis=-1)
        out["history"] = np.nan_to_num(hist, nan=-3.0).astype(np.float32)
    if config.extras:
        cols = []
        for name in config.extras:
            if name == "glat":
                cols.append(np.sin(np.deg2rad(np.abs(_plain(table["GLAT"])))))
            elif name == "curvature":
                cols.append(np.sqrt(np.clip(_plain(table["LP_SigCurv"]), 0, None)))
            elif name == "variability":
                cols.append(_safe_log10(_plain(table["Variability_Index"]), 1e-2))
            elif name == "pivot":
                cols.append(_safe_log10(_plain(table["Pivot_Energy"]), 1.0))
            elif name == "epeak":
                # LP_EPeak is NaN when the log-parabola has no peak in nuFnu (beta <= 0).
                cols.append(_safe_log10(_plain(table["LP_EPeak"]), 1e-3))
            else:  # one or two plain catalog values
                names = _EXTRA_COLUMNS[name]
                for col in (names if isinstance(names, tuple) else (names,)):
                    cols.append(_plain(table[col]))
        out["extras"] = np.stack(cols, axis=1).astype(np.float32)
    return out


def flatten_features(features):
    """One (N, n_features) matrix from `extract_features` output (for scikit-learn)."""
    parts = [features[k].reshape(len(features[k]), -1)
             for k in ("spectrum", "history", "extras") if k in features]
    return np.concatenate(parts, axis=1)

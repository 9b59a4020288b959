"""The output catalog: schema, construction, validation, I/O and region export.

Every call of `~astro_asid.find_sources` returns a `~astropy.table.QTable`
with the columns of `CATALOG_COLUMNS` (photutils 3.x names where they exist),
one row per source sorted by decreasing ``score``. Columns that the detector
and characterisers could not fill are masked, never invented.
"""

import warnings

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io.fits.verify import VerifyWarning
from astropy.table import MaskedColumn, QTable, Table
from astropy.utils.masked import Masked
from astropy.wcs.utils import pixel_to_skycoord

from astro_asid.utils.exceptions import PluginError

__all__ = ["CATALOG_COLUMNS", "DEFAULT_CLASS_NAMES", "validate_candidates", "build_catalog",
           "empty_catalog", "validate_catalog", "write_catalog", "read_catalog", "to_regions",
           "to_gammapy_models"]

#: Required columns and their meaning, in output order.
CATALOG_COLUMNS = {
    "id": "source number, 1..N by decreasing score",
    "x_centroid": "x pixel position (0-based) in the input's pixel frame",
    "y_centroid": "y pixel position (0-based) in the input's pixel frame",
    "sky_centroid": "sky position in the frame of the input WCS",
    "sky_centroid_err": "1-sigma angular error along longitude and latitude (deg), shape (N, 2)",
    "flux": "photon flux in meta['flux_band'] when the exposure is known, else counts "
            "or image units",
    "flux_err": "1-sigma error of flux",
    "score": "detector confidence, 0..1",
    "source_prob": "probability that the source is real (source/FAKE classifier), 0..1",
    "class_label": "most probable class, from meta['class_names']",
    "class_prob": "class probabilities in meta['class_names'] order, shape (N, K)",
}

#: Class names used when the instrument defines none.
DEFAULT_CLASS_NAMES = ("source", "FAKE")
INSTRUMENT_CLASS_NAMES = {
    "fermi-lat": ("AGN", "PSR", "FAKE"),
    "optical": ("star", "galaxy", "FAKE"),
}

_REQUIRED_CANDIDATE_COLUMNS = ("x_centroid", "y_centroid", "score")
# display formats only; the stored values keep full precision
_FORMATS = {"x_centroid": ".2f", "y_centroid": ".2f", "sky_centroid_err": ".4f", "flux": ".4g",
            "flux_err": ".3g", "score": ".3f", "source_prob": ".3f", "class_prob": ".3f"}


def _plain(col):
    """Column values as a float ndarray, NaN where masked, units dropped."""
    if isinstance(col, u.Quantity):
        col = col.value
    col = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    return np.asarray(col, dtype=float)


def validate_candidates(candidates, shape, origin="detector"):
    """Check a detector's raw output and return it as a `~astropy.table.QTable`.

    Parameters
    ----------
    candidates : `~astropy.table.Table`
        What ``Detector.detect`` returned.
    shape : tuple
        ``(ny, nx)`` of the image it was run on.
    origin : str
        Name of the detector and its plugin, used in error messages.

    Raises
    ------
    PluginError
        Not a table, missing columns, non-finite positions, scores outside
        0..1, or positions outside the image.
    """
    if not isinstance(candidates, Table):
        raise PluginError(f"{origin} returned {type(candidates).__name__}, not an astropy "
                          "Table/QTable")
    missing = [c for c in _REQUIRED_CANDIDATE_COLUMNS if c not in candidates.colnames]
    if missing:
        raise PluginError(f"{origin} returned a table without the required column(s) {missing}; "
                          f"it has {candidates.colnames}")
    cands = QTable(candidates, copy=True)
    if len(cands) == 0:
        return cands
    x, y, s = (_plain(cands[c]) for c in _REQUIRED_CANDIDATE_COLUMNS)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise PluginError(f"{origin} returned non-finite pixel positions")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise PluginError(f"{origin} returned scores outside 0..1 "
                          f"(min {np.nanmin(s):.3g}, max {np.nanmax(s):.3g})")
    ny, nx = shape
    outside = (x < -0.5) | (x > nx - 0.5) | (y < -0.5) | (y > ny - 0.5)
    if outside.any():
        raise PluginError(f"{origin} returned {int(outside.sum())} position(s) outside the "
                          f"{nx}x{ny} image (x in [{x.min():.1f}, {x.max():.1f}], "
                          f"y in [{y.min():.1f}, {y.max():.1f}])")
    return cands


def _filled_deg(col):
    """An angle column as plain degrees, NaN where masked."""
    col = u.Quantity(col).to(u.deg) if getattr(col, "unit", None) else col
    if hasattr(col, "unmasked"):
        vals = np.where(col.mask, np.nan, col.unmasked.value)
    else:
        vals = np.ma.filled(np.ma.asarray(getattr(col, "value", col), dtype=float), np.nan)
    return np.asarray(vals, float)


def _pixel_scales(wcs, x, y):
    """Angular size (deg) of one pixel step along x and along y at each position."""
    c0 = pixel_to_skycoord(x, y, wcs, origin=0)
    cx = pixel_to_skycoord(x + 0.5, y, wcs, origin=0)
    cy = pixel_to_skycoord(x, y + 0.5, wcs, origin=0)
    return 2 * c0.separation(cx).deg, 2 * c0.separation(cy).deg


def _masked(values, mask=None, dtype=float, unit=None):
    """A masked column (a masked Quantity when ``unit`` is given)."""
    values = np.asarray(values, dtype=dtype)
    if mask is None:
        mask = np.zeros(values.shape, bool)
    mask = np.broadcast_to(mask, values.shape).copy()
    if unit is not None:
        return Masked(u.Quantity(values, unit), mask=mask)
    return MaskedColumn(values, mask=mask)


def build_catalog(candidates, image, meta=None, class_names=None):
    """Turn validated candidates into a catalog with the full schema.

    Parameters
    ----------
    candidates : `~astropy.table.QTable`
        Output of `validate_candidates`. Optional columns used when present:
        ``x_err``, ``y_err`` (pixels), ``flux``, ``flux_err``,
        ``source_prob``, ``class_prob`` (N, K), ``class_label``; any other
        column is carried over unchanged.
    image : `~astro_asid.SkyImage`
        The image the candidates were found on (its WCS must be celestial).
    meta : dict, optional
        Merged into the table's ``meta``.
    class_names : sequence of str, optional
        Class order of ``class_prob``; default from the instrument.

    Returns
    -------
    `~astropy.table.QTable`
    """
    if class_names is None:
        class_names = INSTRUMENT_CLASS_NAMES.get(image.instrument, DEFAULT_CLASS_NAMES)
    class_names = list(class_names)
    if len(candidates):
        order = np.argsort(-_plain(candidates["score"]), kind="stable")
        candidates = candidates[order]
    n = len(candidates)
    x = _plain(candidates["x_centroid"]) if n else np.zeros(0)
    y = _plain(candidates["y_centroid"]) if n else np.zeros(0)

    cat = QTable()
    cat["id"] = np.arange(1, n + 1, dtype=np.int64)
    cat["x_centroid"] = x * u.pix
    cat["y_centroid"] = y * u.pix
    cat["sky_centroid"] = pixel_to_skycoord(x, y, image.wcs, origin=0)

    err = np.full((n, 2), np.nan)
    if n and "x_err" in candidates.colnames and "y_err" in candidates.colnames:
        sx, sy = _pixel_scales(image.wcs, x, y)
        err[:, 0] = _plain(candidates["x_err"]) * sx
        err[:, 1] = _plain(candidates["y_err"]) * sy
    cat["sky_centroid_err"] = _masked(err, ~np.isfinite(err), unit=u.deg)

    flux_unit = None
    for name in ("flux", "flux_err"):
        if name in candidates.colnames and isinstance(candidates[name], u.Quantity):
            flux_unit = flux_unit or candidates[name].unit
    if flux_unit is None:
        flux_unit = image.unit if image.unit is not None else u.dimensionless_unscaled
    for name in ("flux", "flux_err"):
        if name in candidates.colnames:
            col = candidates[name]
            if isinstance(col, u.Quantity):
                col = col.to(flux_unit)
            vals = _plain(col)
        else:
            vals = np.full(n, np.nan)
        cat[name] = _masked(vals, ~np.isfinite(vals), unit=flux_unit)

    cat["score"] = _plain(candidates["score"]) if n else np.zeros(0)

    if "source_prob" in candidates.colnames:
        sp = _plain(candidates["source_prob"])
    else:
        sp = np.full(n, np.nan)
    cat["source_prob"] = _masked(sp, ~np.isfinite(sp))

    k = len(class_names)
    if "class_prob" in candidates.colnames:
        cp = np.ma.filled(np.ma.asarray(candidates["class_prob"], dtype=float), np.nan)
        cp = np.asarray(cp, float).reshape(n, -1)
        if cp.shape[1] != k:
            raise PluginError(f"class_prob has {cp.shape[1]} classes but class_names has {k}")
    else:
        cp = np.full((n, k), np.nan)
    row_known = np.all(np.isfinite(cp), axis=1)
    labels = np.array([class_names[i] for i in np.argmax(np.nan_to_num(cp, nan=-1), axis=1)]
                      if n else [], dtype=f"<U{max(len(c) for c in class_names)}")
    if "class_label" in candidates.colnames:
        labels = np.asarray(candidates["class_label"], dtype=str)
        row_known = np.ones(n, bool)
    cat["class_label"] = MaskedColumn(labels, mask=~row_known)
    cat["class_prob"] = _masked(cp, ~np.isfinite(cp))

    for name in candidates.colnames:
        if name not in cat.colnames and name not in ("x_err", "y_err", "id"):
            cat[name] = candidates[name]

    cat.meta.update(meta or {})
    cat.meta["class_names"] = class_names
    cat.meta.setdefault("instrument", image.instrument)
    if image.energy_edges is not None:
        edges = image.energy_edges
        cat.meta["energy_edges"] = [float(e) for e in edges.value]
        cat.meta["energy_unit"] = edges.unit.to_string()
        cat.meta.setdefault("flux_band", f"{edges[0].value:g}-{edges[-1].value:g} {edges.unit}")
    for col, desc in CATALOG_COLUMNS.items():
        cat[col].info.description = desc
    for col, fmt in _FORMATS.items():
        cat[col].info.format = fmt
    return cat


def empty_catalog(wcs=None, class_names=DEFAULT_CLASS_NAMES, meta=None, flux_unit=None):
    """A zero-row catalog with the full schema (so catalogs can be stacked).

    Parameters
    ----------
    wcs : `~astropy.wcs.WCS`, optional
        Sets the frame of ``sky_centroid`` (ICRS when not given).
    class_names : sequence of str
        Class order of the (empty) ``class_prob`` column.
    meta : dict, optional
        Table metadata.
    flux_unit : `~astropy.units.UnitBase`, optional
        Unit of ``flux`` (dimensionless when not given).
    """
    from astropy.wcs import WCS

    from astro_asid.core import SkyImage

    if wcs is None:
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    image = SkyImage(data=np.zeros((1, 2, 2), np.float32), wcs=wcs,
                     unit=None if flux_unit is None else u.Unit(flux_unit))
    cands = QTable({"x_centroid": np.zeros(0), "y_centroid": np.zeros(0), "score": np.zeros(0)})
    return build_catalog(cands, image, meta=meta, class_names=class_names)


def validate_catalog(cat):
    """Check a catalog against the schema; raise `ValueError` naming what is wrong."""
    missing = [c for c in CATALOG_COLUMNS if c not in cat.colnames]
    if missing:
        raise ValueError(f"catalog lacks required column(s) {missing}")
    if not isinstance(cat["sky_centroid"], SkyCoord):
        raise ValueError("sky_centroid must be a SkyCoord column")
    n = len(cat)
    if cat["sky_centroid_err"].shape != (n, 2):
        raise ValueError(f"sky_centroid_err must have shape (N, 2), has {cat['sky_centroid_err'].shape}")
    if not u.Unit(cat["sky_centroid_err"].unit).is_equivalent(u.deg):
        raise ValueError("sky_centroid_err must be an angle")
    names = cat.meta.get("class_names")
    if names is None:
        raise ValueError("meta['class_names'] is missing")
    if cat["class_prob"].shape != (n, len(names)):
        raise ValueError(f"class_prob must have shape (N, {len(names)}), "
                         f"has {cat['class_prob'].shape}")
    score = np.asarray(cat["score"], float)
    if n and (score.min() < 0 or score.max() > 1):
        raise ValueError("score must lie in 0..1")
    if n and np.any(np.diff(score) > 0):
        raise ValueError("rows must be sorted by decreasing score")
    if list(cat["id"]) != list(range(1, n + 1)):
        raise ValueError("id must run 1..N")
    return True


def write_catalog(cat, filename, overwrite=False):
    """Write a catalog to ECSV (``.ecsv``) or FITS (``.fits``/``.fit``), keeping SkyCoord and units."""
    filename = str(filename)
    fmt = "ascii.ecsv" if filename.endswith(".ecsv") else None
    if fmt is None and not filename.lower().endswith((".fits", ".fit", ".fits.gz")):
        raise ValueError(f"unknown catalog format for {filename!r}: use .ecsv or .fits")
    with warnings.catch_warnings():
        # long meta keys become HIERARCH cards; astropy also keeps them in the YAML header
        warnings.simplefilter("ignore", VerifyWarning)
        cat.write(filename, format=fmt, overwrite=overwrite, serialize_method="data_mask")


def read_catalog(filename):
    """Read a catalog written by `write_catalog` back into a `~astropy.table.QTable`."""
    filename = str(filename)
    fmt = "ascii.ecsv" if filename.endswith(".ecsv") else None
    return QTable.read(filename, format=fmt)


def to_regions(cat, filename=None, radius=None, overwrite=False):
    """Sky regions for a catalog (circles of the 2-sigma error, or ``radius``).

    Parameters
    ----------
    cat : `~astropy.table.QTable`
        A catalog with ``sky_centroid`` (and ``sky_centroid_err``).
    filename : str, optional
        Write a ds9 region file there as well.
    radius : `~astropy.units.Quantity`, optional
        Fixed circle radius; by default twice the larger 1-sigma error, or
        0.1 deg where the error is unknown.

    Returns
    -------
    `regions.Regions`
    """
    from regions import CircleSkyRegion, Regions

    regs = []
    err = _filled_deg(cat["sky_centroid_err"])
    for i, coord in enumerate(cat["sky_centroid"]):
        if radius is not None:
            r = u.Quantity(radius, u.deg)
        else:
            e = np.nanmax(err[i]) if np.any(np.isfinite(err[i])) else np.nan
            r = (2 * e if np.isfinite(e) and e > 0 else 0.1) * u.deg
        reg = CircleSkyRegion(center=coord, radius=r)
        reg.meta["text"] = str(cat["id"][i])
        regs.append(reg)
    regions = Regions(regs)
    if filename is not None:
        regions.write(str(filename), format="ds9", overwrite=overwrite)
    return regions


def to_gammapy_models(cat, **kwargs):
    """gammapy ``Models`` (point or Gaussian + power law) for a catalog, ready for ``Fit``.

    See `astro_asid.instruments.ctao.to_gammapy_models` for the options.
    """
    from astro_asid.instruments.ctao import to_gammapy_models as _to_models

    return _to_models(cat, **kwargs)

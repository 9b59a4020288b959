"""Reading the Fermi-LAT 4FGL point-source catalogs.

The four data releases of the 4FGL catalog ship inside the PyPI package
``fermipy`` (``fermipy/data/catalogs/gll_psc_v*.fit``). fermipy is used here
as a data source only: it is located with `importlib.util.find_spec` and never
imported (its own imports pull in old versions of astropy and friends).

Quirks of the FITS files that `load_4fgl` handles:

* ``CLASS1`` is a masked, blank-padded string column; capitals mean
  "identified", lower case "associated". It is returned stripped, with masked
  entries as ``""`` (unassociated), in the original case.
* ``Variability_Index`` has one ``-inf`` (DR1, DR3, DR4) or ``NaN`` (DR2)
  entry; non-finite values become ``NaN`` so that downstream code can impute.
* ``Unc_Flux_Band`` and ``Unc_Flux_History`` have shape (N, n, 2) with the
  lower error masked (and ``Flux_Band`` close to zero) where the band or year
  has TS < 1 and the upper error is an upper limit. Masked entries become
  ``NaN``; a few upper errors are ``+inf`` and are left as they are.
* DR1 and DR2 have 7 energy bands (50 MeV - 300 GeV); DR3 and DR4 have 8
  (the last DR2 band 30-300 GeV is split into 30-100 GeV and 100 GeV-1 TeV).
  The band edges go to ``meta["band_edges"]``.
* The light curves have one bin per year: 8 (DR1), 10 (DR2), 12 (DR3) and
  14 (DR4), all starting at the same time (``meta["hist_start"]``), so the
  first *n* years of a later release cover the same time as an earlier one.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

__all__ = ["RELEASES", "catalog_dir", "catalog_path", "load_4fgl", "band_edges"]

#: 4FGL data release -> catalog file in ``fermipy/data/catalogs``.
RELEASES = {
    "DR1": "gll_psc_v20.fit",
    "DR2": "gll_psc_v27.fit",
    "DR3": "gll_psc_v29.fit",
    "DR4": "gll_psc_v35.fit",
}

_EDGES_7 = [50, 100, 300, 1e3, 3e3, 1e4, 3e4, 3e5]
_EDGES_8 = [50, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6]

# Columns with a masked lower error (or a masked upper-limit flag) that are
# returned as plain float columns with NaN.
_NAN_COLUMNS = ("Unc_Flux_Band", "Unc_Flux_History", "Sqrt_TS_Band", "Sqrt_TS_History",
                "Variability_Index", "Frac_Variability", "LP_SigCurv", "LP_beta",
                "LP_Index", "PL_Index")

_INSTALL_HINT = ("the 4FGL catalogs ship with the fermipy package; install it as a data source "
                 "only with `pip install --no-deps fermipy` (its dependency pins would "
                 "downgrade astropy), or pass the path of a gll_psc_v*.fit file")


def band_edges(n_bands):
    """Energy edges of the ``Flux_Band`` bands of a 4FGL release.

    Parameters
    ----------
    n_bands : int
        7 (DR1, DR2) or 8 (DR3, DR4).

    Returns
    -------
    edges : `~astropy.units.Quantity`
        ``n_bands + 1`` edges in MeV.
    """
    if n_bands == 7:
        return _EDGES_7 * u.MeV
    if n_bands == 8:
        return _EDGES_8 * u.MeV
    raise ValueError(f"4FGL catalogs have 7 or 8 energy bands, not {n_bands}")


def catalog_dir():
    """Directory of the catalogs shipped in the ``fermipy`` package.

    The package is located without importing it.

    Raises
    ------
    FileNotFoundError
        fermipy is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("fermipy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fermipy is not installed: " + _INSTALL_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "catalogs"
    if not path.is_dir():
        raise FileNotFoundError(f"fermipy is installed but {path} does not exist: "
                                + _INSTALL_HINT)
    return path


def catalog_path(release):
    """Path of the FITS file of a release ("DR1".."DR4") or of a given path."""
    if isinstance(release, (str, os.PathLike)) and os.fspath(release).upper().replace(
            "4FGL-", "") in RELEASES:
        name = RELEASES[os.fspath(release).upper().replace("4FGL-", "")]
        path = catalog_dir() / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found in the fermipy package: " + _INSTALL_HINT)
        return path
    path = Path(os.fspath(release))
    if path.suffix.lower() in (".fit", ".fits") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"4FGL catalog file {path} not found")
        return path
    raise ValueError(f"unknown 4FGL release {release!r}: use one of {sorted(RELEASES)} "
                     "or the path of a gll_psc_v*.fit file")


def _release_name(header, path, n_bands, n_years):
    version = str(header.get("VERSION", "")).strip()
    for rel, fname in RELEASES.items():
        if fname == f"gll_psc_{version}.fit" or Path(path).name == fname:
            return rel
    # An unknown file: guess from the number of yearly bins (8 years = DR1, ...).
    return {8: "DR1", 10: "DR2", 12: "DR3", 14: "DR4"}.get(n_years, "unknown")


def load_4fgl(release="DR4"):
    """Read a 4FGL point-source catalog as an astropy Table.

    Parameters
    ----------
    release : str or path
        ``"DR1"``, ``"DR2"``, ``"DR3"`` or ``"DR4"`` (read from the fermipy
        package), optionally prefixed ``"4FGL-"``; or the path of a
        ``gll_psc_v*.fit`` file.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per source with all catalog columns, quirks fixed as described
        in the module docstring (``CLASS1`` stripped and unmasked, masked errors
        as ``NaN``, non-finite variability as ``NaN``). ``meta`` holds
        ``release``, ``version``, ``n_bands``, ``n_years``, ``band_edges``
        (MeV) and ``hist_start`` (MET seconds of the yearly bins).

    Raises
    ------
    FileNotFoundError
        fermipy (or the file) is missing.
    ValueError
        Unknown release name, or a file without the 4FGL columns.
    """
    path = catalog_path(release)
    with fits.open(path, memmap=False) as hdul:
        if "LAT_Point_Source_Catalog" not in hdul:
            raise ValueError(f"{path} has no LAT_Point_Source_Catalog extension: not a 4FGL file")
        header = hdul["LAT_Point_Source_Catalog"].header
        table = Table.read(hdul["LAT_Point_Source_Catalog"], unit_parse_strict="silent")
        hist_start = (np.asarray(hdul["Hist_Start"].data["Hist_Start"], float)
                      if "Hist_Start" in hdul else None)
    missing = [c for c in ("Source_Name", "CLASS1", "Flux_Band", "Unc_Flux_Band", "Flux_History",
                           "Unc_Flux_History", "GLAT") if c not in table.colnames]
    if missing:
        raise ValueError(f"{path} is not a 4FGL catalog: columns {missing} are missing")

    # Strings: strip the FITS blank padding and turn masked entries into "".
    for name in ("Source_Name", "CLASS1", "CLASS2", "ASSOC1", "ASSOC2"):
        if name in table.colnames:
            col = table[name]
            values = np.asarray(col.filled("") if hasattr(col, "filled") else col).astype(str)
            table[name] = np.char.strip(values)
    # Floats: masked -> NaN, and non-finite variability (a -inf or NaN entry) -> NaN.
    for name in _NAN_COLUMNS:
        if name in table.colnames:
            col = table[name]
            unit = col.unit
            values = np.array(col.filled(np.nan) if hasattr(col, "filled") else col, float)
            if name == "Variability_Index":
                values[~np.isfinite(values)] = np.nan
            table[name] = values
            table[name].unit = unit

    n_bands = table["Flux_Band"].shape[1]
    n_years = table["Flux_History"].shape[1]
    table.meta = {
        "release": _release_name(header, path, n_bands, n_years),
        "version": str(header.get("VERSION", "")).strip(),
        "filename": Path(path).name,
        "n_bands": int(n_bands),
        "n_years": int(n_years),
        "band_edges": band_edges(n_bands),
        "hist_start": None if hist_start is None else hist_start[:n_years + 1],
    }
    return table

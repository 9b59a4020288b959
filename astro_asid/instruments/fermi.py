"""Fermi-LAT all-sky HEALPix count cubes -> one sky catalog.

The detectors work on small flat images, so an all-sky HEALPix cube is cut
into overlapping tiles in the geometry of the Fermi-LAT point-source data
challenge (Panes et al. 2021): 10 x 10 deg Galactic CAR patches of 64 x 64
pixels (``CDELT = (-10/64, 10/64)`` deg, ``CRPIX = 32.75``) centred on the
pixel centres of a HEALPix grid of ``nside = 8`` (768 tiles; ``grid_nside =
16`` gives 3072 tiles with wide margins everywhere). Each tile is
resampled from the HEALPix map, searched by a detector, and the detections
are put back on the sky, kept only in the central part of their tile, and
merged across overlaps (`astro_asid.instruments.merge`).

Resampling HEALPix counts onto tile pixels
------------------------------------------
A HEALPix pixel of ``nside = 256`` (0.229 deg) is larger than a tile pixel
(0.156 deg). The overlap area ``A_ph`` of tile pixel ``p`` with HEALPix
pixel ``h`` is estimated by sampling each tile pixel on an ``s x s`` grid
(``supersample``, default 4). Three methods (``resample``):

``"split"`` (default)
    Every count of HEALPix pixel ``h`` goes to one tile pixel ``p``, drawn
    with probability ``A_ph / Omega_h`` (a multinomial split, seeded by
    ``seed``). By the thinning property of the Poisson distribution, tile
    pixels are then *independent Poisson variables* with mean ``sum_h mu_h
    A_ph / Omega_h``: the statistics the detectors assume and were trained
    on (the challenge's patches were Poisson draws of projected expected
    counts). Counts are integers, and the counts of every HEALPix pixel
    lying wholly inside a tile are conserved exactly (the sampled areas of
    such a pixel are normalised to sum to its area). No information is
    added; the sub-pixel placement inside a HEALPix pixel is random.
``"area"``
    Deterministic area weighting, ``sum_h N_h A_ph / Omega_h``: the mean is
    right and counts are conserved on average, but each HEALPix count is
    shared among ~2-4 tile pixels, so values are not integers, neighbouring
    pixels are correlated and each pixel's variance is below its mean
    (under-dispersed). Sums over areas much larger than a HEALPix pixel keep
    Poisson statistics. This is the right choice for expected counts
    (models, background and exposure maps are always resampled this way).
``"nearest"``
    The HEALPix pixel containing each tile pixel centre, times the area
    ratio ``Omega_p / Omega_h`` (~0.47 at ``nside = 256``), like a healpy
    projection: each HEALPix count appears in ~2 tile pixels (duplicated),
    the image is blocky at the HEALPix scale, and the Poisson likelihood of
    the tile is wrong (for comparison only).

Measured with ``tsmap`` given the true background on 200 simulated tiles
(``benchmarks/fermi_allsky.py --oracle --tiles 200:400``): ``split`` and
``area`` agree (precision 0.864 and 0.863 at TS >= 25, 407 and 408 true
positives); ``nearest`` inflates TS (precision 0.842, 20% more false
positives). ``split`` is the default because it alone gives the detectors the
integer, independent Poisson pixels they model and were trained on.

Tiles as tasks
--------------
The resampling runs in the calling process, in one pass over all tiles (so
the ``split`` random draws do not depend on where tiles are processed). The
tiles with a valid pixel are then detected and characterised in groups
(``tiles_per_task``), each one call of
`astro_asid.scale.healpix.process_tiles`, in this process or on a dask
cluster (``scheduler=``, ``workers=``, see :doc:`/scale`); the merge across
overlaps stays here, fed the tables in tile order, so the catalog is the same.

Exposure and flux
-----------------
With an exposure (``cm2 s``, per band and HEALPix pixel, or per band), the
detector's ``flux`` (counts) becomes a photon flux (``cm-2 s-1``) over the
whole energy range ``meta['flux_band']``: ``F = C / sum_b f_b E_b`` with
``f_b`` the fraction of the photon flux in band ``b`` of a power law of
index ``spectral_index`` and ``E_b`` the band's exposure at the source. The
counts stay in the ``counts`` / ``counts_err`` columns.
"""

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import QTable
from astropy.utils.masked import Masked
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from astro_asid.characterize.apply import characterizer_meta
from astro_asid.catalog import (CATALOG_COLUMNS, build_catalog, validate_candidates,
                                validate_catalog)
from astro_asid.core import SkyImage, merge_mask
from astro_asid.instruments.merge import lonlat_to_unit, merge_duplicates
from astro_asid.utils.exceptions import ASIDInputWarning, PluginError

__all__ = ["FERMI_ENERGY_EDGES", "FERMI_PSF_R68_DEG", "HealpixCube", "HealpixTiling",
           "FermiHealpixAdapter", "read_healpix_cube", "fermi_psf_sigma_deg",
           "find_sources_healpix", "clear_tiling_cache"]

#: Energy bands of the data challenge (GeV).
FERMI_ENERGY_EDGES = np.array([0.5, 1.0, 2.0, 7.0, 20.0, 200.0]) * u.GeV
#: Effective 68% containment radius per challenge band (deg), measured on the challenge's
#: patches projected from nside-256 maps (so HEALPix and tile pixel blur are included).
FERMI_PSF_R68_DEG = (0.96, 0.60, 0.40, 0.24, 0.21)
_GAUSS_R68 = float(np.sqrt(-2.0 * np.log(0.32)))   # r68 / sigma of a 2-D Gaussian
_SKY_DEG2 = 4 * np.pi * (180 / np.pi) ** 2
_RESAMPLE = ("split", "area", "nearest")
_FRAMES = {"galactic": "galactic", "g": "galactic", "gal": "galactic",
           "icrs": "icrs", "c": "icrs", "cel": "icrs", "celestial": "icrs", "equatorial": "icrs"}


def _frame_name(frame):
    key = str(frame).strip().lower()
    if key not in _FRAMES:
        raise ValueError(f"unsupported HEALPix frame {frame!r}: use 'galactic' or 'icrs'")
    return _FRAMES[key]


def _check_nside(nside, nest):
    import healpy as hp

    nside = int(nside)
    if nside < 1 or not hp.isnsideok(nside, nest=nest):
        raise ValueError(f"invalid HEALPix nside {nside}" + (" (NESTED needs a power of 2)"
                                                            if nest else ""))
    return nside


def _band_array(values, n_bands, npix, name):
    """``values`` as a float array of shape ``(n_bands, npix)`` (broadcast from
    a scalar, ``(n_bands,)`` or ``(npix,)``), or None."""
    if values is None:
        return None
    arr = np.asarray(getattr(values, "value", values), dtype=float)
    if arr.ndim == 0:
        arr = np.full((n_bands, npix), float(arr))
    elif arr.ndim == 1 and arr.size == n_bands:
        arr = np.repeat(arr[:, None], npix, axis=1)
    elif arr.ndim == 1 and arr.size == npix:
        arr = np.repeat(arr[None], n_bands, axis=0)
    elif arr.shape != (n_bands, npix):
        raise ValueError(f"{name} must be a scalar, or have shape ({n_bands},), ({npix},) or "
                         f"({n_bands}, {npix}); got {arr.shape}")
    return arr


@dataclass
class HealpixCube:
    """An all-sky (or partial-sky) HEALPix count cube with its facts.

    Parameters
    ----------
    data : array-like
        Counts, shape ``(n_bands, 12 nside**2)`` (or ``(12 nside**2,)`` for
        one band). NaN or `healpy.UNSEEN` marks pixels without data.
    nside : int
        HEALPix resolution.
    nest : bool, optional
        NESTED (True) or RING (False) ordering.
    frame : str, optional
        ``"galactic"`` or ``"icrs"``.
    energy_edges : `~astropy.units.Quantity`, optional
        ``n_bands + 1`` energy edges.
    exposure : array-like or `~astropy.units.Quantity`, optional
        Exposure (``cm2 s`` when unitless): a scalar, per band ``(n_bands,)``,
        per pixel ``(npix,)``, per band and pixel, or at the ``n_bands + 1``
        energy edges (``fgst-bexpcube`` style; the band value is then the
        geometric mean of its two edges).
    background : array-like, optional
        Expected background counts per band and pixel (e.g. the Galactic
        diffuse model); passed to detectors that use it (``tsmap`` oracle mode).
    mask : array-like of bool, optional
        True at pixels to ignore, shape ``(npix,)`` or ``(n_bands, npix)``.
    meta : dict, optional
        Free-form metadata.
    """

    data: np.ndarray
    nside: int
    nest: bool = False
    frame: str = "galactic"
    energy_edges: u.Quantity | None = None
    exposure: np.ndarray | u.Quantity | None = None
    background: np.ndarray | None = None
    mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        import healpy as hp

        self.nest = bool(self.nest)
        self.nside = _check_nside(self.nside, self.nest)
        self.frame = _frame_name(self.frame)
        data = self.data
        if isinstance(data, u.Quantity):
            data = data.value
        data = np.array(data, dtype=np.float64)
        if data.ndim == 1:
            data = data[np.newaxis]
        npix = hp.nside2npix(self.nside)
        if data.ndim != 2 or data.shape[1] != npix:
            raise ValueError(f"HEALPix data must have shape (n_bands, {npix}) for nside "
                             f"{self.nside}, got {np.shape(self.data)}")
        bad = ~np.isfinite(data) | (data == hp.UNSEEN)
        if self.mask is not None:
            bad = merge_mask(bad, self.mask, f"the HEALPix data {data.shape}")
        if bad.all():
            raise ValueError("every HEALPix pixel is masked or NaN: nothing to search")
        data[bad] = np.nan
        self.data = data
        self.mask = bad
        n_bands = data.shape[0]
        if self.energy_edges is not None:
            edges = u.Quantity(self.energy_edges)
            if not edges.unit.is_equivalent(u.GeV):
                raise ValueError(f"energy_edges must have energy units, not {edges.unit!r}")
            if edges.shape != (n_bands + 1,) or np.any(np.diff(edges.value) <= 0):
                raise ValueError(f"{n_bands} band(s) need {n_bands + 1} strictly increasing "
                                 f"energy edges, got {edges}")
            self.energy_edges = edges
        if self.exposure is not None:
            exp = self.exposure
            unit = u.Unit("cm2 s")
            if isinstance(exp, u.Quantity):
                if not exp.unit.is_equivalent(unit):
                    raise ValueError(f"exposure must be in units of cm2 s, not {exp.unit!r}")
                exp = exp.to_value(unit)
            exp = np.asarray(exp, dtype=float)
            if exp.ndim >= 1 and exp.shape[0] == n_bands + 1 and exp.shape[0] != npix:
                # exposure at the energy edges: the band value is the geometric mean
                exp = np.sqrt(np.clip(exp[:-1], 0, None) * np.clip(exp[1:], 0, None))
            exp = _band_array(exp, n_bands, npix, "exposure")
            if np.any(exp[np.isfinite(exp)] < 0):
                raise ValueError("exposure must be non-negative")
            self.exposure = exp
        if self.background is not None:
            back = _band_array(self.background, n_bands, npix, "background")
            if np.any(~np.isfinite(back[~bad])) or np.any(back[~bad] < 0):
                raise ValueError("background must be finite and non-negative at unmasked pixels")
            self.background = back

    @property
    def n_bands(self):
        """Number of energy bands."""
        return self.data.shape[0]

    @property
    def npix(self):
        """Number of HEALPix pixels, ``12 nside**2``."""
        return self.data.shape[1]

    @property
    def pixel_area(self):
        """Solid angle of one HEALPix pixel."""
        return (_SKY_DEG2 / self.npix) * u.deg ** 2

    @classmethod
    def from_map(cls, hpx_map, exposure=None, background=None, mask=None, energy_edges=None):
        """A `HealpixCube` from a gammapy `~gammapy.maps.HpxNDMap`.

        Partial-sky maps are expanded to the full sky with the missing pixels
        masked. A map without axes is one band; a map with one energy axis
        gives its bands and edges. ``exposure`` and ``background`` may also be
        `~gammapy.maps.HpxNDMap` of the same geometry.
        """
        geom = hpx_map.geom
        if not getattr(geom, "is_hpx", False):
            raise TypeError(f"expected a HEALPix map, got {type(hpx_map).__name__}")
        axes = list(geom.axes)
        if len(axes) > 1:
            raise ValueError(f"the HEALPix map has {len(axes)} non-spatial axes "
                             f"{[a.name for a in axes]}; astro_asid needs at most one energy axis")
        if axes and energy_edges is None:
            if axes[0].name != "energy":
                raise ValueError(f"the HEALPix map's axis is {axes[0].name!r}, not 'energy'")
            if axes[0].node_type == "edges":
                energy_edges = axes[0].edges
        nside = int(np.atleast_1d(geom.nside)[0])
        if np.unique(np.atleast_1d(geom.nside)).size > 1:
            raise ValueError("HEALPix maps with a different nside per energy band are not "
                             "supported; use HpxNDMap.to_nside() first")
        data = _full_sky(hpx_map, nside)
        if exposure is not None and hasattr(exposure, "geom"):
            exposure = u.Quantity(_full_sky(exposure, nside), exposure.unit) \
                if exposure.unit != u.dimensionless_unscaled else _full_sky(exposure, nside)
        if background is not None and hasattr(background, "geom"):
            background = _full_sky(background, nside)
        unit = hpx_map.unit
        meta = {"map_unit": unit.to_string()} if unit is not None else {}
        cube = cls(data=data, nside=nside, nest=bool(geom.nest), frame=geom.frame,
                   energy_edges=energy_edges, exposure=exposure, background=background,
                   mask=mask, meta=meta)
        return cube

    @classmethod
    def read(cls, filename, hdu=None, energy_edges=None, exposure=None, background=None,
             mask=None):
        """Read a HEALPix count cube from FITS, see `read_healpix_cube`."""
        return read_healpix_cube(filename, hdu=hdu, energy_edges=energy_edges,
                                 exposure=exposure, background=background, mask=mask)


def _full_sky(hpx_map, nside):
    """Data of a (possibly partial-sky) HpxNDMap as a full-sky ``(n_bands, npix)`` array."""
    import healpy as hp

    geom = hpx_map.geom
    data = np.asarray(hpx_map.data, dtype=float)
    if geom.is_allsky:
        return data.reshape(-1, hp.nside2npix(nside))
    full = np.full((int(np.prod(geom.axes.shape)) if geom.axes else 1, hp.nside2npix(nside)),
                   np.nan)
    idx = geom.get_idx(flat=True)
    values = hpx_map.get_by_idx(idx)
    band = idx[1] if len(idx) > 1 else np.zeros(len(idx[0]), int)
    full[band, idx[0]] = values
    return full


def _find_hpx_hdu(hdul, hdu):
    if hdu is not None:
        return hdul[hdu]
    for h in hdul:
        hdr = h.header
        if isinstance(h, fits.BinTableHDU) and (
                str(hdr.get("PIXTYPE", "")).upper() == "HEALPIX" or "HPX_CONV" in hdr):
            return h
    raise ValueError("no HEALPix table HDU (PIXTYPE = 'HEALPIX') in the FITS file")


def _edges_from_hdul(hdul):
    """Energy edges from an EBOUNDS / ENERGIES / *_BANDS HDU, or None."""
    for h in hdul:
        if not isinstance(h, fits.BinTableHDU):
            continue
        names = [n.upper() for n in h.columns.names]
        if "E_MIN" in names and "E_MAX" in names:
            col_lo = h.columns[names.index("E_MIN")]
            unit = u.Unit(col_lo.unit or "keV", parse_strict="silent")
            lo = np.asarray(h.data["E_MIN"], float)
            hi = np.asarray(h.data["E_MAX"], float)
            return np.append(lo, hi[-1]) * unit
    return None


def read_healpix_cube(filename, hdu=None, energy_edges=None, exposure=None, background=None,
                      mask=None):
    """Read a HEALPix count cube from a FITS file.

    Supports the Fermi Science Tools layout (``fgst-ccube``: ``SKYMAP`` with
    ``CHANNEL1..n`` columns and ``EBOUNDS``) and gammapy's ``gadf`` layout,
    both through gammapy's `~gammapy.maps.Map.read`, and files written by
    `healpy.write_map` (one column per band, ``ORDERING``/``NSIDE``/
    ``COORDSYS`` keywords), read with `healpy.read_map`; for these the
    energy edges come from an ``EBOUNDS`` HDU when there is one, else from
    ``energy_edges``.

    Parameters
    ----------
    filename : str or path
        FITS file.
    hdu : int or str, optional
        HDU holding the map (default: the first HEALPix table).
    energy_edges, exposure, background, mask
        See `HealpixCube`; ``energy_edges`` overrides the file's.

    Returns
    -------
    `HealpixCube`
    """
    import healpy as hp
    from gammapy.maps import Map
    from gammapy.maps.hpx.io import HpxConv

    with fits.open(filename) as hdul:
        table = _find_hpx_hdu(hdul, hdu)
        header = table.header
        try:
            conv = HpxConv.identify_hpx_format(header)
        except (ValueError, KeyError):
            conv = "healpy"
        hdu_name = table.name
        hdu_index = hdul.index_of(hdu_name) if hdu is None else hdu
        file_edges = _edges_from_hdul(hdul)
        healpy_layout = conv == "healpy" or str(header.get("HPX_CONV", "")).lower() == "healpy"
    if not healpy_layout:
        m = Map.read(filename, hdu=hdu_name)
        return HealpixCube.from_map(m, exposure=exposure, background=background, mask=mask,
                                    energy_edges=energy_edges)
    if "NSIDE" not in header or "ORDERING" not in header:
        raise ValueError(f"{filename}: HEALPix table without NSIDE/ORDERING keywords")
    nest = str(header["ORDERING"]).strip().upper().startswith("NEST")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # healpy's notes about ordering and dtypes
        data = hp.read_map(filename, field=None, hdu=hdu_index, nest=nest, dtype=np.float64)
    frame = str(header.get("COORDSYS", "G")).strip() or "G"
    if energy_edges is None:
        energy_edges = file_edges
    return HealpixCube(data=np.atleast_2d(data), nside=int(header["NSIDE"]), nest=nest,
                       frame=frame, energy_edges=energy_edges, exposure=exposure,
                       background=background, mask=mask, meta={"filename": str(filename)})


def fermi_psf_sigma_deg(energy_edges=None, nside=256, n_bands=None):
    """Gaussian PSF sigma (deg) per band for Fermi-LAT HEALPix cubes.

    From the challenge's measured 68% radii (`FERMI_PSF_R68_DEG`, which
    include the blur of nside-256 pixels and of 0.156 deg tile pixels),
    interpolated log-log in energy at the geometric centre of each band
    (clamped outside 0.7-63 GeV). The HEALPix pixel blur (``a**2 / 12`` per
    axis, ``a`` the pixel side) is swapped for that of ``nside``.

    Parameters
    ----------
    energy_edges : `~astropy.units.Quantity`, optional
        Band edges; default the challenge's five bands (then ``n_bands`` must
        be 5 or None).
    nside : int, optional
        HEALPix resolution of the map.
    n_bands : int, optional
        Number of bands, checked against the edges.
    """
    if energy_edges is None:
        if n_bands not in (None, 5):
            raise ValueError(f"a {n_bands}-band HEALPix cube needs energy_edges (or "
                             "psf_sigma_deg) to set the PSF width per band")
        energy_edges = FERMI_ENERGY_EDGES
    edges = u.Quantity(energy_edges).to_value(u.GeV)
    ref_edges = FERMI_ENERGY_EDGES.to_value(u.GeV)
    ref_centre = np.sqrt(ref_edges[:-1] * ref_edges[1:])
    centre = np.sqrt(edges[:-1] * edges[1:])
    r68 = np.exp(np.interp(np.log(centre), np.log(ref_centre), np.log(FERMI_PSF_R68_DEG)))
    sigma2 = (r68 / _GAUSS_R68) ** 2
    a256 = np.sqrt(_SKY_DEG2 / (12 * 256 ** 2))
    a_new = np.sqrt(_SKY_DEG2 / (12 * int(nside) ** 2))
    sigma2 = np.clip(sigma2 - a256 ** 2 / 12, 0.25 * sigma2, None) + a_new ** 2 / 12
    return np.sqrt(sigma2)


# -- tiling ------------------------------------------------------------------------------
def _rotation(lon0, lat0):
    """Matrices ``(n, 3, 3)`` taking native CAR unit vectors to the sky frame.

    The native frame of a CAR tile centred on (lon0, lat0) has its reference
    point on the native x axis and the native pole towards the sky pole
    (astropy's default ``LONPOLE`` for CAR), so the rotation is by ``lat0``
    about the native y axis and then by ``lon0`` about the sky pole.
    """
    l0 = np.deg2rad(np.atleast_1d(np.asarray(lon0, float)))
    b0 = np.deg2rad(np.atleast_1d(np.asarray(lat0, float)))
    cl, sl, cb, sb = np.cos(l0), np.sin(l0), np.cos(b0), np.sin(b0)
    rot = np.empty(l0.shape + (3, 3))
    rot[..., 0, 0] = cb * cl
    rot[..., 0, 1] = -sl
    rot[..., 0, 2] = -sb * cl
    rot[..., 1, 0] = cb * sl
    rot[..., 1, 1] = cl
    rot[..., 1, 2] = -sb * sl
    rot[..., 2, 0] = sb
    rot[..., 2, 1] = 0.0
    rot[..., 2, 2] = cb
    return rot


def _apply(rot, vec):
    """``rot @ vec`` for ``rot (..., 3, 3)`` and ``vec (..., 3)``, elementwise (no BLAS)."""
    return np.stack([rot[..., i, 0] * vec[..., 0] + rot[..., i, 1] * vec[..., 1]
                     + rot[..., i, 2] * vec[..., 2] for i in range(3)], axis=-1)


def _apply_t(rot, vec):
    """``rot.T @ vec`` (the inverse rotation)."""
    return np.stack([rot[..., 0, i] * vec[..., 0] + rot[..., 1, i] * vec[..., 1]
                     + rot[..., 2, i] * vec[..., 2] for i in range(3)], axis=-1)


def _tile_wcs(frame, lon0, lat0, cdelt, crpix, npix):
    """The CAR WCS of a tile centred on ``(lon0, lat0)`` (deg) in ``frame``: plain
    numbers in, so that a worker process rebuilds it without the `HealpixTiling`."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"] if frame == "galactic" else ["RA---CAR", "DEC--CAR"]
    w.wcs.crval = [float(lon0), float(lat0)]
    w.wcs.cdelt = [-float(cdelt), float(cdelt)]
    w.wcs.crpix = [float(crpix), float(crpix)]
    w.wcs.set()
    w.pixel_shape = (int(npix), int(npix))
    return w


def _unit_to_lonlat(vec):
    lon = np.rad2deg(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0
    lat = np.rad2deg(np.arcsin(np.clip(vec[..., 2], -1.0, 1.0)))
    return lon, lat


class HealpixTiling:
    """Overlapping CAR tiles covering the sphere, and HEALPix -> tile resampling.

    Parameters
    ----------
    nside : int
        Resolution of the HEALPix maps to resample.
    nest : bool, optional
        Their ordering.
    frame : str, optional
        Their frame (``"galactic"`` or ``"icrs"``); tiles are in the same frame.
    grid_nside : int, optional
        Tile centres are the centres of the pixels (RING order) of a HEALPix
        grid of this resolution: 8 gives the challenge's 768 tiles, 16 gives
        3072 tiles.
    tile_npix : int, optional
        Tile width in pixels.
    tile_cdelt : float, optional
        Tile pixel size (deg).
    crpix : float, optional
        FITS reference pixel (1-based) of both axes; default ``32.75 *
        tile_npix / 64`` (the challenge's 32.75 for 64 pixels).
    supersample : int, optional
        Sub-pixels per axis used to estimate overlap areas.
    tiles : array-like of int, optional
        Only these tiles (pixel indices of the ``grid_nside`` grid), e.g. to
        search part of the sky; default all.

    Notes
    -----
    With the challenge grid (``grid_nside=8``, 64 pixels), about 0.04% of the
    sky (near the poles and at ``|b|`` ~ 20-25 deg) lies in no tile and 1.6% only
    within 3 pixels of a tile edge; ``grid_nside=16`` covers everything with
    at least 2 deg of margin, at 4 times the cost.
    """

    def __init__(self, nside, nest=False, frame="galactic", grid_nside=8, tile_npix=64,
                 tile_cdelt=10.0 / 64.0, crpix=None, supersample=4, tiles=None):
        import healpy as hp

        self.nest = bool(nest)
        self.nside = _check_nside(nside, self.nest)
        self.frame = _frame_name(frame)
        self.grid_nside = _check_nside(grid_nside, False)
        self.tile_npix = int(tile_npix)
        if self.tile_npix < 8:
            raise ValueError(f"tile_npix must be >= 8, got {tile_npix}")
        self.tile_cdelt = float(tile_cdelt)
        if not 0 < self.tile_cdelt * self.tile_npix <= 60:
            raise ValueError(f"tiles must be between 0 and 60 deg wide, got "
                             f"{self.tile_cdelt * self.tile_npix} deg")
        self.crpix = 32.75 * self.tile_npix / 64.0 if crpix is None else float(crpix)
        self.supersample = int(supersample)
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        n_grid = 12 * self.grid_nside ** 2
        if tiles is None:
            self.grid_index = np.arange(n_grid)
        else:
            self.grid_index = np.unique(np.asarray(tiles, dtype=np.int64).ravel())
            if self.grid_index.size == 0 or self.grid_index.min() < 0 \
                    or self.grid_index.max() >= n_grid:
                raise ValueError(f"tiles must be indices 0..{n_grid - 1} of the grid_nside="
                                 f"{self.grid_nside} grid, got {tiles!r}")
        self.lon0, self.lat0 = hp.pix2ang(self.grid_nside, self.grid_index, lonlat=True)
        self.rot = _rotation(self.lon0, self.lat0)
        self._weights = None
        self._nearest = None
        self.geometry_time = 0.0

    def __repr__(self):
        return (f"HealpixTiling(nside={self.nside}, nest={self.nest}, frame={self.frame!r}, "
                f"grid_nside={self.grid_nside}, tile_npix={self.tile_npix}, "
                f"tile_cdelt={self.tile_cdelt:g}, n_tiles={self.n_tiles})")

    @property
    def n_tiles(self):
        return self.lon0.size

    @property
    def key(self):
        return (self.nside, self.nest, self.frame, self.grid_nside, self.tile_npix,
                self.tile_cdelt, self.crpix, self.supersample, self.grid_index.tobytes())

    @property
    def centre_pixel(self):
        """0-based pixel coordinate of the tile centre (both axes)."""
        return self.crpix - 1.0

    def wcs(self, tile):
        """The astropy WCS of one tile."""
        return _tile_wcs(self.frame, self.lon0[tile], self.lat0[tile], self.tile_cdelt,
                        self.crpix, self.tile_npix)

    # native <-> pixel
    def _native_vec(self, x, y):
        phi = np.deg2rad(-self.tile_cdelt * (np.asarray(x, float) + 1.0 - self.crpix))
        theta = np.deg2rad(self.tile_cdelt * (np.asarray(y, float) + 1.0 - self.crpix))
        ct = np.cos(theta)
        return np.stack([ct * np.cos(phi), ct * np.sin(phi), np.sin(theta)], axis=-1)

    def pixel_to_sky(self, tile, x, y):
        """Sky (lon, lat) in deg of 0-based pixels ``(x, y)`` of tiles ``tile``."""
        tile = np.asarray(tile, int)
        vec = _apply(self.rot[tile], self._native_vec(x, y))
        return _unit_to_lonlat(vec)

    def sky_to_pixel(self, tile, lon, lat):
        """0-based pixels ``(x, y)`` of sky positions in tiles ``tile``."""
        tile = np.asarray(tile, int)
        nat = _apply_t(self.rot[tile], lonlat_to_unit(lon, lat))
        phi = np.rad2deg(np.arctan2(nat[..., 1], nat[..., 0]))
        theta = np.rad2deg(np.arcsin(np.clip(nat[..., 2], -1, 1)))
        return (-phi / self.tile_cdelt + self.crpix - 1.0,
                theta / self.tile_cdelt + self.crpix - 1.0)

    def central_excess(self, tile, lon, lat, n_neighbours=8):
        """How much further from its tile's centre a position is than from the best tile's.

        The distance is the Chebyshev (square) distance in tile pixels, so
        tiles' "central regions" are squares. Returns ``d(tile) - min_t d(t)``
        over the ``n_neighbours`` tiles with the nearest centres (0 when
        ``tile`` is the most central tile for the position).
        """
        tile = np.asarray(tile, int)
        vec = lonlat_to_unit(lon, lat).reshape(-1, 3)
        if vec.shape[0] == 0:
            return np.zeros(0)
        centres = lonlat_to_unit(self.lon0, self.lat0)
        k = min(n_neighbours, self.n_tiles)
        _, near = cKDTree(centres).query(vec, k=k)
        near = np.atleast_2d(near).reshape(vec.shape[0], k)
        c = self.centre_pixel
        lon = np.asarray(lon, float).ravel()
        lat = np.asarray(lat, float).ravel()
        x, y = self.sky_to_pixel(tile, lon, lat)
        own = np.maximum(np.abs(x - c), np.abs(y - c))
        x, y = self.sky_to_pixel(near, lon[:, None], lat[:, None])
        best = np.minimum(np.maximum(np.abs(x - c), np.abs(y - c)).min(axis=1), own)
        return own - best

    # -- resampling geometry -------------------------------------------------------------
    def _sub_native(self):
        s, n = self.supersample, self.tile_npix
        off = (np.arange(s) + 0.5) / s - 0.5
        sy, sx = np.meshgrid(off, off, indexing="ij")
        iy, ix = np.mgrid[0:n, 0:n]
        x = ix.ravel()[:, None] + sx.ravel()[None]
        y = iy.ravel()[:, None] + sy.ravel()[None]
        return self._native_vec(x, y)  # (n*n, s*s, 3)

    def _pixel_solid_angle(self):
        """Solid angle (deg2) of each tile pixel (row-major ``(n*n,)``): exact for CAR."""
        n = self.tile_npix
        half = np.deg2rad(self.tile_cdelt) / 2
        theta = np.deg2rad(self.tile_cdelt * (np.arange(n) + 1.0 - self.crpix))
        rows = np.deg2rad(self.tile_cdelt) * (np.sin(theta + half) - np.sin(theta - half))
        return np.repeat(rows * (180 / np.pi) ** 2, n)

    def _tile_tables(self, rot, chunk=16):
        """Overlap entries of the tiles with rotation matrices ``rot``, one dict per tile.

        Each dict holds, sorted by HEALPix pixel: ``pix`` (tile pixel, row-major),
        ``col`` (HEALPix pixel), ``frac`` (fraction of the tile pixel's area),
        ``prob`` (fraction of the HEALPix pixel's counts), ``pcond`` (the
        conditional probabilities of the sequential binomial split), ``rank``
        (position in the HEALPix pixel's group) and ``gstart`` (group starts).
        """
        import healpy as hp

        n, s2 = self.tile_npix, self.supersample ** 2
        npp = n * n
        native = self._sub_native()
        omega_p = self._pixel_solid_angle()
        omega_h = _SKY_DEG2 / hp.nside2npix(self.nside)
        iy, ix = np.divmod(np.arange(npp), n)
        # HEALPix pixels touching the 2 outermost tile pixel rings may extend outside the tile
        edge_px = (ix < 2) | (ix >= n - 2) | (iy < 2) | (iy >= n - 2)
        out = []
        for start in range(0, len(rot), chunk):
            vec = _apply(rot[start:start + chunk][:, None, None], native[None])
            hpx = hp.vec2pix(self.nside, vec[..., 0], vec[..., 1], vec[..., 2], nest=self.nest)
            del vec
            for one in hpx:
                one = np.sort(one, axis=1)
                first = np.ones(one.shape, bool)
                first[:, 1:] = one[:, 1:] != one[:, :-1]
                flat = np.flatnonzero(first)
                length = np.diff(np.append(flat, one.size))
                pix = flat // s2
                col = one.ravel()[flat]
                order = np.lexsort((pix, col))
                pix, col, length = pix[order], col[order], length[order]
                frac = length / s2
                prob = frac * omega_p[pix] / omega_h
                new = np.ones(col.size, bool)
                new[1:] = col[1:] != col[:-1]
                gstart = np.flatnonzero(new)
                gid = np.cumsum(new) - 1
                rank = np.arange(col.size) - gstart[gid]
                interior = np.bincount(gid, weights=edge_px[pix].astype(float)) == 0
                total = np.bincount(gid, weights=prob)
                # interior: the sampled areas must add up to the pixel's area (exact
                # conservation); at tile edges: only the part inside, never more than all
                scale = np.where(interior, 1.0 / total, 1.0 / np.maximum(total, 1.0))
                prob = prob * scale[gid]
                cum_before = np.cumsum(prob) - prob
                before = cum_before - cum_before[gstart][gid]
                with np.errstate(divide="ignore", invalid="ignore"):
                    pcond = np.clip(prob / (1.0 - before), 0.0, 1.0)
                last = np.append(gstart[1:], col.size) - 1
                pcond[last[interior]] = 1.0
                out.append(dict(pix=pix.astype(np.int32), col=col.astype(np.int64),
                                frac=frac.astype(np.float32), prob=prob.astype(np.float32),
                                pcond=pcond, rank=rank.astype(np.int16), gstart=gstart))
        return out

    def _quarter_turn(self):
        """HEALPix pixel index after a +90 deg rotation about the pole (an exact symmetry)."""
        import healpy as hp

        theta, phi = hp.pix2ang(self.nside, np.arange(hp.nside2npix(self.nside)),
                                nest=self.nest)
        return hp.ang2pix(self.nside, theta, phi + np.pi / 2, nest=self.nest)

    def _build(self):
        """Overlap table: one entry per (tile pixel, HEALPix pixel) pair.

        HEALPix grids are invariant under rotations by 90 deg about the pole,
        and so is the grid of tile centres: tiles are computed for longitudes
        in [0, 90) deg only and the others are obtained by relabelling the
        HEALPix pixels (4 times less work).
        """
        t0 = time.perf_counter()
        import healpy as hp

        turns = np.floor(self.lon0 / 90.0 + 1e-9).astype(int) % 4
        base_lon = self.lon0 - 90.0 * turns
        base_key = hp.ang2pix(self.grid_nside, base_lon, self.lat0, lonlat=True)
        keys, first, inverse = np.unique(base_key, return_index=True, return_inverse=True)
        tables = self._tile_tables(_rotation(base_lon[first], self.lat0[first]))
        perms = [None]
        if turns.max() > 0:
            step = self._quarter_turn()
            perms.append(step)
            for _ in range(2, turns.max() + 1):
                perms.append(step[perms[-1]])
        npp = self.tile_npix ** 2
        parts = {k: [] for k in ("row", "col", "frac", "prob", "pcond", "rank", "gcol",
                                 "gstart")}
        n_entries = 0
        for tile in range(self.n_tiles):
            tab = tables[inverse[tile]]
            col = tab["col"] if turns[tile] == 0 else perms[turns[tile]][tab["col"]]
            parts["row"].append(tile * npp + tab["pix"].astype(np.int64))
            parts["col"].append(col)
            for key in ("frac", "prob", "pcond", "rank"):
                parts[key].append(tab[key])
            parts["gcol"].append(col[tab["gstart"]])
            parts["gstart"].append(tab["gstart"] + n_entries)
            n_entries += col.size
        w = {k: np.concatenate(v) for k, v in parts.items()}
        sizes = np.diff(np.append(w["gstart"], n_entries))
        w["group"] = np.repeat(np.arange(sizes.size), sizes)
        w["by_rank"] = [np.flatnonzero(w["rank"] == r) for r in range(int(w["rank"].max()) + 1)]
        self._weights = w
        self.geometry_time = time.perf_counter() - t0
        return w

    @property
    def weights(self):
        """The overlap table (built on first use, then kept)."""
        return self._weights if self._weights is not None else self._build()

    def _tiles_from_entries(self, values):
        size = self.n_tiles * self.tile_npix ** 2
        out = np.bincount(self.weights["row"], weights=values, minlength=size)
        return out.reshape(self.n_tiles, self.tile_npix, self.tile_npix)

    def resample(self, maps, method="split", rng=None):
        """Tile images of HEALPix maps.

        Parameters
        ----------
        maps : `~numpy.ndarray`
            ``(n_bands, npix)`` counts (NaN counts as 0; mask separately).
        method : {"split", "area", "nearest"}
            See the module docstring; ``"split"`` needs non-negative integers.
        rng : `numpy.random.Generator` or int, optional
            Random numbers of ``"split"``.

        Returns
        -------
        `~numpy.ndarray`
            ``(n_tiles, n_bands, tile_npix, tile_npix)`` float32.
        """
        import healpy as hp

        if method not in _RESAMPLE:
            raise ValueError(f"resample must be one of {_RESAMPLE}, not {method!r}")
        maps = np.nan_to_num(np.atleast_2d(np.asarray(maps, float)), nan=0.0)
        n_bands = maps.shape[0]
        n = self.tile_npix
        out = np.empty((self.n_tiles, n_bands, n, n), np.float32)
        if method == "nearest":
            if self._nearest is None:
                yy, xx = np.mgrid[0:n, 0:n]
                vec = _apply(self.rot[:, None, None], self._native_vec(xx, yy)[None])
                self._nearest = hp.vec2pix(self.nside, vec[..., 0], vec[..., 1], vec[..., 2],
                                           nest=self.nest)
            ratio = self._pixel_solid_angle().reshape(n, n) / (_SKY_DEG2 / maps.shape[1])
            for b in range(n_bands):
                out[:, b] = maps[b][self._nearest] * ratio
            return out
        w = self.weights
        if method == "area":
            for b in range(n_bands):
                out[:, b] = self._tiles_from_entries(w["prob"] * maps[b][w["col"]])
            return out
        if np.any(maps < 0) or np.any(maps != np.round(maps)):
            raise ValueError("resample='split' needs non-negative integer counts; use "
                             "resample='area' for expected counts or scaled maps")
        rng = np.random.default_rng(rng)
        group = w["group"]
        for b in range(n_bands):
            remaining = maps[b][w["gcol"]].astype(np.int64)
            drawn = np.zeros(group.size, np.float64)
            for idx in w["by_rank"]:
                g = group[idx]
                live = remaining[g] > 0
                idx, g = idx[live], g[live]
                if idx.size == 0:
                    continue
                p = w["pcond"][idx]
                k = remaining[g].copy()
                draw = p < 1.0  # the last member of a group takes what is left
                k[draw] = rng.binomial(k[draw], p[draw])
                drawn[idx] = k
                remaining[g] -= k
            out[:, b] = self._tiles_from_entries(drawn)
        return out

    def average(self, maps):
        """Tile images of intensive HEALPix maps (exposure): area-weighted means."""
        maps = np.atleast_2d(np.asarray(maps, float))
        w = self.weights
        n = self.tile_npix
        out = np.empty((self.n_tiles, maps.shape[0], n, n), np.float32)
        for b in range(maps.shape[0]):
            out[:, b] = self._tiles_from_entries(w["frac"] * np.nan_to_num(maps[b][w["col"]]))
        return out

    def touches(self, bad):
        """Tile pixels overlapping any True HEALPix pixel: ``(n_tiles, n_bands, n, n)`` bool."""
        bad = np.atleast_2d(np.asarray(bad, bool))
        w = self.weights
        n = self.tile_npix
        out = np.empty((self.n_tiles, bad.shape[0], n, n), bool)
        for b in range(bad.shape[0]):
            if not bad[b].any():
                out[:, b] = False
                continue
            out[:, b] = self._tiles_from_entries(bad[b][w["col"]].astype(float)) > 0
        return out


_TILING_CACHE = {}


def clear_tiling_cache():
    """Forget the cached tiling geometry (a full-sky nside-256 one holds ~300 MB)."""
    _TILING_CACHE.clear()


def _get_tiling(**kwargs):
    """A `HealpixTiling`, reused across calls with the same geometry (one kept)."""
    tiling = HealpixTiling(**kwargs)
    cached = _TILING_CACHE.get("last")
    if cached is not None and cached.key == tiling.key:
        return cached, True
    _TILING_CACHE["last"] = tiling
    return tiling, False


# -- detection ---------------------------------------------------------------------------
def _as_cube(obj, nside=None, nest=None, frame=None, energy_edges=None, exposure=None,
             background=None, mask=None):
    """Any supported HEALPix input as a `HealpixCube`."""
    import os

    extra = dict(exposure=exposure, background=background, mask=mask)
    if isinstance(obj, HealpixCube):
        if any(v is not None for v in (nside, nest, frame)):
            raise TypeError("nside/nest/frame cannot be given with a HealpixCube (it has them)")
        changes = {k: v for k, v in extra.items() if v is not None}
        if energy_edges is not None:
            changes["energy_edges"] = energy_edges
        if not changes:
            return obj
        mask_old = obj.mask if mask is None else obj.mask | np.asarray(mask, bool)
        return HealpixCube(data=obj.data, nside=obj.nside, nest=obj.nest, frame=obj.frame,
                           energy_edges=changes.get("energy_edges", obj.energy_edges),
                           exposure=changes.get("exposure", obj.exposure),
                           background=changes.get("background", obj.background),
                           mask=mask_old, meta=dict(obj.meta))
    if getattr(getattr(obj, "geom", None), "is_hpx", False):
        if any(v is not None for v in (nside, nest, frame)):
            raise TypeError("nside/nest/frame cannot be given with a gammapy HEALPix map")
        return HealpixCube.from_map(obj, energy_edges=energy_edges, **extra)
    if isinstance(obj, dict):
        if "nside" not in obj:
            raise ValueError("a HEALPix dict needs 'nside' and 'counts' (or 'data')")
        d = dict(obj)
        data = d.pop("counts", None)
        if data is None:
            data = d.pop("data", None)
        if data is None:
            raise ValueError("a HEALPix dict needs 'counts' (or 'data')")
        for key, val in (("energy_edges", energy_edges), ("exposure", exposure),
                         ("background", background), ("mask", mask)):
            if val is not None:
                d[key] = val
        unknown = set(d) - {"nside", "nest", "frame", "energy_edges", "exposure", "background",
                            "mask", "meta"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in the HEALPix dict")
        return HealpixCube(data=data, **d)
    if isinstance(obj, (str, os.PathLike)):
        cube = read_healpix_cube(obj, energy_edges=energy_edges, **extra)
        return cube
    if isinstance(obj, (np.ndarray, u.Quantity, list, tuple)):
        if nside is None:
            raise TypeError("a plain array needs nside=... (and nest=, frame= when not RING "
                            "Galactic) to be read as a HEALPix cube")
        return HealpixCube(data=obj, nside=nside, nest=bool(nest), frame=frame or "galactic",
                           energy_edges=energy_edges, **extra)
    raise TypeError(f"cannot read a HEALPix cube from an object of type {type(obj).__name__}")


def _deep_weights_missing(cls):
    """True for a deep detector whose default weights are not installed."""
    if not hasattr(cls, "_weights_path"):
        return False
    try:
        path = cls()._weights_path()
    except Exception:  # cannot tell: let the detector fail with its own message
        return False
    from astro_asid.nn.io import weights_path
    from astro_asid.utils.exceptions import WeightsError

    try:
        return not weights_path(path).exists()
    except WeightsError:  # unreadable card: let the detector fail with its own message
        return False


def _resolve(detector, options):
    """Detector instance and origin; default: the best usable detector for Fermi-LAT."""
    from astro_asid.find import _PREFERRED, _resolve_detector
    from astro_asid.config import conf
    from astro_asid.plugins.manager import get_registry

    if detector is None and conf.default_detector == "auto":
        reg = get_registry().detectors
        for name in _PREFERRED.get("fermi-lat", ()) + _PREFERRED[None]:
            if name in reg and not _deep_weights_missing(reg.get(name)):
                detector = name
                break
    return _resolve_detector(detector, "fermi-lat", options)


def _collect(tables, tiles):
    """Concatenate per-tile candidate tables into plain arrays (+ units of columns)."""
    cols, units = {}, {}
    names = []
    for t in tables:
        for name in t.colnames:
            if name not in names and t[name].ndim in (1, 2) and t[name].dtype.kind in "fiub":
                names.append(name)
    for name in names:
        chunks = []
        for t in tables:
            if name in t.colnames:
                col = t[name]
                if isinstance(col, u.Quantity):
                    units.setdefault(name, col.unit)
                    col = col.to_value(units[name]) if col.unit.is_equivalent(units[name]) \
                        else np.full(len(t), np.nan)
                chunks.append(np.ma.filled(np.ma.asarray(col, dtype=float), np.nan))
            else:
                width = next(tt[name].shape[1:] for tt in tables if name in tt.colnames)
                chunks.append(np.full((len(t),) + width, np.nan))
        cols[name] = np.concatenate(chunks) if chunks else np.zeros(0)
    cols["tile"] = np.concatenate([np.full(len(t), i, np.int64) for t, i in zip(tables, tiles)]) \
        if tables else np.zeros(0, np.int64)
    for name in ("x_centroid", "y_centroid", "score"):
        cols.setdefault(name, np.zeros(cols["tile"].size))
    return cols, units


def _blas_limit(threads):
    """Context limiting BLAS threads (no-op for None, or without threadpoolctl)."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(threads), user_api="blas")


def _detect_tiles(det, origin, counts, masks, images, blas_threads=1, labels=None):
    """Run the detector on every tile; returns (tables, tile indices).

    ``labels`` are the tiles' numbers in error messages (default: their indices).
    """
    with _blas_limit(blas_threads):
        return _detect_tiles_unlimited(det, origin, counts, masks, images, labels)


def _detect_tiles_unlimited(det, origin, counts, masks, images, labels=None):
    tables, tiles = [], []
    where = f"detector {det.name!r} (from {origin})"
    active = [i for i in range(len(counts)) if not masks[i].all()]
    if hasattr(det, "detect_arrays"):
        batch = int(getattr(det, "batch_size", 64) or 64)
        for start in range(0, len(active), batch):
            idx = active[start:start + batch]
            try:
                raw = det.detect_arrays(np.where(masks[idx], 0.0, counts[idx]), masks[idx])
            except (ValueError, TypeError):
                raise
            except Exception as exc:
                raise PluginError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
            tables.extend(raw)
            tiles.extend(idx)
    else:
        for i in active:
            try:
                raw = det.detect(images(i))
            except (ValueError, TypeError):
                raise
            except Exception as exc:
                tile = i if labels is None else labels[i]
                raise PluginError(f"{where} failed on tile {tile}: {type(exc).__name__}: "
                                  f"{exc}") from exc
            tables.append(raw)
            tiles.append(i)
    out_t, out_i = [], []
    n = counts.shape[-1]
    for raw, i in zip(tables, tiles):
        cands = validate_candidates(raw, (n, n), origin=where)
        if len(cands):
            ix = np.clip(np.round(np.asarray(cands["x_centroid"], float)).astype(int), 0, n - 1)
            iy = np.clip(np.round(np.asarray(cands["y_centroid"], float)).astype(int), 0, n - 1)
            cands = cands[~np.all(masks[i], axis=0)[iy, ix]]
        if len(cands):
            out_t.append(cands)
            out_i.append(i)
    return out_t, out_i


def _run_tile_groups(plan, tiling, active, per_task, counts, exposure, background, detector,
                     characterize, progress=False, **context):
    """Detect and characterise the ``active`` tiles in groups of ``per_task``
    (`astro_asid.scale.healpix.process_tiles`), in this process or on dask.

    Returns the candidate tables and their tiles in tile order (as one pass over
    all tiles gives them), the summed detection and characterisation seconds,
    whether a characteriser ran, and the number of tasks.
    """
    from astro_asid.scale.block import BLOCK_THREADS
    from astro_asid.scale.healpix import (CharacterizerOnce, plan_tile_groups, process_tiles,
                                          tile_group_tasks)
    from astro_asid.scale.scheduler import is_serial, map_blocks, open_client

    groups = plan_tile_groups(tiling, active, per_task)
    run = dict(progress=progress, total=len(groups), desc="tile groups")
    if not groups:
        parts = []
    elif is_serial(plan):
        model = CharacterizerOnce(characterize, context["instrument"])
        tasks = tile_group_tasks(groups, counts, detector, characterize, exposure, background,
                                 model=model, **context)
        parts = map_blocks(process_tiles, tasks, **run)
    else:
        with open_client(plan) as client:
            tasks = tile_group_tasks(groups, counts, detector, characterize, exposure,
                                     background, threads=BLOCK_THREADS, **context)
            parts = map_blocks(process_tiles, tasks, client=client, **run)
    tables = [t for p in parts for t in p["tables"]]
    tiles = [i for p in parts for i in p["tiles"]]
    return (tables, tiles, sum(p["detect_s"] for p in parts),
            sum(p["characterize_s"] for p in parts), any(p["characterized"] for p in parts),
            len(groups))


def _power_law_photon_fractions(edges_gev, index):
    """Fraction of a power law's photon flux in each band."""
    if np.isclose(index, 1.0):
        w = np.log(edges_gev[1:] / edges_gev[:-1])
    else:
        w = (edges_gev[:-1] ** (1 - index) - edges_gev[1:] ** (1 - index)) / (index - 1)
    return w / w.sum()


def _allsky_wcs():
    """A Galactic all-sky CAR WCS (only used to give build_catalog a celestial frame)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    w.wcs.crval = [0.0, 0.0]
    w.wcs.cdelt = [-1.0, 1.0]
    w.wcs.crpix = [181.0, 91.0]
    w.wcs.set()
    return w


def _errors_lonlat(tiling, tile, x, y, x_err, y_err, frame):
    """1-sigma angular errors along Galactic lon and lat from tile-pixel errors."""
    lon0, lat0 = tiling.pixel_to_sky(tile, x, y)
    lon1, lat1 = tiling.pixel_to_sky(tile, x + 0.5, y)
    c0 = SkyCoord(lon0, lat0, unit="deg", frame=frame).galactic
    c1 = SkyCoord(lon1, lat1, unit="deg", frame=frame).galactic
    # position angle (east of north) of the tile's +x axis at the source
    pa = c0.position_angle(c1).rad
    alpha = pa - np.pi / 2  # angle between +x and east
    theta = np.deg2rad(tiling.tile_cdelt * (np.asarray(y, float) + 1.0 - tiling.crpix))
    sx = np.asarray(x_err, float) * tiling.tile_cdelt * np.cos(theta)
    sy = np.asarray(y_err, float) * tiling.tile_cdelt
    ca, sa = np.cos(alpha), np.sin(alpha)
    err_lon = np.sqrt((sx * ca) ** 2 + (sy * sa) ** 2)
    err_lat = np.sqrt((sx * sa) ** 2 + (sy * ca) ** 2)
    return np.stack([err_lon, err_lat], axis=-1), c0


def find_sources_healpix(hpx, *, detector=None, nside=None, nest=None, frame=None,
                         energy_edges=None, exposure=None, background=None, mask=None,
                         grid_nside=8, tile_npix=64, tile_cdelt=10.0 / 64.0, tiles=None,
                         resample="split", supersample=4, seed=0, psf_sigma_deg=None,
                         spectral_index=2.3,
                         merge_radius=0.3 * u.deg, min_separation=0.2 * u.deg,
                         overlap_slack=0.5 * u.deg,
                         instrument="fermi-lat", blas_threads=1, characterize=None,
                         scheduler=None, workers=None, progress=False, tiles_per_task=None,
                         **detector_options):
    """Find sources in an all-sky HEALPix count cube.

    Parameters
    ----------
    hpx : `HealpixCube`, gammapy `~gammapy.maps.HpxNDMap`, dict, FITS path, or array
        The counts. An array ``(n_bands, 12 nside**2)`` needs ``nside`` (and
        ``nest``, ``frame`` when not RING Galactic); a dict holds ``counts``,
        ``nside`` and optionally the other `HealpixCube` fields.
    detector : str or `~astro_asid.detection.Detector`, optional
        Default: the best registered detector for Fermi-LAT whose weights
        are installed (``asid-unet``, else ``tsmap``).
    nside, nest, frame, energy_edges, exposure, background, mask
        See `HealpixCube` (energy edges default to the challenge's five bands
        for a 5-band cube).
    grid_nside, tile_npix, tile_cdelt, supersample, tiles
        Tile geometry, see `HealpixTiling` (defaults: the data challenge's;
        ``tiles`` restricts the search to some tiles of the grid).
    resample : {"split", "area", "nearest"}, optional
        How counts are put on tile pixels (see the module docstring); the
        default ``"split"`` gives independent Poisson tile pixels and falls
        back to ``"area"`` (with a warning) for non-integer maps.
    seed : int or `numpy.random.Generator`, optional
        Random numbers of ``resample="split"``.
    psf_sigma_deg : float or array-like, optional
        Gaussian PSF sigma per band (deg) given to the detector as
        ``image.psf["sigma_pix"]``; default `fermi_psf_sigma_deg`.
    spectral_index : float, optional
        Photon index used to turn counts into photon flux.
    merge_radius : `~astropy.units.Quantity`, optional
        Detections of different tiles closer than this are one source.
    min_separation : `~astropy.units.Quantity` or None, optional
        Of two catalog sources closer than this (even from one tile), only the
        better is kept: 0.2 deg is below the LAT's resolution in every band
        (PSF sigma >= 0.13 deg), so such pairs are double detections of one
        source. None disables the floor.
    overlap_slack : `~astropy.units.Quantity`, optional
        A detection is kept when its tile is the most central one for its
        position, or less than this much (Chebyshev distance from the tile
        centre) less central; duplicates from the slack band are merged.
    instrument : str, optional
        Stored on the tile images and in the catalog.
    blas_threads : int or None, optional
        BLAS threads while detecting (via threadpoolctl). Tiles are small, so
        one thread is fastest, and multi-threaded BLAS on a loaded machine can
        be 10-20 times slower; None leaves the setting alone.
    characterize : None, bool, str or `~astro_asid.characterize.Characterizer`, optional
        Characterisation of every tile's candidates, as in
        `~astro_asid.find_sources` (default: the shipped characteriser of
        ``instrument`` when it fits the tiles).
    scheduler : None, str or `distributed.Client`, optional
        Where the groups of tiles are detected and characterised, as in
        `~astro_asid.find_sources` (see `~astro_asid.scale.check_scheduler`
        and :doc:`/scale`): None or ``"serial"`` in this process;
        ``"processes"`` on a local dask cluster of ``workers`` processes;
        ``"tcp://host:port"`` or a ``Client``: an existing cluster. The
        resampling and the merge stay in this process; the catalog is the
        same whatever the choice (bit for bit when torch runs with one thread
        here, as on the workers).
    workers : int, optional
        Processes of the local cluster; alone, it implies ``scheduler="processes"``.
    progress : bool, optional
        Show a progress bar over the groups of tiles.
    tiles_per_task : int, optional
        Tiles in one task (`astro_asid.scale.healpix.process_tiles`): 16 by
        default, rounded up to whole batches of a batched detector (64 tiles
        for ``asid-unet``), so that every tile is in the same network batch
        whatever the scheduler (see `astro_asid.scale.healpix.tiles_per_task_for`).
    **detector_options
        Passed to the detector's constructor.

    Returns
    -------
    `~astropy.table.QTable`
        The catalog (`astro_asid.catalog` schema) with Galactic
        ``sky_centroid``; ``x_centroid``/``y_centroid`` are masked (there is
        no input pixel frame). Extra columns: ``tile`` (tile index),
        ``n_merged`` (detections merged into the row), ``counts`` and
        ``counts_err`` (source counts, when an exposure turned ``flux`` into
        photon flux), and the detector's own columns. ``meta`` records the
        detector, tiling, merging and timings (``meta['timing_s']``; ``detect``
        and ``characterize`` are summed over the tasks, worker time when they
        ran on dask, and ``tasks`` is the wall time of all tasks).
    """
    from astro_asid import __version__
    from astro_asid.scale.healpix import tiles_per_task_for
    from astro_asid.scale.scheduler import check_scheduler, is_serial

    t_start = time.perf_counter()
    plan = check_scheduler(scheduler, workers)
    cube = _as_cube(hpx, nside=nside, nest=nest, frame=frame, energy_edges=energy_edges,
                    exposure=exposure, background=background, mask=mask)
    det, origin = _resolve(detector, detector_options)
    per_task = tiles_per_task_for(det, tiles_per_task)
    if not is_serial(plan):
        from astro_asid.scale.spec import DetectorSpec, check_characterizer_spec

        # fail before the resampling: what workers cannot rebuild
        spec = DetectorSpec.from_detector(det)
        char_spec = check_characterizer_spec(characterize)
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {_RESAMPLE}, not {resample!r}")
    good = cube.data[~cube.mask]
    if det.needs_counts and good.size and good.min() < 0:
        raise ValueError(f"detector {det.name!r} needs counts, but the HEALPix map has negative "
                         f"values (min {good.min():.3g})")
    method = resample
    if method == "split" and np.any(good != np.round(good)):
        warnings.warn("the HEALPix map does not hold integer counts; resampling it with "
                      "resample='area' instead of 'split'", ASIDInputWarning, stacklevel=2)
        method = "area"

    tiling, cached = _get_tiling(nside=cube.nside, nest=cube.nest, frame=cube.frame,
                                 grid_nside=grid_nside, tile_npix=tile_npix,
                                 tile_cdelt=tile_cdelt, supersample=supersample, tiles=tiles)
    if method != "nearest" or cube.exposure is not None or cube.background is not None:
        tiling.weights  # noqa: B018 (build the overlap table now, to time it separately)
    t_geom = time.perf_counter()

    n_bands = cube.n_bands
    edges = cube.energy_edges
    if edges is None and n_bands == 5:
        edges = FERMI_ENERGY_EDGES
    if psf_sigma_deg is None:
        psf_deg = fermi_psf_sigma_deg(edges, cube.nside, n_bands)
    else:
        psf_deg = np.broadcast_to(np.atleast_1d(np.asarray(psf_sigma_deg, float)),
                                  (n_bands,)).copy()
        if np.any(~np.isfinite(psf_deg)) or np.any(psf_deg <= 0):
            raise ValueError(f"psf_sigma_deg must be positive, got {psf_sigma_deg}")
    psf_pix = psf_deg / tiling.tile_cdelt

    counts = tiling.resample(np.where(cube.mask, 0.0, cube.data), method, rng=seed)
    tile_mask = tiling.touches(cube.mask)
    counts[tile_mask] = np.nan
    tile_exposure = tiling.average(cube.exposure) if cube.exposure is not None else None
    tile_background = (tiling.resample(np.where(cube.mask, 0.0, cube.background), "area")
                       if cube.background is not None else None)
    t_tiles = time.perf_counter()

    # the tiles with a valid pixel, in groups: independent tasks, here or on dask workers
    active = np.flatnonzero(~tile_mask.reshape(len(tile_mask), -1).all(axis=1))
    tables, table_tiles, detect_s, char_s, characterized, n_tasks = _run_tile_groups(
        plan, tiling, active, per_task, counts, tile_exposure, tile_background,
        det if is_serial(plan) else spec, characterize if is_serial(plan) else char_spec,
        energy_edges=edges, psf_sigma_pix=psf_pix.tolist(), instrument=instrument,
        origin=origin, blas_threads=blas_threads, progress=progress)
    char_meta = characterizer_meta(tables[0]) if characterized else {}
    t_tasks = time.perf_counter()

    cols, units = _collect(tables, table_tiles)
    n_raw = cols["tile"].size
    tile = cols["tile"]
    lon, lat = tiling.pixel_to_sky(tile, cols["x_centroid"], cols["y_centroid"])
    slack_px = u.Quantity(overlap_slack, u.deg).to_value(u.deg) / tiling.tile_cdelt
    central = tiling.central_excess(tile, lon, lat) <= slack_px
    sel = {k: v[central] for k, v in cols.items()}
    lon, lat = lon[central], lat[central]
    keep, merged_into, n_merged = merge_duplicates(lon, lat, sel["score"], sel["tile"],
                                                   radius=merge_radius,
                                                   min_separation=min_separation)
    sel = {k: v[keep] for k, v in sel.items()}
    sel["n_merged"] = n_merged[keep]
    lon, lat = lon[keep], lat[keep]
    n = lon.size

    # errors and positions on the sky (Galactic)
    x_err = sel.get("x_err", np.full(n, np.nan))
    y_err = sel.get("y_err", np.full(n, np.nan))
    err, coords = _errors_lonlat(tiling, sel["tile"], sel["x_centroid"], sel["y_centroid"],
                                 x_err, y_err, cube.frame)

    cands = QTable()
    cands["x_centroid"] = np.zeros(n)
    cands["y_centroid"] = np.zeros(n)
    cands["score"] = sel["score"]
    flux_unit = units.get("flux", u.ct)
    meta_flux = {}
    if "flux" in sel:
        flux = sel["flux"]
        flux_err = sel.get("flux_err", np.full(n, np.nan))
        if cube.exposure is not None and flux_unit.is_equivalent(u.ct):
            if edges is None:
                raise ValueError("turning counts into photon flux needs the energy edges")
            import healpy as hp

            frac = _power_law_photon_fractions(edges.to_value(u.GeV), spectral_index)
            lon_in, lat_in = (coords.l.deg, coords.b.deg)
            if cube.frame != "galactic":
                back = coords.transform_to(cube.frame)
                lon_in, lat_in = back.spherical.lon.deg, back.spherical.lat.deg
            exp_at = np.stack([hp.get_interp_val(np.nan_to_num(cube.exposure[b]), lon_in,
                                                 lat_in, nest=cube.nest, lonlat=True)
                               for b in range(n_bands)], axis=-1) if n else np.zeros((0, n_bands))
            eff = (exp_at * frac).sum(axis=-1) if n else np.zeros(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                conv = np.where(eff > 0, 1.0 / eff, np.nan)
            scale = flux_unit.to(u.ct)
            for name, values in (("counts", flux * scale), ("counts_err", flux_err * scale)):
                cands[name] = Masked(values * u.ct, mask=~np.isfinite(values))
            cands["flux"] = flux * scale * conv * u.Unit("cm-2 s-1")
            cands["flux_err"] = flux_err * scale * conv * u.Unit("cm-2 s-1")
            meta_flux = {"flux_spectral_index": float(spectral_index),
                         "flux_band": f"{edges[0].value:g}-{edges[-1].value:g} {edges.unit}"}
        else:
            cands["flux"] = flux * flux_unit
            cands["flux_err"] = flux_err * flux_unit
    skip = {"x_centroid", "y_centroid", "score", "x_err", "y_err", "flux", "flux_err", "tile",
            "n_merged", "id"}
    for name, values in sel.items():
        if name not in skip:
            cands[name] = values * units[name] if name in units else values
    cands["tile"] = tiling.grid_index[sel["tile"].astype(np.int64)]
    cands["n_merged"] = sel["n_merged"]

    dummy = SkyImage(data=np.zeros((n_bands, 2, 2), np.float32), wcs=_allsky_wcs(),
                     energy_edges=edges, unit=flux_unit, instrument=instrument)
    t_end = time.perf_counter()
    meta = {
        "detector": det.name,
        "detector_origin": origin,
        "detector_options": {k: repr(v) for k, v in det.options.items()},
        "astro_asid_version": __version__,
        "input": "healpix",
        "healpix": {"nside": cube.nside, "nest": cube.nest, "frame": cube.frame},
        "tiling": {"grid_nside": tiling.grid_nside, "n_tiles": tiling.n_tiles,
                   "all_tiles": tiles is None,
                   "tile_npix": tiling.tile_npix, "tile_cdelt_deg": tiling.tile_cdelt,
                   "crpix": tiling.crpix, "resample": method, "supersample": tiling.supersample,
                   "seed": seed if isinstance(seed, (int, type(None))) else repr(seed),
                   "tiles_per_task": per_task, "n_tasks": n_tasks},
        "psf_sigma_deg": [float(v) for v in psf_deg],
        "merge_radius_deg": float(u.Quantity(merge_radius, u.deg).value),
        "min_separation_deg": (None if min_separation is None
                               else float(u.Quantity(min_separation, u.deg).value)),
        "overlap_slack_deg": float(u.Quantity(overlap_slack, u.deg).value),
        "n_detections_tiles": int(n_raw),
        "n_detections_central": int(central.sum()),
        "n_duplicates_merged": int((~keep).sum()),
        "timing_s": {"input": round(t_geom - t_start - tiling.geometry_time * (not cached), 3),
                     "geometry": round(tiling.geometry_time if not cached else 0.0, 3),
                     "geometry_cached": bool(cached),
                     "resample": round(t_tiles - t_geom, 3),
                     "detect": round(detect_s, 3),
                     "characterize": round(char_s, 3),
                     "tasks": round(t_tasks - t_tiles, 3),
                     "merge": round(t_end - t_tasks, 3)},
    }
    for key in ("model_name", "model_sha256"):
        if getattr(det, key, None) is not None:
            meta[key] = getattr(det, key)
    meta.update(meta_flux)
    meta.update(char_meta)
    cat = build_catalog(cands, dummy, meta=meta)
    cat["x_centroid"] = Masked(np.full(n, np.nan) * u.pix, mask=np.ones(n, bool))
    cat["y_centroid"] = Masked(np.full(n, np.nan) * u.pix, mask=np.ones(n, bool))
    order = np.argsort(-np.asarray(sel["score"], float), kind="stable")
    cat["sky_centroid"] = coords[order] if n else SkyCoord([], [], unit="deg", frame="galactic")
    err = err[order]
    cat["sky_centroid_err"] = Masked(u.Quantity(err, u.deg), mask=~np.isfinite(err))
    for col in ("x_centroid", "y_centroid", "sky_centroid", "sky_centroid_err"):
        cat[col].info.description = CATALOG_COLUMNS[col]
    cat["sky_centroid_err"].info.format = ".4f"
    try:
        validate_catalog(cat)
    except ValueError as exc:
        raise PluginError(f"detector {det.name!r} (from {origin}) produced an invalid catalog: "
                          f"{exc}") from exc
    cat.meta["timing_s"]["total"] = round(time.perf_counter() - t_start, 3)
    return cat


class FermiHealpixAdapter:
    """`~astro_asid.find_sources` adapter for HEALPix count cubes.

    Accepts a `HealpixCube`, a gammapy `~gammapy.maps.HpxNDMap`, a dict with
    ``nside`` and ``counts``, or the path of a FITS file holding a HEALPix
    table, and runs `find_sources_healpix` on it.
    """

    name = "fermi-healpix"
    #: `find_sources` passes ``scheduler``, ``workers`` and ``progress`` on (tiles as tasks)
    supports_scheduler = True

    def accepts(self, obj):
        """True when ``obj`` is a HEALPix cube this adapter can read."""
        import os

        if isinstance(obj, HealpixCube):
            return True
        if getattr(getattr(obj, "geom", None), "is_hpx", False):
            return True
        if isinstance(obj, dict):
            return "nside" in obj and ("counts" in obj or "data" in obj)
        if isinstance(obj, (str, os.PathLike)) and str(obj).lower().endswith(
                (".fits", ".fit", ".fits.gz", ".fts")) and os.path.isfile(obj):
            try:
                with fits.open(obj) as hdul:
                    _find_hpx_hdu(hdul, None)
                return True
            except Exception:
                return False
        return False

    def find_sources(self, obj, wcs=None, detector=None, mask=None, instrument=None,
                     energy_edges=None, **options):
        """Run `find_sources_healpix` (``wcs`` must be None: HEALPix has its own geometry)."""
        if wcs is not None:
            raise ValueError("a HEALPix cube carries its own geometry: do not pass wcs")
        options.pop("hdu", None)
        return find_sources_healpix(obj, detector=detector, mask=mask,
                                    energy_edges=energy_edges,
                                    instrument=instrument or "fermi-lat", **options)

    def __repr__(self):
        return "FermiHealpixAdapter()"

"""The `SkyImage` container and the normalisation of user input into it.

Every adapter turns what the user holds (arrays, FITS files, NDData, gammapy
maps) into a `SkyImage`; every detector reads one. Nothing else is passed
between the stages of the pipeline.
"""

import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import NDData
from astropy.wcs import WCS

from astro_asid.utils.exceptions import ASIDInputWarning

__all__ = ["SkyImage", "as_sky_image"]


@dataclass
class SkyImage:
    """A (possibly multi-band) image with its celestial WCS.

    Parameters
    ----------
    data : `~numpy.ndarray`
        Pixel values, shape ``(n_bands, ny, nx)``, float32, native byte order.
        Masked pixels hold NaN.
    wcs : `~astropy.wcs.WCS` or None
        Two-dimensional celestial WCS of the ``(ny, nx)`` plane.
    mask : `~numpy.ndarray`
        Boolean, shape ``(n_bands, ny, nx)``; True marks pixels to ignore.
    energy_edges : `~astropy.units.Quantity` or None
        ``n_bands + 1`` energy bin edges, for gamma-ray cubes.
    unit : `~astropy.units.UnitBase` or None
        Unit of ``data`` (counts for gamma-ray maps).
    instrument : str or None
        Instrument name (``"fermi-lat"``, ``"ctao"``, ``"optical"``...).
    exposure : `~numpy.ndarray` or `~astropy.units.Quantity` or None
        Exposure per band (``(n_bands,)`` or ``(n_bands, ny, nx)``), used to
        turn counts into photon flux.
    background : `~numpy.ndarray` or None
        Expected background per pixel, shape ``(n_bands, ny, nx)``, when known.
    noise : `~numpy.ndarray` or None
        1-sigma noise per pixel, shape ``(n_bands, ny, nx)``, when known (the
        optical adapter estimates it with the background).
    psf : dict or None
        Facts about the point-spread function, e.g. ``{"sigma_pix": [...]}``
        (Gaussian sigma in pixels per band).
    meta : dict
        Free-form metadata (FITS header, file name...).
    """

    data: np.ndarray
    wcs: WCS | None = None
    mask: np.ndarray | None = None
    energy_edges: u.Quantity | None = None
    unit: u.UnitBase | None = None
    instrument: str | None = None
    exposure: np.ndarray | u.Quantity | None = None
    background: np.ndarray | None = None
    noise: np.ndarray | None = None
    psf: dict | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mask is None:
            self.mask = ~np.isfinite(self.data)

    @property
    def n_bands(self):
        """Number of bands (energy bins or filters)."""
        return self.data.shape[0]

    @property
    def shape(self):
        """``(ny, nx)`` shape of one band."""
        return self.data.shape[1:]

    @property
    def mask2d(self):
        """Pixels masked in every band, shape ``(ny, nx)``."""
        return np.all(self.mask, axis=0)

    def filled(self, value=0.0):
        """Data with masked pixels replaced by ``value`` (a copy)."""
        return np.where(self.mask, np.float32(value), self.data)

    def band_sum(self):
        """Sum over bands with masked pixels as zero, shape ``(ny, nx)``."""
        return self.filled(0.0).sum(axis=0)

    def check_counts(self, detector_name="this detector"):
        """Raise `ValueError` unless the unmasked data are finite non-negative counts."""
        good = self.data[~self.mask]
        if good.size and np.nanmin(good) < 0:
            raise ValueError(
                f"{detector_name} needs counts, but the image has negative values "
                f"(min {np.nanmin(good):.3g}); subtract nothing from a counts map, or use a "
                "detector for background-subtracted images such as 'peaks' or 'dao'")

    def copy(self, **changes):
        """A shallow copy with some fields replaced."""
        return replace(self, **changes)


def _celestial_wcs(wcs, shape):
    """Return the 2-D celestial part of ``wcs`` after checking it fits ``shape``."""
    if wcs is None:
        return None
    if isinstance(wcs, fits.Header):
        wcs = WCS(wcs)
    if not isinstance(wcs, WCS):
        raise TypeError(f"wcs must be an astropy.wcs.WCS or a FITS header, not {type(wcs).__name__}")
    if not wcs.has_celestial:
        raise ValueError(
            f"the WCS is not celestial (axis types {list(wcs.wcs.ctype)}); astro_asid needs "
            "longitude/latitude axes such as RA---TAN/DEC--TAN or GLON-CAR/GLAT-CAR")
    cel = wcs.celestial
    if cel.naxis != 2:
        raise ValueError(f"the celestial WCS must have 2 axes, it has {cel.naxis}")
    if wcs.pixel_shape is not None and wcs.naxis == 2:
        nx, ny = wcs.pixel_shape
        if (ny, nx) != tuple(shape):
            raise ValueError(
                f"the WCS describes an image of shape (ny, nx) = {(ny, nx)} but the data "
                f"have shape {tuple(shape)}")
    return cel


def _from_fits(obj, hdu):
    """Return (data, header, meta) from a FITS path, HDUList or HDU."""
    meta = {}
    if isinstance(obj, (str, os.PathLike)):
        if not os.path.exists(obj):
            raise FileNotFoundError(f"no such FITS file: {obj}")
        meta["filename"] = os.fspath(obj)
        with fits.open(obj) as hdul:
            data, header = _from_fits(hdul, hdu)[:2]
        return data, header, meta
    if isinstance(obj, fits.HDUList):
        if hdu is None:
            candidates = [h for h in obj if h.is_image and h.data is not None
                          and np.ndim(h.data) >= 2]
            if not candidates:
                raise ValueError("the FITS file has no image HDU with 2 or more dimensions")
            obj = candidates[0]
        else:
            obj = obj[hdu]
    if not getattr(obj, "is_image", False):
        raise TypeError(f"HDU of type {type(obj).__name__} is not an image HDU")
    if obj.data is None:
        raise ValueError("the FITS HDU holds no data")
    # np.array copies out of the memmap, so the file can be closed afterwards
    return np.array(obj.data), obj.header.copy(), meta


def _unpack(image, wcs, hdu):
    """Split any supported input into (data, mask, wcs, unit, meta, energy_edges)."""
    mask = None
    unit = None
    meta = {}
    energy_edges = None
    header = None
    if isinstance(image, (str, os.PathLike, fits.HDUList)) or hasattr(image, "is_image"):
        image, header, meta = _from_fits(image, hdu)
        bunit = header.get("BUNIT")
        if bunit:
            try:
                unit = u.Unit(bunit, parse_strict="silent")
            except ValueError:
                unit = None
    elif isinstance(image, NDData):
        mask = image.mask
        unit = image.unit
        if wcs is None and image.wcs is not None:
            wcs = image.wcs
        meta = dict(image.meta)
        image = image.data
    elif hasattr(image, "geom") and hasattr(image, "data"):  # gammapy Map
        geom = image.geom
        if getattr(geom, "is_hpx", False):
            raise TypeError("HEALPix maps need the Fermi-LAT all-sky adapter "
                            "(astro_asid.instruments.fermi), not a plain image")
        if wcs is None:
            wcs = geom.wcs
        unit = image.unit
        axes = [ax for ax in geom.axes]
        if len(axes) == 1 and axes[0].name == "energy":
            energy_edges = axes[0].edges
        image = image.data
    if isinstance(image, u.Quantity):
        unit = image.unit
        image = image.value
    if np.ma.isMaskedArray(image):
        mask = np.ma.getmaskarray(image) if mask is None else (np.asarray(mask, bool)
                                                                | np.ma.getmaskarray(image))
        image = image.data
    if header is not None and wcs is None and any(
            header.get(f"CTYPE{i}") for i in range(1, header.get("NAXIS", 0) + 1)):
        wcs = WCS(header)
    return image, mask, wcs, unit, meta, energy_edges


def pixel_scale_deg(wcs):
    """The mean pixel scale (deg) of a celestial ``wcs``."""
    from astropy.wcs.utils import proj_plane_pixel_scales
    return float(np.mean(np.abs(proj_plane_pixel_scales(wcs.celestial))))


def pixel_scale_mismatch(wcs, scale_deg):
    """The mean pixel scale (deg) of ``wcs`` when it differs from ``scale_deg`` by
    more than a factor 1.25 (a model trained on one pixel size sees the PSF at the
    wrong size), else None; None too when either is unknown."""
    if wcs is None or not scale_deg:
        return None
    have = pixel_scale_deg(wcs)
    return None if 0.8 < have / scale_deg < 1.25 else have


def merge_mask(bad, mask, target):
    """``bad | mask`` with ``mask`` broadcast to ``bad``'s shape.

    Raises `TypeError` for a non-boolean mask and `ValueError` naming
    ``target`` (what the mask should match) for one that does not broadcast.
    """
    m = np.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"mask must be boolean, not dtype {m.dtype}")
    try:
        return bad | np.broadcast_to(m, bad.shape)
    except ValueError:
        raise ValueError(f"mask of shape {m.shape} does not match {target}") from None


#: The error for an input without a celestial WCS where a catalogue needs one.
NO_WCS_MESSAGE = ("no celestial WCS: pass wcs=... or a FITS file/HDU whose header has one "
                  "(for pixel-only work use astro_asid.ASIDStarFinder)")


def as_sky_image(image, wcs=None, *, mask=None, energy_edges=None, instrument=None,
                 hdu=None, require_wcs=True):
    """Normalise any supported input into a `SkyImage`.

    Parameters
    ----------
    image : array-like, `~astropy.units.Quantity`, `~numpy.ma.MaskedArray`, \
`~astropy.nddata.NDData`, str, path, `~astropy.io.fits.HDUList`, HDU, gammapy ``WcsNDMap``, \
or `SkyImage`
        A 2-D image ``(ny, nx)`` or a cube ``(n_bands, ny, nx)``.
    wcs : `~astropy.wcs.WCS` or `~astropy.io.fits.Header`, optional
        Celestial WCS; read from the input's header or ``.wcs`` when not given.
    mask : array-like of bool, optional
        True marks pixels to ignore; shape ``(ny, nx)`` or that of the cube.
    energy_edges : `~astropy.units.Quantity`, optional
        ``n_bands + 1`` energy edges.
    instrument : str, optional
        Instrument name stored on the result.
    hdu : int or str, optional
        HDU to read from a FITS file (default: the first image HDU with data).
    require_wcs : bool, optional
        Raise `ValueError` when no WCS can be found.

    Returns
    -------
    `SkyImage`

    Raises
    ------
    TypeError
        Unsupported input type, or a non-numeric array.
    ValueError
        Empty or all-NaN/all-masked images, more than 3 dimensions, a WCS that
        is not celestial or does not match the shape, inconsistent
        ``energy_edges`` or ``mask``.
    """
    if isinstance(image, SkyImage):
        return image
    data, in_mask, wcs, unit, meta, edges = _unpack(image, wcs, hdu)
    if hasattr(data, "__dask_graph__") and hasattr(data, "compute"):
        # a dask array is computed here; find_sources reads optical ones block by block
        data = np.asarray(data)
    if energy_edges is None:
        energy_edges = edges
    if isinstance(data, (list, tuple)):
        data = np.asarray(data)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"cannot make an image from an object of type {type(data).__name__}")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise TypeError(f"image data must be numeric, not dtype {data.dtype}")
    if np.iscomplexobj(data):
        raise TypeError("image data must be real, not complex")
    if data.size == 0:
        raise ValueError(f"the image is empty (shape {data.shape})")
    if data.ndim == 2:
        data = data[np.newaxis]
    elif data.ndim != 3:
        raise ValueError(
            f"the image must be 2-D (ny, nx) or a 3-D cube (n_bands, ny, nx); "
            f"it has {data.ndim} dimensions, shape {data.shape}")
    if min(data.shape[1:]) < 2:
        raise ValueError(f"each band must be at least 2x2 pixels, got shape {data.shape[1:]}")
    if data.dtype.itemsize > 4 or data.dtype.kind in "iu":
        finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise ValueError("image values exceed the float32 range (|value| > 3.4e38); "
                             "rescale the image")
    # astype gives float32 in native byte order, also for big-endian FITS data
    data = np.array(data, dtype=np.float32, copy=True)

    full_mask = ~np.isfinite(data)
    for m in (in_mask, mask):
        if m is None or m is False:
            continue
        full_mask = merge_mask(full_mask, m, f"the image shape {data.shape[1:]} or {data.shape}")
    if full_mask.all():
        raise ValueError("every pixel of the image is NaN, infinite or masked: nothing to search")
    n_inf = int(np.isinf(data).sum())
    if n_inf:
        warnings.warn(f"{n_inf} infinite pixel values were masked", ASIDInputWarning)
    data[full_mask] = np.nan

    wcs = _celestial_wcs(wcs, data.shape[1:])
    if wcs is None and require_wcs:
        raise ValueError(NO_WCS_MESSAGE)

    if energy_edges is not None:
        energy_edges = u.Quantity(energy_edges)
        if not energy_edges.unit.is_equivalent(u.GeV):
            raise ValueError(f"energy_edges must have energy units, not {energy_edges.unit!r}")
        if energy_edges.shape != (data.shape[0] + 1,):
            raise ValueError(f"{data.shape[0]} band(s) need {data.shape[0] + 1} energy edges, "
                             f"got {energy_edges.size}")
        if np.any(np.diff(energy_edges.value) <= 0):
            raise ValueError("energy_edges must increase strictly")
    return SkyImage(data=data, wcs=wcs, mask=full_mask, energy_edges=energy_edges, unit=unit,
                    instrument=instrument, meta=meta)

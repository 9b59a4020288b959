"""FITS images read section by section, as dask arrays.

A 20k x 20k float32 mosaic is 1.6 GB; reading it whole before the blocks
start would set the memory of `~astro_asid.find_sources`. `lazy_fits`
instead wraps the image HDU in a small picklable array-like
(`FitsSection`) whose slices open the file and read only the requested
rows and columns (``HDU.section``: plain and tile-compressed images alike),
so that each block reads its own region, in this process or on a dask worker.
Workers open the file by its path: on a cluster their machines must see the
same file system.
"""

import os
import warnings

import numpy as np

__all__ = ["FitsSection", "lazy_fits", "fits_image_pixels", "LAZY_CHUNK"]

#: Side (pixels) of the dask chunks of `lazy_fits`: a chunk is one section read.
LAZY_CHUNK = 1024


class FitsSection:
    """An array-like over one image HDU of a FITS file that reads sections on demand.

    Parameters
    ----------
    path : str or path
        The FITS file.
    index : int
        Index of the image HDU in the file.
    shape : tuple of int
        ``(ny, nx)`` of the HDU's data.
    mask : bool
        Read the HDU as a bad-pixel mask (non-zero is True) instead of float32 data.

    Notes
    -----
    Pickling keeps only the path, index and shape, never pixels, so a dask
    graph built on it is small however large the file is. The dask token
    includes the file's size and modification time.
    """

    def __init__(self, path, index, shape, mask=False):
        self.path = os.fspath(path)
        self.index = int(index)
        self.shape = tuple(int(s) for s in shape)
        self.mask = bool(mask)
        self.dtype = np.dtype(bool) if self.mask else np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        from astropy.io import fits

        with fits.open(self.path, memmap=True, lazy_load_hdus=True) as hdul:
            part = np.asarray(hdul[self.index].section[key])
        if self.mask:
            return part != 0
        # native float32 whatever the file's type (BZERO/BSCALE are applied by astropy)
        return part.astype(np.float32)

    def __dask_tokenize__(self):
        st = os.stat(self.path)
        return ("FitsSection", os.path.abspath(self.path), st.st_size, st.st_mtime_ns,
                self.index, self.shape, self.mask)

    def __repr__(self):
        what = "mask" if self.mask else "data"
        return f"FitsSection({self.path!r}, hdu={self.index}, shape={self.shape}, {what})"


def _is_2d_image(h):
    return getattr(h, "is_image", False) and h.header.get("NAXIS", 0) == 2


def _shape(h):
    return (int(h.header["NAXIS2"]), int(h.header["NAXIS1"]))


def _science_hdu(hdul, hdu=None):
    """``(index, hdu)`` of the image `lazy_fits` reads: ``hdu``, or the first 2-D image
    HDU that is not a bad-pixel extension (as
    `~astro_asid.instruments.optical.read_optical`); ValueError when there is none."""
    from astro_asid.instruments.optical import OPTICAL_MASK_EXTENSIONS

    if hdu is not None:
        if not _is_2d_image(hdul[hdu]):
            raise ValueError(f"HDU {hdu!r} is not a 2-D image")
        return hdul.index_of(hdu), hdul[hdu]
    for i, h in enumerate(hdul):
        if _is_2d_image(h) and (h.name or "").upper() not in OPTICAL_MASK_EXTENSIONS:
            return i, h
    raise ValueError("the FITS file has no 2-D image HDU with data")


def _mask_hdu(hdul):
    """``(index, hdu)`` of the first bad-pixel extension, or None."""
    from astro_asid.instruments.optical import OPTICAL_MASK_EXTENSIONS

    for i, h in enumerate(hdul):
        if _is_2d_image(h) and (h.name or "").upper() in OPTICAL_MASK_EXTENSIONS:
            return i, h
    return None


def fits_image_pixels(path, hdu=None):
    """Pixels of the image HDU `lazy_fits` would read (from the headers only),
    or None when ``path`` is not a FITS file with a 2-D image HDU."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            ny, nx = _shape(_science_hdu(hdul, hdu)[1])
            return ny * nx
    except (OSError, KeyError, IndexError, ValueError):
        return None


def lazy_fits(path, hdu=None, chunks=None):
    """A 2-D FITS image as dask arrays read section by section.

    Parameters
    ----------
    path : str or path
        The FITS file (plain or tile-compressed image HDUs).
    hdu : int or str, optional
        The science HDU; default: the first 2-D image HDU that is not a
        bad-pixel extension (as `~astro_asid.instruments.optical.read_optical`).
    chunks : int, optional
        Side of the dask chunks (pixels); default `LAZY_CHUNK`.

    Returns
    -------
    data : `dask.array.Array`
        float32 ``(ny, nx)``.
    header : `~astropy.io.fits.Header`
        The science HDU's header.
    mask : `dask.array.Array` of bool or None
        From a bad-pixel extension (``MASK``, ``BPM``, ``DQ``, ``FLAGS``,
        ``BADPIX``) of the same shape; one of another shape is ignored with a
        warning, as in `~astro_asid.instruments.optical.read_optical`.

    Raises
    ------
    FileNotFoundError, ValueError
        No such file, or no 2-D image HDU.
    """
    import dask.array as da
    from astropy.io import fits

    from astro_asid.utils.exceptions import ASIDInputWarning

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such FITS file: {path}")
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        try:
            index, h = _science_hdu(hdul, hdu)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        shape = _shape(h)
        header = h.header.copy()
        mask_src = None
        found = _mask_hdu(hdul)
        if found is not None:
            m_index, m = found
            if _shape(m) == shape:
                mask_src = FitsSection(path, m_index, shape, mask=True)
            else:
                warnings.warn(f"bad-pixel extension {m.name!r} has shape {_shape(m)}, the "
                              f"image {shape}: ignored", ASIDInputWarning)
    side = int(LAZY_CHUNK if chunks is None else chunks)
    chunks = (side, side)
    data = da.from_array(FitsSection(path, index, shape), chunks=chunks, asarray=False,
                         fancy=False, meta=np.empty((0, 0), np.float32))
    mask = None
    if mask_src is not None:
        mask = da.from_array(mask_src, chunks=chunks, asarray=False, fancy=False,
                             meta=np.empty((0, 0), bool))
    return data, header, mask


def reads_lazily(image, hdu=None):
    """Whether `~astro_asid.find_sources` reads optical ``image`` lazily: a FITS
    path whose image has more than ``astro_asid.conf.lazy_fits_pixels`` pixels
    (0 disables), with dask installed."""
    from astro_asid.config import conf

    limit = int(conf.lazy_fits_pixels)
    if limit <= 0 or not isinstance(image, (str, os.PathLike)) or not os.path.isfile(image):
        return False
    try:
        import dask.array  # noqa: F401
    except ImportError:
        return False
    n = fits_image_pixels(image, hdu)
    return n is not None and n > limit


def lazy_optical_image(path, wcs=None, mask=None, hdu=None, chunks=None):
    """An optical `~astro_asid.SkyImage` over a FITS file, with nothing read yet
    but the headers (see `lazy_fits`).

    Parameters
    ----------
    path : str or path
    wcs : `~astropy.wcs.WCS`, optional
        Default: the science HDU's celestial WCS.
    mask : array-like of bool, optional
        True marks pixels to ignore; combined with the file's bad-pixel extension.
    hdu : int or str, optional
    chunks : int, optional
        See `lazy_fits`.

    Returns
    -------
    `~astro_asid.SkyImage`
        ``data`` and ``mask`` dask arrays, ``meta`` with the header facts of
        `~astro_asid.instruments.optical.header_meta`; ready for
        `~astro_asid.instruments.optical.prepare_optical` with ``background=False``.
    """
    import dask.array as da
    from astropy.wcs import WCS

    from astro_asid.instruments.optical import header_meta
    from astro_asid.scale.lazy import is_dask_array, lazy_sky_image

    data, header, fmask = lazy_fits(path, hdu=hdu, chunks=chunks)
    if wcs is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header)
        wcs = w if w.has_celestial else None
    if mask is not None and fmask is not None:
        m = mask if is_dask_array(mask) else np.asarray(mask)
        if tuple(m.shape) != tuple(data.shape):
            raise ValueError(f"mask of shape {m.shape} does not match the image shape "
                             f"{data.shape}")
        mask = da.asarray(m, chunks=data.chunks) | fmask
    elif fmask is not None:
        mask = fmask
    sky = lazy_sky_image(data, wcs, mask=mask)
    return sky.copy(meta={**sky.meta, **header_meta(header)})

"""Dask arrays as input images, read block by block.

`~astro_asid.find_sources` with ``instrument="optical"`` and a
`dask.array.Array` builds a `~astro_asid.SkyImage` whose ``data`` and
``mask`` stay dask arrays (`lazy_sky_image`): only the region of one block is
computed at a time, in this process or on the cluster's workers. Every other
path computes the whole array first (`~astro_asid.as_sky_image` does).
"""

import numpy as np

__all__ = ["is_dask_array", "is_lazy", "lazy_sky_image", "materialize"]


def is_dask_array(obj):
    """Whether ``obj`` is a `dask.array.Array` (without importing dask)."""
    return type(obj).__name__ == "Array" and type(obj).__module__.startswith("dask.") \
        and hasattr(obj, "__dask_graph__")


def is_lazy(sky):
    """Whether ``sky``'s data is a dask array (made by `lazy_sky_image`)."""
    return is_dask_array(sky.data)


def lazy_sky_image(image, wcs=None, mask=None, instrument="optical", unit=None):
    """A `~astro_asid.SkyImage` over a 2-D dask array, with nothing computed.

    Parameters
    ----------
    image : `dask.array.Array`
        ``(ny, nx)`` (or ``(1, ny, nx)``) real numbers; read as float32.
    wcs : `~astropy.wcs.WCS` or `~astropy.io.fits.Header`
        Celestial WCS of the image (required).
    mask : array-like of bool, optional
        ``(ny, nx)``, numpy or dask; True marks pixels to ignore.
    instrument : str
        Stored on the result.
    unit : `~astropy.units.UnitBase`, optional
        Unit of the data.

    Returns
    -------
    `~astro_asid.SkyImage`
        ``data`` ``(1, ny, nx)`` float32 and ``mask`` (NaN, infinite or
        masked pixels) are dask arrays.

    Raises
    ------
    TypeError, ValueError
        Not numeric, not 2-D, smaller than 2 x 2, no celestial WCS, or a mask
        of another shape. Unlike `~astro_asid.as_sky_image`, an image with
        no valid pixel is not an error here (that would need reading it all):
        its catalog is empty.
    """
    import dask.array as da

    from astro_asid.core import SkyImage, _celestial_wcs

    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"a dask-array image must be 2-D (ny, nx); got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) \
            or np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"image data must be real numbers, not dtype {image.dtype}")
    if min(image.shape) < 2:
        raise ValueError(f"the image must be at least 2x2 pixels, got shape {image.shape}")
    data = image if image.dtype == np.float32 else image.astype(np.float32)
    bad = ~da.isfinite(data)
    if mask is not None:
        m = mask if is_dask_array(mask) else np.asarray(mask)
        if m.dtype != bool:
            raise TypeError(f"mask must be boolean, not dtype {m.dtype}")
        if tuple(m.shape) != tuple(data.shape):
            raise ValueError(f"mask of shape {m.shape} does not match the image shape "
                             f"{data.shape}")
        bad = bad | da.asarray(m, chunks=data.chunks)
    wcs = _celestial_wcs(wcs, data.shape)
    if wcs is None:
        raise ValueError("no celestial WCS: pass wcs=... with a dask-array image")
    return SkyImage(data=data[np.newaxis], wcs=wcs, mask=bad[np.newaxis],
                    instrument=instrument, unit=unit)


def materialize(sky):
    """``sky`` with its dask arrays computed: an ordinary `~astro_asid.SkyImage`
    (normalised by `~astro_asid.as_sky_image`)."""
    from astro_asid.core import as_sky_image

    if not is_lazy(sky):
        return sky
    data, mask = (np.asarray(a) for a in (sky.data, sky.mask))
    out = as_sky_image(data, sky.wcs, mask=mask, instrument=sky.instrument)
    return out.copy(unit=sky.unit, meta=dict(sky.meta))

"""The optical adapter: FITS images + WCS -> a `~astro_asid.SkyImage` with
background and noise maps, ready for `asid-optical` and the classical finders.

What it handles
---------------
- FITS files, HDU lists and HDUs: the first 2-D image HDU with data when no
  ``hdu`` is given (tile-compressed ``CompImageHDU`` included), big-endian
  and integer data (``BZERO``/``BSCALE`` applied by astropy), NaN or
  infinite borders (masked), a bad-pixel extension (``MASK``, ``BPM``,
  ``DQ``, ``FLAGS``: non-zero is bad) and the ``SATURATE`` keyword (pixels at
  or above it are flagged in ``meta["saturated"]``; they stay in the image,
  since a saturated star is still a star).
- Raw CCD frames: pixels outside the header's ``TRIMSEC`` (else ``DATASEC``),
  the IRAF data section ``[x1:x2,y1:y2]`` (1-based, inclusive), are masked,
  so overscan and pre-scan strips are not searched; pixel coordinates stay
  those of the file.
- Background and noise with photutils `~photutils.background.Background2D`
  (sigma-clipped SExtractor mode estimator, MAD-std noise, a median filter
  over the boxes): ``SkyImage.background`` and ``SkyImage.noise``.
- Header facts (``GAIN``, ``RDNOISE``, ``SATURATE``, ``MAGZP``/``ZP``/``PHOTZP``,
  ``SEEING``) copied into ``meta`` under lower-case names.
"""

import warnings

import numpy as np

from astro_asid.utils.exceptions import ASIDInputWarning

__all__ = ["estimate_background", "prepare_optical", "read_optical", "section_mask",
           "snr_image", "OPTICAL_MASK_EXTENSIONS", "HEADER_KEYS", "SECTION_KEYS"]

#: Extension names read as bad-pixel masks (non-zero = bad).
OPTICAL_MASK_EXTENSIONS = ("MASK", "BPM", "DQ", "FLAGS", "BADPIX")

#: Header keyword -> meta key (first one present wins).
HEADER_KEYS = {"GAIN": "gain", "EGAIN": "gain", "RDNOISE": "read_noise", "READNOIS": "read_noise",
               "SATURATE": "saturate", "MAGZP": "zeropoint", "ZP": "zeropoint",
               "PHOTZP": "zeropoint", "MAGZERO": "zeropoint", "SEEING": "seeing_px"}


def estimate_background(data, mask=None, box_size=64, filter_size=3):
    """Background and noise maps of a 2-D image with photutils `Background2D`.

    Parameters
    ----------
    data : `~numpy.ndarray`
        ``(ny, nx)`` image; NaN pixels are ignored.
    mask : `~numpy.ndarray` of bool, optional
        True marks pixels to ignore.
    box_size : int
        Box side (pixels); reduced for images smaller than two boxes.
    filter_size : int
        Median filter over the grid of boxes.

    Returns
    -------
    background, noise : `~numpy.ndarray`
        float32 ``(ny, nx)`` maps; the noise is strictly positive.

    Raises
    ------
    ValueError
        Too few valid pixels to estimate a background.
    """
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MADStdBackgroundRMS, SExtractorBackground

    data = np.asarray(data, np.float32)
    if data.ndim != 2:
        raise ValueError(f"estimate_background needs a 2-D image, got shape {data.shape}")
    bad = ~np.isfinite(data)
    if mask is not None:
        bad = bad | np.asarray(mask, bool)
    if (~bad).sum() < 16:
        raise ValueError("fewer than 16 valid pixels: cannot estimate the background")
    ny, nx = data.shape
    box = int(max(4, min(box_size, ny // 2 or 1, nx // 2 or 1)))
    filt = int(filter_size) if min(ny, nx) // box >= filter_size else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            bkg = Background2D(np.where(bad, 0.0, data), (box, box), mask=bad,
                               filter_size=(filt, filt), sigma_clip=SigmaClip(sigma=3.0),
                               bkg_estimator=SExtractorBackground(),
                               bkg_rms_estimator=MADStdBackgroundRMS(), exclude_percentile=50.0)
            back, rms = bkg.background, bkg.background_rms
        except ValueError:
            # every box too masked (e.g. a thin valid strip): one global estimate
            good = data[~bad]
            med = np.median(good)
            back = np.full(data.shape, med)
            rms = np.full(data.shape, 1.4826 * np.median(np.abs(good - med)))
    back = np.asarray(back, np.float32)
    rms = np.asarray(rms, np.float32)
    floor = np.float32(max(np.nanmedian(rms[~bad]) * 1e-3 if (~bad).any() else 0.0, 1e-12))
    rms = np.where(np.isfinite(rms) & (rms > floor), rms, floor).astype(np.float32)
    if not np.all(np.isfinite(back)):
        back = np.where(np.isfinite(back), back, np.nanmedian(back)).astype(np.float32)
    return back, rms


def snr_image(image, box_size=64, return_noise=False):
    """``(data - background) / noise`` of a `SkyImage` (band-summed), masked pixels 0.

    Uses ``image.background``/``image.noise`` when set, else estimates them
    (`estimate_background`). Returns float32 ``(ny, nx)``, and the noise map
    when ``return_noise``.
    """
    data = image.filled(np.nan)
    if image.n_bands > 1:
        data = np.nansum(data, axis=0)
    else:
        data = data[0]
    bad = image.mask2d
    if image.background is not None and image.noise is not None:
        back = np.asarray(image.background, np.float32).reshape(-1, *image.shape).sum(axis=0)
        noise = np.sqrt((np.asarray(image.noise, np.float32).reshape(-1, *image.shape) ** 2)
                        .sum(axis=0))
    else:
        back, noise = estimate_background(data, bad, box_size=box_size)
    out = (data - back) / noise
    out[bad | ~np.isfinite(out)] = 0.0
    out = out.astype(np.float32)
    return (out, noise) if return_noise else out


#: Header keywords of the useful part of a raw frame, in order of preference.
SECTION_KEYS = ("TRIMSEC", "DATASEC")


def section_mask(header, shape):
    """Pixels outside the header's data section (`SECTION_KEYS`), or None.

    Parameters
    ----------
    header : `~astropy.io.fits.Header`
    shape : tuple
        ``(ny, nx)`` of the image.

    Returns
    -------
    mask : `~numpy.ndarray` of bool or None
        True outside the section ``[x1:x2,y1:y2]`` (FITS 1-based, inclusive);
        None when the header has no section, or one that covers the whole
        image. A section that cannot be read, or lies outside the image, is
        ignored with an `~astro_asid.utils.exceptions.ASIDInputWarning`.
    """
    import re

    for key in SECTION_KEYS:
        if key not in header:
            continue
        text = str(header[key])
        m = re.fullmatch(r"\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*", text)
        ny, nx = shape
        if m is None:
            warnings.warn(f"{key} = {text!r} is not a section [x1:x2,y1:y2]: ignored",
                          ASIDInputWarning)
            return None
        x1, x2, y1, y2 = map(int, m.groups())
        if not (1 <= x1 <= x2 <= nx and 1 <= y1 <= y2 <= ny):
            warnings.warn(f"{key} = {text!r} does not fit the {nx}x{ny} image: ignored",
                          ASIDInputWarning)
            return None
        if (x1, x2, y1, y2) == (1, nx, 1, ny):
            return None
        mask = np.ones(shape, bool)
        mask[y1 - 1:y2, x1 - 1:x2] = False
        return mask
    return None


def _mask_extension(hdul):
    for h in hdul:
        if h.name.upper() in OPTICAL_MASK_EXTENSIONS and getattr(h, "is_image", False) \
                and h.data is not None:
            return np.asarray(h.data) != 0, h.name
    return None, None


def read_optical(source, hdu=None):
    """Read an optical image from FITS: data, header, bad-pixel mask.

    Parameters
    ----------
    source : str, path, `~astropy.io.fits.HDUList` or image HDU
    hdu : int or str, optional
        The science HDU (default: the first 2-D image HDU with data that is
        not a mask extension).

    Returns
    -------
    data : `~numpy.ndarray`
        float32, native byte order, ``(ny, nx)``.
    header : `~astropy.io.fits.Header`
    mask : `~numpy.ndarray` of bool or None
        From a bad-pixel extension of the same shape, when there is one, and
        the pixels outside the header's data section (`section_mask`).
    """
    import os

    from astropy.io import fits

    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"no such FITS file: {source}")
        with fits.open(source) as hdul:
            return read_optical(hdul, hdu)
    mask = None
    if isinstance(source, fits.HDUList):
        if hdu is None:
            sci = [h for h in source if getattr(h, "is_image", False) and h.data is not None
                   and np.ndim(h.data) == 2 and h.name.upper() not in OPTICAL_MASK_EXTENSIONS]
            if not sci:
                raise ValueError("the FITS file has no 2-D image HDU with data")
            obj = sci[0]
        else:
            obj = source[hdu]
        mask, name = _mask_extension(source)
        if mask is not None and mask.shape != np.shape(obj.data):
            warnings.warn(f"bad-pixel extension {name!r} has shape {mask.shape}, the image "
                          f"{np.shape(obj.data)}: ignored", ASIDInputWarning)
            mask = None
    else:
        obj = source
    if not getattr(obj, "is_image", False) or obj.data is None:
        raise ValueError(f"HDU {getattr(obj, 'name', '?')!r} holds no image data")
    data = np.asarray(obj.data)
    if data.ndim != 2:
        raise ValueError(f"optical images must be 2-D, the HDU has shape {data.shape}")
    outside = section_mask(obj.header, data.shape)
    if outside is not None:
        mask = outside if mask is None else (mask | outside)
    return np.array(data, dtype=np.float32), obj.header.copy(), mask


def header_meta(header):
    """Detector facts from a FITS header (see `HEADER_KEYS`)."""
    meta = {}
    for key, name in HEADER_KEYS.items():
        if name not in meta and key in header:
            try:
                meta[name] = float(header[key])
            except (TypeError, ValueError):
                continue
    return meta


def prepare_optical(image, wcs=None, mask=None, hdu=None, box_size=64, require_wcs=True,
                    background=True):
    """An optical `~astro_asid.SkyImage` with background and noise maps.

    Parameters
    ----------
    image : str, path, HDUList, HDU, array, NDData or `SkyImage`
    wcs : `~astropy.wcs.WCS`, optional
    mask : array-like of bool, optional
    hdu : int or str, optional
    box_size : int
        `estimate_background` box.
    require_wcs : bool
        False allows pixel-only work.
    background : bool
        Estimate the background and noise maps (when the image has none).
        False leaves them to the detector, which can then estimate them block
        by block (`astro_asid.instruments.optical_blocks`).

    Returns
    -------
    `~astro_asid.SkyImage`
        ``instrument="optical"``, ``background`` and ``noise`` set (with ``background``),
        ``meta["saturated"]`` (bool map) when the header gives ``SATURATE``.
    """
    import os

    from astropy.io import fits

    from astro_asid.core import SkyImage, as_sky_image

    header = None
    if isinstance(image, (str, os.PathLike, fits.HDUList)) or hasattr(image, "is_image"):
        data, header, fmask = read_optical(image, hdu)
        if fmask is not None:
            mask = fmask if mask is None else (np.asarray(mask, bool) | fmask)
        if wcs is None:
            from astropy.wcs import WCS
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = WCS(header)
            wcs = w if w.has_celestial else None
        image = data
    if isinstance(image, SkyImage):
        sky = image
        if mask is not None:
            from astro_asid.core import merge_mask
            full = merge_mask(sky.mask, mask, f"the image shape {sky.shape} or {sky.data.shape}")
            sky = sky.copy(mask=full, data=np.where(full, np.float32(np.nan), sky.data))
    else:
        sky = as_sky_image(image, wcs, mask=mask, require_wcs=require_wcs)
    if sky.n_bands != 1:
        raise ValueError(f"optical images are 2-D; got {sky.n_bands} bands (pass one filter)")
    meta = dict(sky.meta)
    if header is not None:
        meta.update(header_meta(header))
    data = sky.data[0]
    if "saturate" in meta:
        meta["saturated"] = np.isfinite(data) & (data >= meta["saturate"])
    back, noise = (sky.background, sky.noise)
    if background and (back is None or noise is None):
        back, noise = estimate_background(data, sky.mask2d, box_size=box_size)
        back, noise = back[np.newaxis], noise[np.newaxis]
    return sky.copy(instrument="optical", background=back, noise=noise, meta=meta)

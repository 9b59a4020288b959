"""`find_sources`: the one call that turns an image into a source catalog."""

import numpy as np

from astro_asid import __version__
from astro_asid.catalog import build_catalog, validate_candidates, validate_catalog
from astro_asid.config import conf
from astro_asid.core import as_sky_image
from astro_asid.detection.base import Detector
from astro_asid.plugins.manager import get_registry, instantiate_detector
from astro_asid.utils.exceptions import PluginError

__all__ = ["find_sources", "default_detector_name"]

# preferred detectors per instrument, best first; the first registered one is used
_PREFERRED = {
    "fermi-lat": ("asid-unet", "tsmap"),
    None: ("peaks",),
}


def default_detector_name(instrument=None):
    """The detector `find_sources` uses when none is given."""
    if conf.default_detector != "auto":
        return conf.default_detector
    reg = get_registry().detectors
    for name in _PREFERRED.get(instrument, ()) + _PREFERRED[None]:
        if name in reg:
            return name
    raise RuntimeError("no detector is registered")


def _resolve_detector(detector, instrument, options):
    reg = get_registry().detectors
    if isinstance(detector, Detector):
        if options:
            raise TypeError("options cannot be combined with a Detector instance; "
                            "set them when creating it")
        origin = reg.origin(detector.name) if detector.name in reg else type(detector).__module__
        return detector, origin
    if detector is None:
        detector = default_detector_name(instrument)
    if not isinstance(detector, str):
        raise TypeError(f"detector must be a name or a Detector instance, not "
                        f"{type(detector).__name__}")
    cls = reg.get(detector)
    return instantiate_detector(cls, options), reg.origin(detector)


def find_sources(image, wcs=None, *, detector=None, mask=None, instrument=None,
                 energy_edges=None, hdu=None, **options):
    """Find sources in an image and return a catalog.

    Parameters
    ----------
    image : array-like, `~astropy.units.Quantity`, `~numpy.ma.MaskedArray`, \
`~astropy.nddata.NDData`, str, path, `~astropy.io.fits.HDUList`, HDU, or `~astro_asid.SkyImage`
        A 2-D image or a ``(n_bands, ny, nx)`` cube (e.g. counts in energy bands).
    wcs : `~astropy.wcs.WCS`, optional
        Celestial WCS; taken from the input's header when not given.
    detector : str or `~astro_asid.detection.Detector`, optional
        Registered detector name (see `~astro_asid.list_detectors`) or an
        instance. Default: the best registered detector for ``instrument``.
    mask : array-like of bool, optional
        True marks pixels to ignore.
    instrument : str, optional
        ``"fermi-lat"``, ``"ctao"``, ``"optical"``... (sets defaults and class names).
    energy_edges : `~astropy.units.Quantity`, optional
        ``n_bands + 1`` energy bin edges of a gamma-ray cube.
    hdu : int or str, optional
        HDU to read from a FITS file.
    **options
        Passed to the detector's constructor.

    Returns
    -------
    catalog : `~astropy.table.QTable`
        One row per source, sorted by decreasing ``score``, with the columns
        of `astro_asid.catalog.CATALOG_COLUMNS`; zero rows (same columns)
        when nothing is found.

    Raises
    ------
    ValueError, TypeError
        Bad input (see `~astro_asid.as_sky_image`), unknown detector names,
        or negative/non-finite values for a detector that needs counts.
    `~astro_asid.utils.exceptions.PluginError`
        The detector returned output that breaks the catalog schema; the
        message names the detector and the package it came from.
    """
    if options.get("nside") is not None:
        # a bare (n_bands, npix) HEALPix array: only its nside says what it is
        from astro_asid.instruments.fermi import find_sources_healpix

        return find_sources_healpix(image, detector=detector, mask=mask,
                                    energy_edges=energy_edges, **options)
    regs = get_registry()
    for name in regs.adapters.names():
        adapter = regs.adapters.get(name)
        if adapter.accepts(image):
            return adapter.find_sources(image, wcs=wcs, detector=detector, mask=mask,
                                        instrument=instrument, energy_edges=energy_edges,
                                        **options)
    sky = as_sky_image(image, wcs, mask=mask, energy_edges=energy_edges, instrument=instrument,
                       hdu=hdu)
    if instrument is not None:
        sky = sky.copy(instrument=instrument)
    det, origin = _resolve_detector(detector, sky.instrument, options)
    if det.needs_counts:
        sky.check_counts(f"detector {det.name!r}")
    where = f"detector {det.name!r} (from {origin})"
    try:
        raw = det.detect(sky)
    except (ValueError, TypeError):
        raise  # documented input errors pass through unchanged
    except Exception as exc:
        raise PluginError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
    cands = validate_candidates(raw, sky.shape, origin=where)
    if len(cands):
        # a detector must not report sources in pixels the user masked out
        ix = np.clip(np.round(np.asarray(cands["x_centroid"], float)).astype(int), 0,
                     sky.shape[1] - 1)
        iy = np.clip(np.round(np.asarray(cands["y_centroid"], float)).astype(int), 0,
                     sky.shape[0] - 1)
        cands = cands[~sky.mask2d[iy, ix]]
    meta = {
        "detector": det.name,
        "detector_origin": origin,
        "detector_options": {k: repr(v) for k, v in det.options.items()},
        "astro_asid_version": __version__,
    }
    for key in ("model_name", "model_sha256"):
        if hasattr(det, key) and getattr(det, key) is not None:
            meta[key] = getattr(det, key)
    cat = build_catalog(cands, sky, meta=meta)
    try:
        validate_catalog(cat)
    except ValueError as exc:
        raise PluginError(f"{where} produced an invalid catalog: {exc}") from exc
    return cat

"""`find_sources`: the one call that turns an image into a source catalog."""

import numpy as np

from astro_asid import __version__
from astro_asid.characterize.apply import characterize_candidates, characterizer_meta
from astro_asid.catalog import build_catalog, validate_candidates, validate_catalog
from astro_asid.config import conf
from astro_asid.core import NO_WCS_MESSAGE, _celestial_wcs, as_sky_image, pixel_scale_mismatch
from astro_asid.detection.base import Detector
from astro_asid.plugins.manager import get_registry, instantiate_detector
from astro_asid.utils.exceptions import PluginError

__all__ = ["find_sources", "default_detector_name"]

# preferred detectors per instrument, best first; the first registered one is used
_PREFERRED = {
    "fermi-lat": ("asid-unet", "tsmap"),
    "ctao": ("asid-ctao", "tsmap"),
    "optical": ("asid-optical", "dao"),
    None: ("peaks",),
}


def fits_image(cls, image):
    """Whether detector class ``cls`` can run on ``image`` as a default choice:
    counts for detectors that need them, and for deep detectors the bands and
    pixel scale their model was trained on."""
    from astropy import units as u

    from astro_asid.detection.deep import DeepDetector

    if getattr(cls, "needs_counts", False):
        if image.unit is not None and not u.Unit(image.unit).is_equivalent(u.ct):
            return False
    if not (isinstance(cls, type) and issubclass(cls, DeepDetector)):
        return True
    try:
        card = cls().card
    except Exception:  # missing or broken weights: not a usable default
        return False
    if image.n_bands not in (int(card.get("n_bands", image.n_bands)), 1):
        return False
    return pixel_scale_mismatch(image.wcs, card.get("pixel_scale_deg")) is None


def default_detector_name(instrument=None, image=None):
    """The detector `find_sources` uses when none is given (the first preferred
    one for ``instrument`` that is registered and, when ``image`` is given, fits it)."""
    if conf.default_detector != "auto":
        return conf.default_detector
    reg = get_registry().detectors
    for name in _PREFERRED.get(instrument, ()) + _PREFERRED[None]:
        if name in reg and (image is None or fits_image(reg.get(name), image)):
            return name
    raise RuntimeError("no detector is registered")


def _resolve_detector(detector, instrument, options, image=None):
    reg = get_registry().detectors
    if isinstance(detector, Detector):
        if options:
            raise TypeError("options cannot be combined with a Detector instance; "
                            "set them when creating it")
        origin = reg.origin(detector.name) if detector.name in reg else type(detector).__module__
        return detector, origin
    if detector is None:
        detector = default_detector_name(instrument, image)
    if not isinstance(detector, str):
        raise TypeError(f"detector must be a name or a Detector instance, not "
                        f"{type(detector).__name__}")
    cls = reg.get(detector)
    return instantiate_detector(cls, options), reg.origin(detector)


def find_sources(image, wcs=None, *, detector=None, mask=None, instrument=None,
                 energy_edges=None, hdu=None, characterize=None, scheduler=None, workers=None,
                 progress=False, **options):
    """Find sources in an image and return a catalog.

    Parameters
    ----------
    image : array-like, `~astropy.units.Quantity`, `~numpy.ma.MaskedArray`, \
`~astropy.nddata.NDData`, str, path, `~astropy.io.fits.HDUList`, HDU, or `~astro_asid.SkyImage`
        A 2-D image or a ``(n_bands, ny, nx)`` cube (e.g. counts in energy bands).
        A 2-D `dask.array.Array` with ``instrument="optical"`` is read block
        by block (other paths compute it whole first).
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
    characterize : None, bool, str or `~astro_asid.characterize.Characterizer`, optional
        Characterisation of the candidates (refined positions with calibrated
        errors, fluxes, ``source_prob`` and classes, see
        `astro_asid.characterize`): by default the characteriser shipped for
        the instrument, when there is one and it fits the image (else
        ``meta["characterizer_skipped"]`` says why); ``False`` skips it (faster; those
        columns stay masked unless the detector fills them); ``True``
        requires it; a weights path or an instance uses that model.
    scheduler : None, str or `distributed.Client`, optional
        Where the independent tasks of the image run (see :doc:`/scale`): the
        blocks of an optical image with a block-capable detector
        (``asid-optical``), the tiles of an all-sky HEALPix map, or else the
        *patches* of the image (any other detector: ``asid-ctao`` on a gammapy
        map or dataset, ``tsmap``, ``peaks``, ``dao``...; cores of
        ``astro_asid.conf.patch_size`` pixels, see
        `~astro_asid.scale.patches.find_in_patches`). ``"serial"``: in this
        process; ``"processes"``: on a local dask cluster of ``workers``
        single-threaded processes, started for this call;
        ``"tcp://host:port"`` or a ``Client``: an existing cluster. None
        (default) is serial, except for optical images larger than
        ``astro_asid.conf.auto_cluster_pixels`` with a block-capable detector
        on a machine with enough CPUs, which get a local cluster. Images that
        are not cut into blocks or tiles run whole, in one pass, when they run
        in this process and have at most ``conf.patch_pixels`` pixels, and in
        patches otherwise. The catalog does not depend on where the tasks run.
        Needs dask.distributed (``pip install 'astro-asid[scale]'``).
    workers : int, optional
        Processes of the local cluster; alone, it implies ``scheduler="processes"``.
    progress : bool, optional
        Show a progress bar over the blocks, tiles or patches.
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
        negative/non-finite values for a detector that needs counts, or a
        dask ``scheduler`` for the input of a plugin adapter that cannot run
        on dask.
    ImportError
        A dask ``scheduler`` without dask.distributed installed.
    `~astro_asid.scale.SchedulerError`
        The dask cluster could not be reached or lost a task for good.
    `~astro_asid.utils.exceptions.PluginError`
        The detector returned output that breaks the catalog schema; the
        message names the detector and the package it came from.
    """
    from astro_asid.scale.scheduler import check_scheduler, is_serial

    plan = check_scheduler(scheduler, workers)

    def serial_only(what):
        if not is_serial(plan):
            raise ValueError(f"scheduler={scheduler!r}, workers={workers!r}: {what} runs "
                             "in this process (leave scheduler/workers unset)")

    if options.get("nside") is not None:
        # a bare (n_bands, npix) HEALPix array: only its nside says what it is
        from astro_asid.instruments.fermi import find_sources_healpix

        return find_sources_healpix(image, detector=detector, mask=mask,
                                    energy_edges=energy_edges, characterize=characterize,
                                    scheduler=scheduler, workers=workers, progress=progress,
                                    **options)
    regs = get_registry()
    for name in regs.adapters.names():
        adapter = regs.adapters.get(name)
        if adapter.accepts(image):
            if getattr(adapter, "supports_scheduler", False):
                # the adapter runs its own tiles as tasks (e.g. all-sky HEALPix maps)
                options.update(scheduler=scheduler, workers=workers, progress=progress)
            else:
                serial_only(f"an input of the {name!r} adapter (it does not declare "
                            "supports_scheduler)")
            return adapter.find_sources(image, wcs=wcs, detector=detector, mask=mask,
                                        instrument=instrument, energy_edges=energy_edges,
                                        characterize=characterize, **options)
    from astro_asid.scale.lazy import is_dask_array, materialize

    if instrument == "optical":
        # FITS header facts (gain, saturation, zero point), background and noise maps
        from astro_asid.instruments.optical import prepare_optical
        from astro_asid.scale.fits_sections import lazy_optical_image, reads_lazily
        if reads_lazily(image, hdu):
            # a large FITS file: read section by section in the blocks
            image, mask, hdu = lazy_optical_image(image, wcs, mask=mask, hdu=hdu), None, None
        elif is_dask_array(image):
            # read block by block later (computed whole if the detector has no blocks)
            from astro_asid.scale.lazy import lazy_sky_image
            image, mask = lazy_sky_image(image, wcs, mask=mask), None
        # background and noise later: block by block when the detector can
        sky = prepare_optical(image, wcs, mask=mask, hdu=hdu, background=False)
    else:
        sky = as_sky_image(image, wcs, mask=mask, energy_edges=energy_edges,
                           instrument=instrument, hdu=hdu)
    if instrument is not None:
        sky = sky.copy(instrument=instrument)
    if sky.wcs is None:
        # a SkyImage made without one: the catalogue's sky positions need it
        if wcs is None:
            raise ValueError(NO_WCS_MESSAGE)
        sky = sky.copy(wcs=_celestial_wcs(wcs, sky.shape))
    det, origin = _resolve_detector(detector, sky.instrument, options, sky)
    if sky.instrument is None and tuple(det.instruments) == ("optical",):
        from astro_asid.instruments.optical import prepare_optical
        sky = prepare_optical(sky, background=False)
    if sky.instrument == "optical":
        from astro_asid.instruments.optical_blocks import find_in_blocks, supports_blocks
        from astro_asid.scale.scheduler import SchedulerError
        if supports_blocks(det):
            where = f"detector {det.name!r} (from {origin})"
            try:
                cands = find_in_blocks(sky, det, characterize, origin_name=where,
                                       scheduler=scheduler, workers=workers,
                                       progress=progress)
            except (ValueError, TypeError, SchedulerError):
                raise
            except Exception as exc:
                raise PluginError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
            return _catalog(cands, sky, det, origin, where)
        sky = materialize(sky)
        if sky.background is None or sky.noise is None:
            from astro_asid.instruments.optical import prepare_optical
            sky = prepare_optical(sky)
    if det.needs_counts:
        sky.check_counts(f"detector {det.name!r}")
    where = f"detector {det.name!r} (from {origin})"
    patch_limit = int(conf.patch_pixels)
    if not is_serial(plan) or 0 < patch_limit < int(np.prod(sky.shape)):
        # patches as tasks: on dask, or an image too large for one pass
        from astro_asid.scale.patches import find_in_patches
        from astro_asid.scale.scheduler import SchedulerError
        try:
            cands = find_in_patches(sky, det, characterize, origin_name=where,
                                    scheduler=scheduler, workers=workers, progress=progress)
        except (ValueError, TypeError, PluginError, SchedulerError):
            raise
        except Exception as exc:
            raise PluginError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        return _catalog(cands, sky, det, origin, where)
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
    cands = characterize_candidates(characterize, sky, cands, detector=det.name)
    return _catalog(cands, sky, det, origin, where)


def _catalog(cands, sky, det, origin, where):
    """The validated catalog of characterised candidates."""
    meta = {
        "detector": det.name,
        "detector_origin": origin,
        "detector_options": {k: repr(v) for k, v in det.options.items()},
        "astro_asid_version": __version__,
    }
    for key in ("model_name", "model_sha256"):
        if hasattr(det, key) and getattr(det, key) is not None:
            meta[key] = getattr(det, key)
    meta.update(characterizer_meta(cands))
    for key in ("n_blocks", "n_patches", "patch_duplicates", "scheduler", "scales",
                "extended_search"):
        if key in cands.meta:
            meta[key] = cands.meta[key]
    cat = build_catalog(cands, sky, meta=meta)
    try:
        validate_catalog(cat)
    except ValueError as exc:
        raise PluginError(f"{where} produced an invalid catalog: {exc}") from exc
    return cat

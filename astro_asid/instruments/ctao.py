"""gammapy maps and datasets (CTAO and other IACTs) <-> astro_asid.

- `find_sources_gammapy`: a catalog from a gammapy ``WcsNDMap`` counts cube or
  a ``MapDataset``. From a dataset it uses the predicted background
  (``dataset.npred()``: the background model plus any models already set, so
  only new sources are searched), the fit/safe masks, the exposure (counts ->
  photon flux) and the PSF (its 68% containment radius per band, as a
  Gaussian sigma in pixels), so the ``tsmap`` detector runs in "oracle" mode.
- `to_gammapy_models`: a catalog -> gammapy `~gammapy.modeling.models.Models`
  of ``SkyModel(PointSpatialModel or GaussianSpatialModel,
  PowerLawSpectralModel)`` with starting values from the catalog, ready for
  `~gammapy.modeling.Fit`.
- `ASIDSourceEstimator`: the same as a gammapy estimator,
  ``ASIDSourceEstimator(detector="tsmap").run(dataset)``.
- `GammapyMapAdapter`: lets `astro_asid.find_sources` dispatch gammapy
  WCS maps and datasets here.
"""

import warnings

import numpy as np
from astropy import units as u
from astropy.utils.masked import Masked

from astro_asid.core import SkyImage, as_sky_image
from astro_asid.instruments.fermi import _GAUSS_R68, _blas_limit, _power_law_photon_fractions
from astro_asid.utils.exceptions import ASIDWarning

try:  # gammapy is optional for the rest of the package
    from gammapy.estimators.core import Estimator as _EstimatorBase
except ImportError:  # pragma: no cover
    _EstimatorBase = object

__all__ = ["dataset_to_sky_image", "map_to_sky_image", "find_sources_gammapy",
           "to_gammapy_models", "ASIDSourceEstimator", "GammapyMapAdapter"]

_FLUX_UNIT = u.Unit("cm-2 s-1")
_EXPOSURE_UNIT = u.Unit("cm2 s")


def _is_gammapy(obj, *names):
    """True when ``obj`` is an instance of a gammapy class (without importing gammapy)."""
    mod = type(obj).__module__ or ""
    return mod.startswith("gammapy") and any(
        cls.__name__ in names for cls in type(obj).__mro__)


def _energy_edges(geom):
    """Reconstructed-energy edges of a map geometry, or None."""
    axes = list(geom.axes)
    if not axes:
        return None
    if len(axes) > 1 or axes[0].name != "energy":
        raise ValueError(f"the map must have no axis or one 'energy' axis, it has "
                         f"{[a.name for a in axes]}")
    return axes[0].edges


def _band_centres(edges):
    return np.sqrt(edges[:-1] * edges[1:])


def _pixel_scale_deg(geom):
    return float(np.mean(np.abs(geom.to_image().pixel_scales.to_value(u.deg))))


def _psf_sigma_pix(psf_map, geom, edges):
    """Gaussian sigma (pixels) per band from a gammapy PSFMap at the map centre."""
    centre = geom.center_skydir
    if edges is None:
        raise ValueError("a PSF per band needs the map's energy axis")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "outside valid IRF map range" for coarse IRF maps
        r68 = psf_map.containment_radius(0.68, energy_true=_band_centres(edges),
                                         position=centre)
    sigma = np.atleast_1d(u.Quantity(r68).to_value(u.deg)) / _GAUSS_R68
    return sigma / _pixel_scale_deg(geom)


def _exposure_per_band(exposure, geom, edges):
    """Exposure (cm2 s) at the band centres, on the counts geometry: (n_bands, ny, nx)."""
    coords = geom.to_image().get_coord()
    centres = _band_centres(edges)
    names = [a.name for a in exposure.geom.axes]
    if not names:
        values = exposure.interp_by_coord({"skycoord": coords.skycoord})
        values = np.broadcast_to(values, (len(centres),) + values.shape)
    else:
        axis = names[0]
        values = exposure.interp_by_coord({"skycoord": coords.skycoord,
                                           axis: centres[:, None, None]})
    return (np.asarray(values, float) * exposure.unit).to_value(_EXPOSURE_UNIT)


def map_to_sky_image(counts, exposure=None, background=None, psf_sigma_deg=None, mask=None,
                     instrument="ctao"):
    """A `~astro_asid.SkyImage` from a gammapy WCS counts map.

    Parameters
    ----------
    counts : `~gammapy.maps.WcsNDMap`
        Counts with no axis or one reconstructed ``energy`` axis.
    exposure : `~gammapy.maps.Map`, optional
        Exposure (e.g. ``dataset.exposure``, in true energy); evaluated at the
        centre of every band.
    background : `~gammapy.maps.Map` or array-like, optional
        Expected background counts on the counts geometry.
    psf_sigma_deg : float, array-like or `~gammapy.irf.PSFMap`, optional
        Gaussian PSF sigma per band (deg), or a PSF map (its 68% containment
        radius at the map centre is used).
    mask : array-like of bool, optional
        True at pixels to ignore.
    instrument : str, optional
        Stored on the image.
    """
    geom = counts.geom
    if getattr(geom, "is_hpx", False):
        raise TypeError("HEALPix maps go to astro_asid.instruments.fermi, not the gammapy "
                        "WCS adapter")
    edges = _energy_edges(geom)
    image = as_sky_image(counts, mask=mask, energy_edges=edges, instrument=instrument)
    if image.unit is None or image.unit == u.dimensionless_unscaled:
        image.unit = u.ct
    if background is not None:
        back = background.data if hasattr(background, "geom") else background
        image.background = np.broadcast_to(np.asarray(back, float), image.data.shape).copy()
    if exposure is not None:
        if edges is None:
            raise ValueError("using an exposure needs the counts' energy axis")
        image.exposure = _exposure_per_band(exposure, geom, edges)
    if psf_sigma_deg is not None:
        if hasattr(psf_sigma_deg, "containment_radius"):
            sigma_pix = _psf_sigma_pix(psf_sigma_deg, geom, edges)
        else:
            sigma_pix = np.atleast_1d(np.asarray(u.Quantity(psf_sigma_deg, u.deg).value,
                                                 float)) / _pixel_scale_deg(geom)
        image.psf = {"sigma_pix": np.broadcast_to(sigma_pix, (image.n_bands,)).tolist()}
    return image


def dataset_to_sky_image(dataset, psf_sigma_deg=None, instrument="ctao"):
    """A `~astro_asid.SkyImage` from a gammapy `~gammapy.datasets.MapDataset`.

    Uses ``dataset.counts``, ``dataset.mask`` (safe and fit masks; pixels
    outside are ignored), ``dataset.npred()`` as the background when the
    dataset has a background or models, ``dataset.exposure`` and
    ``dataset.psf`` when present (``psf_sigma_deg`` overrides the PSF).
    """
    if dataset.counts is None:
        raise ValueError("the dataset has no counts (dataset.counts is None)")
    mask = None
    if dataset.mask is not None:
        valid = np.asarray(dataset.mask.data, bool)
        if not valid.any():
            raise ValueError("the dataset's mask (mask_safe & mask_fit) excludes every pixel; "
                             "set dataset.mask_safe to where the data are valid")
        mask = ~valid
    background = None
    if dataset.background is not None or dataset.models:
        background = dataset.npred()
    psf = psf_sigma_deg if psf_sigma_deg is not None else dataset.psf
    return map_to_sky_image(dataset.counts, exposure=dataset.exposure, background=background,
                            psf_sigma_deg=psf, mask=mask, instrument=instrument)


def _default_detector(instrument, image):
    """The best registered, usable detector for ``instrument``; ``tsmap`` for other counts."""
    from astro_asid.config import conf
    from astro_asid.find import _PREFERRED, fits_image
    from astro_asid.instruments.fermi import _deep_weights_missing
    from astro_asid.plugins.manager import get_registry

    if conf.default_detector != "auto":
        return None  # find_sources applies the configured default
    counts = image.unit is not None and u.Unit(image.unit).is_equivalent(u.ct)
    reg = get_registry().detectors
    names = dict.fromkeys(_PREFERRED.get(instrument, ()) + ("tsmap",))
    for name in names:
        if name not in reg or (getattr(reg.get(name), "needs_counts", False) and not counts):
            continue
        if not _deep_weights_missing(reg.get(name)) and fits_image(reg.get(name), image):
            return name
    return None


def _flux_from_counts(cat, image, spectral_index):
    """Turn ``flux`` (counts) into photon flux with the image's exposure, in place."""
    if image.exposure is None or image.energy_edges is None:
        return cat
    if not u.Unit(cat["flux"].unit).is_equivalent(u.ct):
        return cat
    n = len(cat)
    ny, nx = image.shape
    x = np.asarray(getattr(cat["x_centroid"], "value", cat["x_centroid"]), float)
    y = np.asarray(getattr(cat["y_centroid"], "value", cat["y_centroid"]), float)
    ix = np.clip(np.round(x).astype(int), 0, nx - 1) if n else np.zeros(0, int)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1) if n else np.zeros(0, int)
    exposure = np.asarray(image.exposure, float)
    if exposure.ndim == 1:
        exp_at = np.broadcast_to(exposure, (n, exposure.size))
    else:
        exp_at = exposure[:, iy, ix].T
    frac = _power_law_photon_fractions(image.energy_edges.to_value(u.GeV), spectral_index)
    eff = (exp_at * frac).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        conv = np.where(eff > 0, 1.0 / eff, np.nan)
    for name in ("flux", "flux_err"):
        col = cat[name]
        counts = np.where(col.mask, np.nan, col.unmasked.to_value(u.ct)) \
            if hasattr(col, "mask") else u.Quantity(col).to_value(u.ct)
        cat["counts" if name == "flux" else "counts_err"] = Masked(
            counts * u.ct, mask=~np.isfinite(counts))
        flux = counts * conv
        cat[name] = Masked(flux * _FLUX_UNIT, mask=~np.isfinite(flux))
    edges = image.energy_edges
    cat.meta["flux_band"] = f"{edges[0].value:g}-{edges[-1].value:g} {edges.unit}"
    cat.meta["flux_spectral_index"] = float(spectral_index)
    cat["flux"].info.format = ".4g"
    cat["flux_err"].info.format = ".3g"
    return cat


def find_sources_gammapy(obj, detector=None, *, exposure=None, background=None,
                         psf_sigma_deg=None, mask=None, instrument="ctao", spectral_index=2.2,
                         blas_threads=1, scheduler=None, workers=None, progress=False,
                         **options):
    """Find sources in a gammapy counts map or map dataset.

    Parameters
    ----------
    obj : `~gammapy.datasets.MapDataset` or `~gammapy.maps.WcsNDMap`
        A dataset (counts, masks, background/models, exposure, PSF), or a
        counts map.
    detector : str or `~astro_asid.detection.Detector`, optional
        Default: the best registered detector for ``instrument`` whose weights
        are installed, else ``tsmap`` for counts (maps in counts or without
        unit), else `~astro_asid.find_sources`' default.
    exposure, background, psf_sigma_deg, mask
        For a counts map, see `map_to_sky_image`; for a dataset only
        ``psf_sigma_deg`` (overrides the dataset's PSF).
    instrument : str, optional
        Instrument name (``"ctao"``).
    spectral_index : float, optional
        Photon index used to turn counts into photon flux (with an exposure).
    blas_threads : int or None, optional
        BLAS threads while detecting in this process (see
        `~astro_asid.instruments.fermi.find_sources_healpix`); None leaves
        the setting alone.
    scheduler : None, str or `distributed.Client`, optional
        Where the patches of the map run (see `~astro_asid.find_sources` and
        :doc:`/scale`): with a scheduler or ``workers``, or for maps of more
        than ``astro_asid.conf.patch_pixels`` pixels, the map is cut into
        patches that run as independent tasks; the catalog does not depend on
        where they run.
    workers : int, optional
        Processes of a local dask cluster; alone, it implies ``scheduler="processes"``.
    progress : bool, optional
        Show a progress bar over the patches.
    **options
        Passed to the detector.

    Returns
    -------
    `~astropy.table.QTable`
        The catalog (`astro_asid.catalog` schema). With an exposure, ``flux``
        is the photon flux (``cm-2 s-1``) over ``meta['flux_band']`` and the
        counts are in ``counts``/``counts_err``.
    """
    from astro_asid.find import find_sources

    if _is_gammapy(obj, "MapDataset"):
        if any(v is not None for v in (exposure, background, mask)):
            raise TypeError("exposure, background and mask come from the MapDataset; "
                            "set them on the dataset")
        image = dataset_to_sky_image(obj, psf_sigma_deg=psf_sigma_deg, instrument=instrument)
        source = "MapDataset"
    elif hasattr(obj, "geom") and hasattr(obj, "data"):
        image = map_to_sky_image(obj, exposure=exposure, background=background,
                                 psf_sigma_deg=psf_sigma_deg, mask=mask, instrument=instrument)
        source = type(obj).__name__
    else:
        raise TypeError(f"expected a gammapy MapDataset or WcsNDMap, not {type(obj).__name__}")
    if detector is None:
        detector = _default_detector(instrument, image)
    with _blas_limit(blas_threads):
        cat = find_sources(image, detector=detector, scheduler=scheduler, workers=workers,
                           progress=progress, **options)
    cat.meta["input"] = source
    return _flux_from_counts(cat, image, spectral_index)


# -- catalog -> gammapy models --------------------------------------------------------------
def _plain(col, unit=None):
    if hasattr(col, "mask") and hasattr(col, "unmasked"):
        vals = col.unmasked
        vals = vals.to_value(unit) if unit is not None else getattr(vals, "value", vals)
        return np.where(col.mask, np.nan, vals).astype(float)
    if isinstance(col, u.Quantity):
        return col.to_value(unit) if unit is not None else col.value
    return np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)


def to_gammapy_models(cat, spectral_index=None, reference=None, name_prefix="asid-",
                      extension_column="extension", min_extension=0.0 * u.deg,
                      position_margin=None, default_amplitude=1e-12 * u.Unit("cm-2 s-1 TeV-1")):
    """gammapy sky models with starting values from a catalog.

    Parameters
    ----------
    cat : `~astropy.table.QTable`
        An astro_asid catalog.
    spectral_index : float, optional
        Starting photon index; default the catalog's ``spectral_index`` (or
        ``index``) column, else ``meta['flux_spectral_index']``, else 2.2.
    reference : `~astropy.units.Quantity`, optional
        Reference energy; default the geometric mean of the catalog's energy
        range (``meta['energy_edges']``), else 1 TeV.
    name_prefix : str, optional
        Model names are ``name_prefix + id``.
    extension_column : str, optional
        Column of Gaussian extensions (sigma, deg); rows with a finite value
        above ``min_extension`` get a `~gammapy.modeling.models.GaussianSpatialModel`
        (for ``"extension"`` with an ``extension_prob`` column from the CTAO
        characteriser, only rows whose most probable class is not C0).
    min_extension : `~astropy.units.Quantity`, optional
        Smaller extensions are treated as point sources.
    position_margin : `~astropy.units.Quantity`, optional
        ``lon_0``/``lat_0`` may move at most this far from the catalog
        position in the fit; default ``max(0.2 deg, 5 sigma)`` per source.
    default_amplitude : `~astropy.units.Quantity`, optional
        Amplitude when the catalog flux is not a photon flux (counts).

    Returns
    -------
    `~gammapy.modeling.models.Models`
        One ``SkyModel`` per row, in catalog order. The amplitude is set so
        that the power law's integral over ``meta['flux_band']`` (or
        ``meta['flux_energy_range']``, set by a characteriser) equals
        ``flux`` when it is a photon flux (``cm-2 s-1``); position errors are
        set from ``sky_centroid_err``.
    """
    from gammapy.modeling.models import (GaussianSpatialModel, Models, PointSpatialModel,
                                         PowerLawSpectralModel, SkyModel)

    n = len(cat)
    coords = cat["sky_centroid"]
    frame = coords.frame.name
    if frame not in ("galactic", "icrs"):
        coords = coords.icrs
        frame = "icrs"
    lon = coords.spherical.lon.deg
    lat = coords.spherical.lat.deg
    err = _plain(cat["sky_centroid_err"], u.deg).reshape(n, 2) if n else np.zeros((0, 2))

    edges = None
    if "energy_edges" in cat.meta:
        edges = np.asarray(cat.meta["energy_edges"], float) * u.Unit(cat.meta.get("energy_unit",
                                                                                  "TeV"))
    if reference is None:
        reference = (np.sqrt(edges[0] * edges[-1]) if edges is not None else 1 * u.TeV)
    reference = u.Quantity(reference).to(u.TeV)

    if spectral_index is not None:
        index = np.full(n, float(spectral_index))
    else:
        name = next((c for c in ("spectral_index", "index") if c in cat.colnames), None)
        fallback = float(cat.meta.get("flux_spectral_index", 2.2))
        index = _plain(cat[name]) if name else np.full(n, fallback)
        index = np.where(np.isfinite(index), index, fallback)

    flux = _plain(cat["flux"]) if "flux" in cat.colnames else np.full(n, np.nan)
    flux_unit = u.Unit(cat["flux"].unit) if "flux" in cat.colnames and \
        cat["flux"].unit is not None else u.dimensionless_unscaled
    flux_edges = edges
    if "flux_energy_range" in cat.meta:  # the characteriser's flux band (e.g. > 1 TeV)
        lo, hi, unit = cat.meta["flux_energy_range"]
        flux_edges = [lo, hi] * u.Unit(unit)
    photon = flux_unit.is_equivalent(_FLUX_UNIT) and flux_edges is not None
    if not photon and n:
        warnings.warn(f"catalog flux is in {flux_unit!s}, not a photon flux; amplitudes start "
                      f"at {default_amplitude} (give the detector an exposure for better "
                      "starting values)", ASIDWarning, stacklevel=2)
    ext = _plain(cat[extension_column], u.deg) if extension_column in cat.colnames \
        else np.full(n, np.nan)
    if "extension_prob" in cat.colnames and extension_column == "extension" and n:
        # a characterised catalog: point-like (class C0) sources get a point model
        prob = np.asarray(_plain(cat["extension_prob"])).reshape(n, -1)
        ext = np.where(np.nan_to_num(prob, nan=1.0).argmax(axis=1) == 0, np.nan, ext)
    min_ext = u.Quantity(min_extension, u.deg).value

    models = []
    for i in range(n):
        spectral = PowerLawSpectralModel(index=float(index[i]), reference=reference,
                                         amplitude=default_amplitude)
        if photon and np.isfinite(flux[i]) and flux[i] > 0:
            unit_flux = spectral.integral(flux_edges[0], flux_edges[-1])
            amp = (flux[i] * flux_unit / unit_flux) * default_amplitude
            spectral.amplitude.quantity = amp.to(default_amplitude.unit)
        spectral.amplitude.min = 0
        spectral.index.min, spectral.index.max = 0.5, 6.0
        if np.isfinite(ext[i]) and ext[i] > min_ext:
            spatial = GaussianSpatialModel(lon_0=lon[i] * u.deg, lat_0=lat[i] * u.deg,
                                           sigma=ext[i] * u.deg, frame=frame)
            spatial.sigma.min = 0
        else:
            spatial = PointSpatialModel(lon_0=lon[i] * u.deg, lat_0=lat[i] * u.deg, frame=frame)
        sig = np.nanmax(err[i]) if np.any(np.isfinite(err[i])) else np.nan
        margin = (u.Quantity(position_margin, u.deg).value if position_margin is not None
                  else max(0.2, 5 * sig if np.isfinite(sig) else 0.0))
        for par, value, e in ((spatial.lon_0, lon[i], err[i, 0]), (spatial.lat_0, lat[i],
                                                                   err[i, 1])):
            par.min, par.max = value - margin, value + margin
            if np.isfinite(e):
                par.error = e
        if spatial.lat_0.max > 90:
            spatial.lat_0.max = 90
        if spatial.lat_0.min < -90:
            spatial.lat_0.min = -90
        models.append(SkyModel(spatial_model=spatial, spectral_model=spectral,
                               name=f"{name_prefix}{int(cat['id'][i])}"))
    return Models(models)


class ASIDSourceEstimator(_EstimatorBase):
    """Source detection as a gammapy estimator.

    Configuration in ``__init__``, data in `run` (gammapy's convention).

    Parameters
    ----------
    detector : str or `~astro_asid.detection.Detector`, optional
        Detector name or instance (default ``"tsmap"``).
    psf_sigma_deg : float or array-like, optional
        Overrides the dataset's PSF (Gaussian sigma per band, deg).
    spectral_index : float, optional
        Photon index for counts -> photon flux.
    instrument : str, optional
        Instrument name.
    **options
        Passed to the detector (e.g. ``ts_threshold=25``).

    Examples
    --------
    >>> from astro_asid.instruments.ctao import ASIDSourceEstimator
    >>> ASIDSourceEstimator(detector="tsmap", ts_threshold=16)
    ASIDSourceEstimator(detector='tsmap', ts_threshold=16)
    """

    tag = "ASIDSourceEstimator"

    def __init__(self, detector="tsmap", psf_sigma_deg=None, spectral_index=2.2,
                 instrument="ctao", **options):
        self.detector = detector
        self.psf_sigma_deg = psf_sigma_deg
        self.spectral_index = float(spectral_index)
        self.instrument = instrument
        self.options = dict(options)

    def __repr__(self):
        args = [f"detector={self.detector!r}"]
        if self.psf_sigma_deg is not None:
            args.append(f"psf_sigma_deg={self.psf_sigma_deg!r}")
        args += [f"{k}={v!r}" for k, v in self.options.items()]
        return f"{type(self).__name__}({', '.join(args)})"

    def run(self, dataset):
        """Detect sources in ``dataset`` (a `~gammapy.datasets.MapDataset` or counts map).

        Returns
        -------
        `~astropy.table.QTable`
            The catalog; see `find_sources_gammapy`. `to_gammapy_models` turns
            it into models.
        """
        if _is_gammapy(dataset, "Datasets"):
            if len(dataset) != 1:
                raise ValueError(f"ASIDSourceEstimator runs on one dataset, got {len(dataset)}; "
                                 "stack them first (Datasets.stack_reduce())")
            dataset = dataset[0]
        return find_sources_gammapy(dataset, detector=self.detector,
                                    psf_sigma_deg=self.psf_sigma_deg,
                                    instrument=self.instrument,
                                    spectral_index=self.spectral_index, **self.options)


class GammapyMapAdapter:
    """`~astro_asid.find_sources` adapter for gammapy WCS maps and map datasets."""

    name = "gammapy-map"
    #: `find_sources` passes ``scheduler``, ``workers`` and ``progress`` on (patches as tasks)
    supports_scheduler = True

    def accepts(self, obj):
        """True for a gammapy ``MapDataset`` or a WCS (not HEALPix) map."""
        if isinstance(obj, SkyImage):
            return False
        if _is_gammapy(obj, "MapDataset"):
            return True
        geom = getattr(obj, "geom", None)
        return (_is_gammapy(obj, "WcsNDMap") and geom is not None
                and not getattr(geom, "is_hpx", False))

    def find_sources(self, obj, wcs=None, detector=None, mask=None, instrument=None,
                     energy_edges=None, **options):
        """Run `find_sources_gammapy` (``wcs``/``energy_edges`` come from the map)."""
        if wcs is not None:
            raise ValueError("a gammapy map carries its own WCS: do not pass wcs")
        if energy_edges is not None:
            raise ValueError("a gammapy map carries its own energy axis: do not pass "
                             "energy_edges")
        if mask is not None and _is_gammapy(obj, "MapDataset"):
            raise ValueError("set the mask on the dataset (mask_safe / mask_fit)")
        return find_sources_gammapy(obj, detector=detector, mask=mask,
                                    instrument=instrument or "ctao", **options)

    def __repr__(self):
        return "GammapyMapAdapter()"

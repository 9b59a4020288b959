"""Interstellar-emission (background) models of the Fermi-LAT simulator.

Every model is a 5-band HEALPix map (RING, Galactic) of the expected
background counts per square degree for the data challenge's exposure
(about 9.5 years); the simulator samples it bilinearly at any pixel and
scales it by ``exposure_scale * background_scale``.

``"b1"``
    The data challenge's own background (gll_iem_v07 + isotropic, the paper's
    B1), reprojected from its 768 overlapping patches onto HEALPix nside 128
    by a least-squares fit (the map whose bilinear interpolation best
    reproduces every challenge pixel, relative error weighted). Shipped in
    ``astro_asid/data/fermi_b1_hpx128.npz`` (natural log, float16) and rebuilt
    with ``python -m astro_asid.simulate.build_templates``. Re-sampled onto
    the challenge patches it reproduces them to 0.36-0.68 % (median relative
    error per band; 99th percentile 4-8 %, in the Galactic plane).
``"b2"``
    Same large-scale emission as B1 (B1 smoothed with a 4 deg Gaussian, in
    log), different small-scale structure and spectrum: the small-scale part
    of B1 (log B1 minus its smoothed version) is taken from the mirror
    position ``l -> -l`` and amplified by 1.3, and the spectrum within 10 deg of
    the plane is hardened (x1.15 in the 20-200 GeV band, tapering to x1 at
    0.5-1 GeV). It mimics an interstellar model built from other gas surveys.
``"b3"``
    Different large- and small-scale structure: an analytic model (isotropic
    + thin and thick exponential disks with a longitude profile + a Galactic
    centre halo), its 40 parameters fitted per band to B1 smoothed over 2 deg,
    times a log-normal Gaussian random field (angular power ``(l + 10)^-2.2``,
    rms 0.30 in the plane falling to 0.05 at high latitude) whose realization
    is set by ``seed``.
"""

import abc
from functools import lru_cache
from importlib import resources

import numpy as np

from .healpix import HealpixTemplate

__all__ = ["BackgroundModel", "B1Background", "B2Background", "B3Background",
           "BACKGROUND_MODELS", "get_background", "load_b1_maps", "B1_FILE", "B3_FILE"]

B1_FILE = "fermi_b1_hpx128.npz"
B3_FILE = "fermi_b3_params.npz"


def _data_path(name):
    return resources.files("astro_asid") / "data" / name


@lru_cache(maxsize=1)
def load_b1_maps():
    """The shipped B1 template: ``(5, 12 * 128**2)`` float32 counts deg^-2 (9.5 yr)."""
    path = _data_path(B1_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"B1 background template {B1_FILE} missing from astro_asid/data; rebuild it with "
            "`python -m astro_asid.simulate.build_templates` (needs the data-challenge files)")
    with path.open("rb") as fh, np.load(fh) as f:
        return np.exp(f["log_density"].astype(np.float32))


class BackgroundModel(abc.ABC):
    """A background model: expected counts per deg^2 per band at Galactic positions."""

    name = None

    @property
    @abc.abstractmethod
    def template(self):
        """The `HealpixTemplate` of the model (counts deg^-2 for 9.5 yr)."""

    def density(self, lon, lat):
        """Expected counts per deg^2, ``(5,) + lon.shape``, for the challenge exposure."""
        return self.template(lon, lat)

    def healpix(self, nside):
        """Expected counts per pixel of a HEALPix map (RING), ``(5, 12 nside^2)``."""
        import healpy as hp
        area = hp.nside2pixarea(nside, degrees=True)
        return self.template.at_pixels(nside) * np.float32(area)

    def __repr__(self):
        return f"{type(self).__name__}()"


class B1Background(BackgroundModel):
    """The data challenge's background (gll_iem_v07 + isotropic), see the module docstring."""

    name = "b1"

    def __init__(self):
        self._template = HealpixTemplate(load_b1_maps())

    @property
    def template(self):
        return self._template


def _smooth_log(maps, fwhm_deg):
    import healpy as hp
    nside = hp.npix2nside(maps.shape[1])
    return np.array([hp.smoothing(np.log(m).astype(float), fwhm=np.deg2rad(fwhm_deg),
                                  lmax=3 * nside - 1, iter=1) for m in maps])


@lru_cache(maxsize=1)
def _b2_maps():
    import healpy as hp
    b1 = load_b1_maps()
    nside = hp.npix2nside(b1.shape[1])
    large = _smooth_log(b1, 4.0)
    small = np.log(b1) - large
    lon, lat = hp.pix2ang(nside, np.arange(b1.shape[1]), lonlat=True)
    mirror = hp.ang2pix(nside, (-lon) % 360, lat, lonlat=True)
    # Harder spectrum near the plane: +15 % at the top band, tapering to 0 at the bottom one.
    tilt = 0.15 * np.linspace(0, 1, 5)[:, None] * np.exp(-0.5 * (lat / 10.0) ** 2)[None]
    logm = large + 1.3 * small[:, mirror] + np.log1p(tilt)
    return np.exp(logm).astype(np.float32)


class B2Background(BackgroundModel):
    """B1's large scales with other small-scale structure and a harder plane spectrum."""

    name = "b2"

    def __init__(self):
        self._template = HealpixTemplate(_b2_maps())

    @property
    def template(self):
        return self._template


# -- B3: analytic large scale x log-normal random field ------------------------------------
B3_PARAM_NAMES = ("log_iso", "log_thin", "l_thin", "h_thin", "log_thick", "h_thick",
                  "log_halo", "r_halo")


def b3_large_scale(params, lon, lat):
    """Analytic large-scale B3 density (counts deg^-2) for one band's 8 parameters."""
    li, lt, lsc, ht, lk, hk, lh, rh = params
    lon = (np.asarray(lon, float) + 180.0) % 360.0 - 180.0
    lat = np.asarray(lat, float)
    cosd = np.cos(np.deg2rad(lon)) * np.cos(np.deg2rad(lat))
    r_gc = np.rad2deg(np.arccos(np.clip(cosd, -1, 1)))
    return (np.exp(li) + np.exp(lt) * np.exp(-np.abs(lon) / abs(lsc) - np.abs(lat) / abs(ht))
            + np.exp(lk) * np.exp(-np.abs(lat) / abs(hk))
            + np.exp(lh) * np.exp(-r_gc / abs(rh)))


@lru_cache(maxsize=1)
def load_b3_params():
    """Fitted B3 large-scale parameters, ``(5, 8)`` (see `b3_large_scale`)."""
    path = _data_path(B3_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"B3 parameters {B3_FILE} missing from astro_asid/data; rebuild them with "
            "`python -m astro_asid.simulate.build_templates`")
    with path.open("rb") as fh, np.load(fh) as f:
        return np.array(f["params"], float)


@lru_cache(maxsize=8)
def _b3_maps(seed, nside=128):
    import healpy as hp
    params = load_b3_params()
    npix = hp.nside2npix(nside)
    lon, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    ell = np.arange(3 * nside)
    cl = (ell + 10.0) ** -2.2
    cl[:2] = 0
    # healpy draws with numpy's global state: isolate it from the caller's.
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        field = hp.synfast(cl, nside, lmax=3 * nside - 1, new=True)
    finally:
        np.random.set_state(state)
    field /= field.std()
    rms = 0.05 + 0.25 * np.exp(-np.abs(lat) / 5.0)
    mod = np.exp(rms * field - 0.5 * rms ** 2)   # mean-preserving log-normal
    maps = np.array([b3_large_scale(p, lon, lat) for p in params]) * mod[None]
    return maps.astype(np.float32)


class B3Background(BackgroundModel):
    """Analytic large-scale model times a log-normal random field (see the module docstring).

    Parameters
    ----------
    seed : int, optional
        Realization of the small-scale random field.
    """

    name = "b3"

    def __init__(self, seed=0):
        self.seed = int(seed)
        self._template = HealpixTemplate(_b3_maps(self.seed))

    @property
    def template(self):
        return self._template

    def __repr__(self):
        return f"B3Background(seed={self.seed})"


BACKGROUND_MODELS = {"b1": B1Background, "b2": B2Background, "b3": B3Background}


def get_background(name, seed=0):
    """A background model by name (``"b1"``, ``"b2"``, ``"b3"``) or the instance itself."""
    if isinstance(name, BackgroundModel):
        return name
    key = str(name).lower()
    if key not in BACKGROUND_MODELS:
        raise ValueError(f"unknown background model {name!r}; "
                         f"choose from {sorted(BACKGROUND_MODELS)}")
    return B3Background(seed) if key == "b3" else BACKGROUND_MODELS[key]()

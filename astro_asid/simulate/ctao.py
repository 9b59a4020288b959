"""CTAO-South Galactic-plane-survey (GPS) patches: a fast toy simulator.

Follows the "preliminary toy simulations" of seed 000's back-up slides:
512 x 512 pixels of 0.02 deg (10.24 x 10.24 deg) in Galactic CAR, centred by
default on (l, b) = (15.12, 0) deg, three reconstructed-energy bands
0.07-0.788, 0.788-8.88 and 8.88-100 TeV, 20-40 power-law sources per patch.
Everything is vectorised numpy/scipy (no gammapy at simulation time, so it
runs on machines without gammapy); `to_gammapy_dataset` turns a patch into a
gammapy `~gammapy.datasets.MapDataset` for likelihood baselines.

**Instrument response (offline, tabulated here).**
``irf="prod3b-south"`` (default): effective area (after gamma/hadron and
direction cuts), 68 % containment radius and residual background rate of
the public CTA performance files *prod3b-v2, South, 20 deg zenith, 50 h*
(``CTA-Performance-prod3b-v2-South-20deg-50h-{EffArea,Angres,BackgroundSqdeg}.txt``,
www.cta-observatory.org/science/cta-performance, as shipped by the MIT
package ctaplot 0.6.6). The slides used prod5-v0.1 South_z20_50h, which is
not shipped by any package installed here; prod3b-v2 South is the same site,
zenith angle and cuts for the full ("Omega") array, so its low-energy
effective area is higher than prod5's "Alpha" layout (no LSTs).

``irf="gammapy-ctao"``: the effective area of gammapy's offline
parametrisation ``EffectiveAreaTable2D.from_parametrization(instrument="CTAO")``
(Abramowski et al. 2010, appendix B: ``A(E) = g1 (E/MeV)^-g2 exp(-g3/E)``,
constants in `GAMMAPY_CTAO_AEFF_PARS`, checked against gammapy by the
tests), with prod3b's PSF and background: gammapy has no CTAO PSF or
background parametrisation. This effective area is 1.2, 7 and 26 times
prod3b's at 10, 1 and 0.1 TeV (a bigger array without cuts), so sources are
much brighter against the same background: a stress-free variant, not a
realistic one.

Per band (sources with photon index 2.2, prod3b-south, 20 h; PSF sigma is
the Gaussian sigma of the band's counts-weighted 68 % containment radius,
``r68 / 1.5096``; background per 0.02 x 0.02 deg pixel at b = 0):

============  =========  ============  =================  ====================
band (TeV)    PSF r68    PSF sigma     hadronic bkg       counts of a source
              (deg)      (deg; pix)    (Hz/deg2; /pix)    with 1e-12 [#]_
============  =========  ============  =================  ====================
0.07-0.788    0.0936     0.0620; 3.10  1.34; 38.6         2266 (gammapy x20)
0.788-8.88    0.0450     0.0298; 1.49  0.0423; 1.22       1017 (gammapy x4.0)
8.88-100      0.0300     0.0199; 0.99  0.00106; 0.031     185 (gammapy x1.03)
============  =========  ============  =================  ====================

.. [#] ``flux_1tev`` = 1e-12 cm-2 s-1 above 1 TeV (about 5 % Crab), index
   2.2, 20 h (`CTAOResponse.band_counts`); in brackets the factor for
   ``irf="gammapy-ctao"``.

Energy dispersion is neglected (true = reconstructed energy), and the PSF of
a band does not depend on the source spectrum. The hadronic background is
uniform (a GPS tiles the plane with many pointings).

**Populations.**
* number inside a 512 x 512 patch uniform in [20, 40] (a continuous draw,
  rounded stochastically), scaled by the patch area for other ``npix`` and
  by ``density``; or ``sources_per_deg2`` times the area;
* l uniform, b ~ N(0, ``lat_sigma_deg`` = 1 deg) truncated to the patch (the
  slides' "variance 1.4 so that most sources lie at ``|b|`` < 1 deg": a standard
  deviation of sqrt(1.4) = 1.18 deg puts only 60 % there, 1 deg puts 68 %);
* power law ``dN/dE = K0 (E / 1 TeV)^-index``, index ~ N(2.2, sqrt(0.05)):
  the slides' "variance 0.05" read literally as a variance (sigma 0.224),
  clipped to [1.2, 3.5];
* ``flux_1tev`` (integral above 1 TeV, cm-2 s-1; ``K0 = flux_1tev (index -
  1) / TeV``) from ``dN/dS ~ S^-2`` between 1.5e-14 (about 1/3 of the GPS
  sensitivity, the slides' cut) and 2e-11 (about the Crab, 2.1e-11): a
  Euclidean-like slope, so about two thirds of the sources are below the
  GPS sensitivity (~4.5e-14);
* 40 % point-like, the rest Gaussian with sigma log-uniform in 0.03-0.5 deg;
  ``ext_class`` C0 (sigma < 0.1 deg, and all point sources), C1 (0.1 <=
  sigma <= 0.3), C2 (> 0.3);
* sources within ``margin_deg`` (0.5 deg) outside the patch, with the same
  surface density, are rendered (their light spills in) and listed in
  ``outside_sources``, not in ``sources``.

**Galactic diffuse emission.**
A smooth latitude profile (Gaussian in b, width U(0.5, 1) deg, centre
N(0, 0.1) deg) times a random large-scale modulation in l (three sinusoids of
wavelengths 3-20 deg, log-amplitude 0.25 each) times a log-normal small-scale
field (rms 0.3 in log, correlation ~0.15 deg), with a power law of index 2.5.
At the peak of the profile its mean in the 0.788-8.88 TeV band is
``diffuse_fraction`` (0.25) of the hadronic background. It is part of
``background``.

**Rendering and speed.**
Every source is a Gaussian (PSF sigma of the band and the source's own sigma
added in quadrature) integrated exactly over the pixels: the pixel integral
of a Gaussian factorises into error-function differences along x and y, so a
band is one product ``Gy.T @ (counts * Gx)`` of two ``(n_src, npix)``
matrices. There is no stamp to truncate and no renormalisation; light that
falls outside the patch is lost, as in a real cut-out. Measured on the
shared 2-core development machine (one BLAS thread, median of 5, the whole
`CTAOSkySimulator.sample_patches` including the Poisson draw): 55 ms per
512 x 512 patch (up to ~140 ms while other jobs ran), of which rendering 40
sources ~10 ms, the diffuse component ~11 ms and the Poisson draw ~35-60 ms;
4.8 ms per 128 x 128 patch (batches of 64).
"""

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from astropy import units as u
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage
from scipy.integrate import simpson
from scipy.special import ndtr, ndtri

from .fermi import _PatchBatchBase

__all__ = ["CTAOSkySimulator", "CTAOPatchBatch", "CTAOResponse", "to_gammapy_dataset",
           "render_gaussian_sources", "patch_wcs", "extension_class", "CTAO_ENERGY_EDGES_TEV",
           "CTAO_PIXEL_DEG", "CTAO_LIVETIME_H", "CTAO_GPS_CENTRE", "GAMMAPY_CTAO_AEFF_PARS",
           "CRAB_FLUX_1TEV"]

#: Reconstructed-energy band edges (TeV), the slides' three log bins.
CTAO_ENERGY_EDGES_TEV = np.array([0.07, 0.788, 8.88, 100.0])
#: Pixel size (deg).
CTAO_PIXEL_DEG = 0.02
#: Default livetime per patch (hours; about the inner-Galaxy GPS depth).
CTAO_LIVETIME_H = 20.0
#: Default patch centre (l, b), deg: the slides' region of interest.
CTAO_GPS_CENTRE = (15.12, 0.0)
#: gammapy 2.1 ``EffectiveAreaTable2D.from_parametrization(instrument="CTAO")``:
#: g1 (cm2), g2, g3 (MeV) of ``A(E) = g1 (E/MeV)^-g2 exp(-g3 / E)``.
GAMMAPY_CTAO_AEFF_PARS = (1.71e11, 0.0891, 1e5)
CRAB_FLUX_1TEV = 2.1e-11  # cm-2 s-1 above 1 TeV
_GAUSS_R68 = 1.5095921854516636  # r68 / sigma of a 2-D Gaussian: sqrt(-2 ln 0.32)

# prod3b-v2 South 20 deg 50 h (see the module docstring). Effective area (m2) on the file's
# grid, E = 10^(-1.8 + 0.05 k) TeV, k = 0..79 (0.0158-141 TeV).
_PROD3B_AEFF_M2 = np.array([
    775, 1.32e3, 2.98e3, 4.64e3, 7.6e3, 1.06e4, 1.42e4, 1.78e4, 2.15e4, 2.53e4, 2.94e4, 3.35e4,
    4.13e4, 4.91e4, 6.11e4, 7.32e4, 8.54e4, 9.76e4, 1.11e5, 1.25e5, 1.41e5, 1.57e5, 1.76e5,
    1.96e5, 2.18e5, 2.4e5, 2.54e5, 2.69e5, 2.95e5, 3.22e5, 3.54e5, 3.87e5, 4.17e5, 4.47e5,
    5.02e5, 5.58e5, 6.28e5, 6.98e5, 7.99e5, 9.0e5, 1.02e6, 1.14e6, 1.29e6, 1.44e6, 1.61e6,
    1.79e6, 1.94e6, 2.09e6, 2.25e6, 2.42e6, 2.56e6, 2.71e6, 2.84e6, 2.96e6, 3.11e6, 3.26e6,
    3.38e6, 3.5e6, 3.58e6, 3.65e6, 3.74e6, 3.82e6, 3.9e6, 3.99e6, 4.01e6, 4.04e6, 4.11e6,
    4.19e6, 4.23e6, 4.28e6, 4.19e6, 4.1e6, 4.13e6, 4.16e6, 4.22e6, 4.27e6, 4.2e6, 4.13e6,
    4.16e6, 4.19e6])
_PROD3B_AEFF_LOG10E = -1.8 + 0.05 * np.arange(_PROD3B_AEFF_M2.size)
# 68 % containment radius (deg) at E = 10^(-1.6 + 0.2 k) TeV, k = 0..18 (0.0251-100 TeV).
_PROD3B_R68_DEG = np.array([0.29, 0.23, 0.17, 0.13, 0.1, 0.081, 0.066, 0.056, 0.049, 0.047,
                            0.046, 0.042, 0.037, 0.033, 0.03, 0.028, 0.027, 0.026, 0.027])
_PROD3B_R68_LOG10E = -1.6 + 0.2 * np.arange(_PROD3B_R68_DEG.size)
# Residual background rate (Hz/deg2) in reconstructed-energy bins with edges
# 10^(-1.7 + 0.2 k) TeV (0.02-31.6 TeV); steeper than E^-4 above 10 TeV.
_PROD3B_BKG_HZ_DEG2 = np.array([1.6, 1.4, 0.72, 0.61, 0.29, 0.15, 0.08, 0.044, 0.017, 0.011,
                                0.0065, 0.004, 0.003, 0.00071, 0.00046, 9.4e-05])
_PROD3B_BKG_LOG10E = -1.7 + 0.2 * np.arange(_PROD3B_BKG_HZ_DEG2.size + 1)

IRFS = ("prod3b-south", "gammapy-ctao")
_N_GRID = 97  # energy nodes per band for Simpson's rule in ln E (rel. error ~1e-7)
_DEG2_PER_SR = (180 / np.pi) ** 2
_FLUX_UNIT = u.Unit("cm-2 s-1")


# -- instrument response -----------------------------------------------------------------------
def _energy_grid(edges=CTAO_ENERGY_EDGES_TEV, n=_N_GRID):
    """Log-spaced energy nodes (TeV) per band: ``(n_bands, n)``."""
    return np.stack([np.geomspace(lo, hi, n) for lo, hi in zip(edges[:-1], edges[1:])])


def _integrate_loge(values, energy):
    """Simpson integral of ``values`` dE over the last axis, done in ln E (smooth there)."""
    return simpson(values * energy, x=np.log(energy), axis=-1)


def aeff_prod3b(energy_tev):
    """prod3b-v2 South 20 deg effective area (cm2), log-log interpolation."""
    le = np.log10(np.asarray(energy_tev, float))
    return 1e4 * 10 ** np.interp(le, _PROD3B_AEFF_LOG10E, np.log10(_PROD3B_AEFF_M2))


def aeff_gammapy_ctao(energy_tev):
    """gammapy's offline CTAO effective-area parametrisation (cm2)."""
    g1, g2, g3 = GAMMAPY_CTAO_AEFF_PARS
    e_mev = np.asarray(energy_tev, float) * 1e6
    return g1 * e_mev ** (-g2) * np.exp(-g3 / e_mev)


def psf_r68_prod3b(energy_tev):
    """prod3b-v2 South 20 deg 68 % containment radius (deg), log-log interpolation."""
    le = np.log10(np.asarray(energy_tev, float))
    return 10 ** np.interp(le, _PROD3B_R68_LOG10E, np.log10(_PROD3B_R68_DEG))


def background_rate_prod3b(e_lo, e_hi):
    """Residual background rate (Hz/deg2) between two reconstructed energies (TeV).

    The binned rates are turned into the integral rate above E at the bin
    edges (continued above 31.6 TeV by the power law of the last two bins),
    which is interpolated log-log, so rates in bins are conserved.
    """
    le = _PROD3B_BKG_LOG10E
    rate = _PROD3B_BKG_HZ_DEG2
    centres = 10 ** (0.5 * (le[:-1] + le[1:]))
    dnde = rate / np.diff(10 ** le)
    slope = np.log(dnde[-1] / dnde[-2]) / np.log(centres[-1] / centres[-2])  # about -4.4
    e_last = 10 ** le[-1]
    tail = dnde[-1] * (e_last / centres[-1]) ** slope * e_last / -(slope + 1)
    above = np.r_[np.cumsum(rate[::-1])[::-1], 0.0] + tail        # rate above each edge
    ext_le = np.r_[le, le[-1] + 2.0]
    ext_above = np.r_[above[:-1], tail, tail * 100.0 ** (slope + 1)]

    def integral_above(e):
        return 10 ** np.interp(np.log10(e), ext_le, np.log10(ext_above))
    return integral_above(np.asarray(e_lo, float)) - integral_above(np.asarray(e_hi, float))


def _mixture_r68(sigmas, weights):
    """68 % containment radius of a weighted mixture of 2-D Gaussians (bisection)."""
    w = weights / weights.sum()
    lo, hi = 0.0, 5 * sigmas.max()
    for _ in range(60):
        r = 0.5 * (lo + hi)
        frac = np.sum(w * (1 - np.exp(-0.5 * (r / sigmas) ** 2)))
        lo, hi = (r, hi) if frac < 0.68 else (lo, r)
    return 0.5 * (lo + hi)


class CTAOResponse:
    """Band-averaged CTAO-South response for the GPS toy patches.

    Parameters
    ----------
    irf : {"prod3b-south", "gammapy-ctao"}
        Effective area of prod3b-v2 South 20 deg 50 h, or gammapy's offline
        CTAO parametrisation (PSF and background are prod3b's for both).
    reference_index : float, optional
        Photon index used to weight the PSF within a band.

    Attributes
    ----------
    psf_sigma_deg : `~numpy.ndarray`
        Gaussian PSF sigma per band (deg): the counts-weighted 68 %
        containment radius of the band over 1.5096.
    background_rate : `~numpy.ndarray`
        Residual hadronic background per band, Hz/deg2.
    """

    def __init__(self, irf="prod3b-south", reference_index=2.2):
        if irf not in IRFS:
            raise ValueError(f"unknown irf {irf!r}; choose one of {IRFS}")
        self.irf = irf
        self.energy_edges = CTAO_ENERGY_EDGES_TEV.copy()
        self._grid = _energy_grid(self.energy_edges)
        self._aeff_grid = self.aeff(self._grid)
        self.psf_r68_deg = np.array([
            _mixture_r68(psf_r68_prod3b(e) / _GAUSS_R68, e ** -reference_index * a * e)
            for e, a in zip(self._grid, self._aeff_grid)])
        self.psf_sigma_deg = self.psf_r68_deg / _GAUSS_R68
        self.background_rate = background_rate_prod3b(self.energy_edges[:-1],
                                                       self.energy_edges[1:])

    def __repr__(self):
        return f"CTAOResponse(irf={self.irf!r})"

    def aeff(self, energy_tev):
        """Effective area (cm2) at true energies (TeV)."""
        if self.irf == "gammapy-ctao":
            return aeff_gammapy_ctao(energy_tev)
        return aeff_prod3b(energy_tev)

    def band_exposure_integrals(self, index):
        """``int_band (E / 1 TeV)^-index Aeff(E) dE`` (cm2 TeV) per band: ``(n_src, 3)``."""
        index = np.atleast_1d(np.asarray(index, float))
        e = self._grid[None]                                  # (1, 3, n)
        f = e ** -index[:, None, None] * self._aeff_grid[None]
        return _integrate_loge(f, e)

    def band_centre_exposure(self, livetime_s):
        """Exposure (cm2 s) at the band centres, ``Aeff(sqrt(E_lo E_hi)) * livetime``:
        ``(n_bands,)``.

        This is how `~astro_asid.instruments.ctao.map_to_sky_image` reduces a
        gammapy exposure map to one value per band, so the ratio of a
        dataset's exposure to this one is the factor between their counts.
        """
        centres = np.sqrt(self.energy_edges[:-1] * self.energy_edges[1:])
        return self.aeff(centres) * float(livetime_s)

    def band_counts(self, flux_1tev, index, livetime_s):
        """Expected counts per band of power-law sources: ``(n_src, 3)``.

        Parameters
        ----------
        flux_1tev : array-like
            Integral photon flux above 1 TeV, cm-2 s-1.
        index : array-like
            Photon index (> 1).
        livetime_s : float or array-like
            Livetime, s (broadcast against the sources).
        """
        index = np.atleast_1d(np.asarray(index, float))
        k0 = np.asarray(flux_1tev, float) * (index - 1)       # cm-2 s-1 TeV-1 at 1 TeV
        return (k0 * np.asarray(livetime_s, float))[..., None] * \
            self.band_exposure_integrals(index)

    def background_counts_per_deg2(self, livetime_s):
        """Hadronic background counts per deg2 per band for a livetime (s)."""
        return self.background_rate * float(livetime_s)


@lru_cache(maxsize=4)
def _response(irf):
    return CTAOResponse(irf)


def extension_class(sigma_deg):
    """Extension class from the Gaussian sigma (deg): C0 < 0.1 <= C1 <= 0.3 < C2.

    Point sources (sigma 0) are C0.
    """
    s = np.asarray(sigma_deg, float)
    return np.where(s < 0.1, "C0", np.where(s <= 0.3, "C1", "C2"))


# -- geometry ------------------------------------------------------------------------------------
def patch_wcs(lon, lat, npix, cdelt=CTAO_PIXEL_DEG):
    """Galactic CAR WCS of a patch centred at (lon, lat), deg.

    ``CRVAL = (lon, 0)`` with the reference pixel moved so that the patch
    centre (0-based pixel ``(npix - 1) / 2``) is at latitude ``lat``: the
    projection is then a plain plate carree, pixel columns are meridians and
    rows are parallels (no oblique CAR for off-plane centres).
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    w.wcs.crval = [float(lon) % 360, 0.0]
    w.wcs.cdelt = [-cdelt, cdelt]
    w.wcs.crpix = [(npix + 1) / 2, (npix + 1) / 2 - float(lat) / cdelt]
    w.wcs.cunit = ["deg", "deg"]
    return w


# -- batch -------------------------------------------------------------------------------------
_COLUMNS = ("x", "y", "lon", "lat", "flux_1tev", "index", "sigma_deg", "ext_class",
            "counts_band")
_UNITS = dict(lon=u.deg, lat=u.deg, flux_1tev=_FLUX_UNIT, sigma_deg=u.deg)


def _table(cat, sel):
    t = Table({k: cat[k][sel] for k in _COLUMNS})
    for k, unit in _UNITS.items():
        t[k].unit = unit
    return t


@dataclass
class CTAOPatchBatch(_PatchBatchBase):
    """A batch of simulated CTAO GPS patches (see `CTAOSkySimulator.sample_patches`).

    Attributes
    ----------
    counts, expected, background : `~numpy.ndarray`
        ``(n, 3, npix, npix)`` float32: Poisson draw, expected counts
        (background + sources) and expected background (hadronic + diffuse).
    sources : list of `~astropy.table.Table`
        Per patch, the sources inside ``[-0.5, npix - 0.5)``: ``x``, ``y``
        (0-based pixels, column = x, row = y), ``lon``, ``lat`` (deg),
        ``flux_1tev`` (cm-2 s-1 above 1 TeV), ``index``, ``sigma_deg``
        (Gaussian sigma, 0 for point sources), ``ext_class`` (C0/C1/C2),
        ``counts_band`` ``(m, 3)`` expected counts per band.
    outside_sources : list of `~astropy.table.Table`
        Sources in the margin around each patch (rendered, not inside).
    lon, lat : `~numpy.ndarray`
        Patch centres, deg.
    livetime : `~astropy.units.Quantity`
        Livetime per patch (h).
    psf_sigma_deg : `~astropy.units.Quantity`
        Gaussian PSF sigma per band.
    irf : str
        Response used.
    """

    counts: np.ndarray
    expected: np.ndarray
    background: np.ndarray
    sources: list
    outside_sources: list
    lon: np.ndarray
    lat: np.ndarray
    livetime: u.Quantity
    psf_sigma_deg: u.Quantity
    irf: str = "prod3b-south"
    cdelt: float = CTAO_PIXEL_DEG
    energy_edges: u.Quantity = field(default_factory=lambda: CTAO_ENERGY_EDGES_TEV * u.TeV)

    def wcs(self, i):
        """Astropy WCS of patch ``i`` (see `patch_wcs`)."""
        return patch_wcs(self.lon[i], self.lat[i], self.npix, self.cdelt)

    def truth(self):
        """All patches' sources in one table, with a ``patch`` column."""
        return self._stacked_sources()


# -- rendering ---------------------------------------------------------------------------------
def _pixel_integrals(pos, sigma, npix):
    """Fraction of 1-D Gaussians falling in each pixel: ``(n_src, npix)``.

    Pixel ``j`` covers ``[j - 0.5, j + 0.5)``. Upper tails are computed from
    the mirrored side so far-wing differences keep their precision.
    """
    edges = np.arange(npix + 1) - 0.5
    t = (edges[None, :] - pos[:, None]) / sigma[:, None]
    lo, hi = t[:, :-1], t[:, 1:]
    return np.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))


def render_gaussian_sources(npix, x, y, counts, sigma_pix):
    """Expected counts of Gaussian sources, integrated over pixels.

    Parameters
    ----------
    npix : int or tuple of int
        Image width and height, or ``(ny, nx)``.
    x, y : `~numpy.ndarray`
        0-based pixel positions (may be outside the image).
    counts : `~numpy.ndarray`
        ``(n_src, n_bands)`` expected counts (on the whole sky).
    sigma_pix : `~numpy.ndarray`
        ``(n_src, n_bands)`` Gaussian sigma (pixels): PSF and source extension
        in quadrature.

    Returns
    -------
    `~numpy.ndarray`
        ``(n_bands, ny, nx)`` float32.
    """
    ny, nx = (npix, npix) if np.ndim(npix) == 0 else npix
    counts = np.atleast_2d(counts)
    nb = counts.shape[1]
    out = np.zeros((nb, ny, nx), np.float32)
    if len(x) == 0:
        return out
    for b in range(nb):
        gx = _pixel_integrals(np.asarray(x, float), sigma_pix[:, b], nx)
        gy = _pixel_integrals(np.asarray(y, float), sigma_pix[:, b], ny)
        # Separable Gaussians: the band image is one (ny, n) @ (n, nx) product.
        out[b] = gy.T @ (counts[:, b, None] * gx)
    return out


# -- diffuse emission --------------------------------------------------------------------------
def _lognormal_field(rng, shape, corr_pix, rms):
    """Log-normal random field with mean 1, made on a coarse grid and zoomed (cheap)."""
    step = max(1, int(corr_pix // 3))
    coarse = tuple(int(np.ceil(s / step)) + 2 for s in shape)
    g = ndimage.gaussian_filter(rng.standard_normal(coarse), corr_pix / step, mode="wrap")
    g /= g.std() + 1e-12
    fine = ndimage.zoom(g, step, order=1, mode="nearest")[:shape[0], :shape[1]]
    return np.exp(rms * fine - 0.5 * rms ** 2)


def diffuse_template(rng, lon_pix, lat_pix, corr_deg=0.15, rms_small=0.3):
    """One random realisation of the diffuse spatial template (peak mean ~1).

    Parameters
    ----------
    lon_pix, lat_pix : `~numpy.ndarray`
        Galactic longitude of each column and latitude of each row, deg.
    """
    width = rng.uniform(0.5, 1.0)
    b0 = rng.normal(0, 0.1)
    profile_b = np.exp(-0.5 * ((lat_pix - b0) / width) ** 2)
    lam = rng.uniform([10.0, 5.0, 3.0], [20.0, 10.0, 5.0])
    phase = rng.uniform(0, 2 * np.pi, 3)
    amp = 0.25
    mod = amp * np.sin(2 * np.pi * lon_pix[:, None] / lam + phase).sum(axis=1)
    # <exp(amp sin)> = I0(amp) ~ exp(amp^2 / 4) per term: divide it out so the mean is ~1.
    profile_l = np.exp(mod - 3 * amp ** 2 / 4)
    corr_pix = corr_deg / CTAO_PIXEL_DEG
    small = _lognormal_field(rng, (lat_pix.size, lon_pix.size), corr_pix, rms_small)
    return (profile_b[:, None] * profile_l[None, :] * small).astype(np.float32)


# -- simulator ---------------------------------------------------------------------------------
def _truncnorm(rng, lo, hi, sigma, size):
    """N(0, sigma) truncated to [lo, hi] (inverse CDF)."""
    a, b = ndtr(lo / sigma), ndtr(hi / sigma)
    return sigma * ndtri(rng.uniform(a, b, size))


def _powerlaw_flux(rng, smin, smax, slope, size):
    """Draws from dN/dS ~ S^-slope between smin and smax (inverse CDF)."""
    u_ = rng.uniform(0, 1, size)
    if abs(slope - 1) < 1e-9:
        return smin * (smax / smin) ** u_
    p = 1 - slope
    return (smin ** p + u_ * (smax ** p - smin ** p)) ** (1 / p)


def _stochastic_round(rng, x):
    return int(np.floor(x + rng.uniform()))


class CTAOSkySimulator:
    """Simulated CTAO-South Galactic-plane-survey patches (the slides' toy survey).

    See the module docstring of `astro_asid.simulate.ctao` for the response,
    population and diffuse recipes.

    Parameters
    ----------
    seed : int or `numpy.random.Generator`, optional
        Seed of every random draw.
    npix : int, optional
        Patch width in pixels of 0.02 deg (>= 16; 512 = the slides' 10.24 deg).
    livetime_h : float, optional
        Livetime per patch (hours; 20 is about the inner-Galaxy GPS depth).
    lon, lat : float, optional
        Fixed patch centre (deg), default (15.12, 0).
    random_centres : bool, optional
        Draw a centre per patch instead: l uniform in ``lon_range``, b
        uniform in ``[-lat_max, lat_max]``.
    lon_range : tuple of float, optional
        Longitude range of random centres (deg, may straddle 0), default the
        slides' -30..30.
    lat_max : float, optional
        Largest ``|b|`` of random centres (deg).
    density : float, optional
        Factor on the mean number of sources per patch.
    sources_per_deg2 : float, optional
        Mean surface density (per deg2, averaged over the patch) instead of
        the slides' 20-40 per 10.24 x 10.24 deg.
    lat_sigma_deg : float, optional
        Standard deviation of the source latitudes (deg).
    flux_range : tuple of float, optional
        Range of ``flux_1tev`` (cm-2 s-1).
    logn_logs_slope : float, optional
        ``dN/dS ~ S^-slope``.
    index_mean, index_sigma : float, optional
        Photon-index distribution (sigma sqrt(0.05) by default).
    point_fraction : float, optional
        Fraction of point-like sources.
    sigma_range_deg : tuple of float, optional
        Log-uniform range of the Gaussian sigma of extended sources (deg).
    diffuse_fraction : float, optional
        Diffuse over hadronic background in the 0.788-8.88 TeV band at the peak
        of the latitude profile (0 switches the diffuse emission off).
    diffuse_index : float, optional
        Photon index of the diffuse emission.
    background_scale : float, optional
        Factor on the hadronic background.
    irf : {"prod3b-south", "gammapy-ctao"}, optional
        Response (see the module docstring).
    margin_deg : float, optional
        Sources this far outside the patch are rendered too.

    Examples
    --------
    >>> from astro_asid.simulate import CTAOSkySimulator
    >>> sim = CTAOSkySimulator(seed=1, npix=64)
    >>> batch = sim.sample_patches(2)
    >>> batch.counts.shape
    (2, 3, 64, 64)
    """

    def __init__(self, seed=0, npix=512, livetime_h=CTAO_LIVETIME_H, lon=CTAO_GPS_CENTRE[0],
                 lat=CTAO_GPS_CENTRE[1], random_centres=False, lon_range=(-30.0, 30.0),
                 lat_max=1.0, density=1.0, sources_per_deg2=None, lat_sigma_deg=1.0,
                 flux_range=(1.5e-14, 2e-11), logn_logs_slope=2.0, index_mean=2.2,
                 index_sigma=np.sqrt(0.05), point_fraction=0.4, sigma_range_deg=(0.03, 0.5),
                 diffuse_fraction=0.25, diffuse_index=2.5, background_scale=1.0,
                 irf="prod3b-south", margin_deg=0.5):
        npix = int(npix)
        if npix < 16:
            raise ValueError(f"npix must be >= 16, got {npix}")
        self.npix = npix
        self.livetime_h = self._check_livetime(livetime_h)
        _require(np.ndim(self.livetime_h) == 0, "livetime_h of the simulator must be a number; "
                 "give one value per patch to sample_patches")
        _require(np.isfinite(lon) and abs(lat) <= 80, "lon must be finite and |lat| <= 80 deg")
        self.lon, self.lat = float(lon) % 360, float(lat)
        self.random_centres = bool(random_centres)
        self.lon_range = tuple(float(v) for v in lon_range)
        _require(len(self.lon_range) == 2 and self.lon_range[0] < self.lon_range[1],
                 f"lon_range must be (min, max) with min < max, got {lon_range}")
        self.lat_max = float(lat_max)
        _require(0 <= self.lat_max <= 80, f"lat_max must be in [0, 80] deg, got {lat_max}")
        self.density = float(density)
        _require(self.density >= 0, f"density must be >= 0, got {density}")
        self.sources_per_deg2 = None if sources_per_deg2 is None else float(sources_per_deg2)
        _require(self.sources_per_deg2 is None or self.sources_per_deg2 >= 0,
                 f"sources_per_deg2 must be >= 0, got {sources_per_deg2}")
        self.lat_sigma_deg = float(lat_sigma_deg)
        _require(self.lat_sigma_deg > 0, f"lat_sigma_deg must be > 0, got {lat_sigma_deg}")
        self.flux_range = tuple(float(v) for v in flux_range)
        _require(len(self.flux_range) == 2 and 0 < self.flux_range[0] < self.flux_range[1],
                 f"flux_range must be (min, max) with 0 < min < max, got {flux_range}")
        self.logn_logs_slope = float(logn_logs_slope)
        self.index_mean, self.index_sigma = float(index_mean), float(index_sigma)
        _require(self.index_sigma >= 0, f"index_sigma must be >= 0, got {index_sigma}")
        self.point_fraction = float(point_fraction)
        _require(0 <= self.point_fraction <= 1,
                 f"point_fraction must be in [0, 1], got {point_fraction}")
        self.sigma_range_deg = tuple(float(v) for v in sigma_range_deg)
        _require(len(self.sigma_range_deg) == 2
                 and 0 < self.sigma_range_deg[0] <= self.sigma_range_deg[1],
                 f"sigma_range_deg must be (min, max) with 0 < min <= max, got {sigma_range_deg}")
        self.diffuse_fraction = float(diffuse_fraction)
        _require(self.diffuse_fraction >= 0,
                 f"diffuse_fraction must be >= 0, got {diffuse_fraction}")
        self.diffuse_index = float(diffuse_index)
        self.background_scale = float(background_scale)
        _require(self.background_scale >= 0,
                 f"background_scale must be >= 0, got {background_scale}")
        self.margin_deg = float(margin_deg)
        _require(self.margin_deg >= 0, f"margin_deg must be >= 0, got {margin_deg}")
        self.response = _response(irf)  # raises ValueError on an unknown irf
        self.cdelt = CTAO_PIXEL_DEG
        self.rng = np.random.default_rng(seed)

    def __repr__(self):
        return (f"CTAOSkySimulator(npix={self.npix}, livetime_h={self.livetime_h:g}, "
                f"irf={self.response.irf!r}, density={self.density:g})")

    @staticmethod
    def _check_livetime(livetime_h):
        lt = np.asarray(livetime_h, float)
        if not np.all(np.isfinite(lt)) or np.any(lt <= 0):
            raise ValueError(f"livetime_h must be finite and > 0, got {livetime_h}")
        return lt if lt.ndim else float(lt)

    @property
    def energy_edges(self):
        """Reconstructed-energy band edges."""
        return CTAO_ENERGY_EDGES_TEV * u.TeV

    @property
    def psf_sigma_deg(self):
        """Gaussian PSF sigma per band."""
        return self.response.psf_sigma_deg * u.deg

    @property
    def width_deg(self):
        return self.npix * self.cdelt

    # -- centres and sources ---------------------------------------------------------------
    def _centres(self, n, lon, lat):
        if (lon is None) != (lat is None):
            raise ValueError("give both lon and lat, or neither")
        if lon is not None:
            lon = np.broadcast_to(np.asarray(lon, float), (n,)) % 360
            lat = np.broadcast_to(np.asarray(lat, float), (n,)).copy()
            _require(np.all(np.abs(lat) <= 80), "patch centres need |lat| <= 80 deg")
            return lon.copy(), lat
        if self.random_centres:
            lo, hi = self.lon_range
            return (self.rng.uniform(lo, hi, n) % 360,
                    self.rng.uniform(-self.lat_max, self.lat_max, n))
        return np.full(n, self.lon), np.full(n, self.lat)

    def _mean_number(self):
        """Mean number of sources inside one patch."""
        area = self.width_deg ** 2
        if self.sources_per_deg2 is not None:
            return self.sources_per_deg2 * area
        return self.rng.uniform(20, 40) * area / 10.24 ** 2 * self.density

    def _positions(self, n, lat_lo, lat_hi, half_l):
        dl = self.rng.uniform(-half_l, half_l, n)
        b = _truncnorm(self.rng, lat_lo, lat_hi, self.lat_sigma_deg, n)
        return dl, b

    def _patch_positions(self, lat0):
        """Offsets in l and latitudes of the sources inside and around one patch."""
        half = self.width_deg / 2
        # The patch's edges are the outer pixel edges; positions in [-0.5, npix - 0.5).
        lat_lo, lat_hi = lat0 - half, lat0 + half
        mean_in = self._mean_number()
        n_in = _stochastic_round(self.rng, mean_in)
        dl_in, b_in = self._positions(n_in, lat_lo, lat_hi, half)
        m = self.margin_deg
        dl_out = b_out = np.zeros(0)
        if m > 0 and mean_in > 0:
            s = self.lat_sigma_deg
            p_in = ndtr(lat_hi / s) - ndtr(lat_lo / s)
            p_ext = ndtr((lat_hi + m) / s) - ndtr((lat_lo - m) / s)
            mean_ext = mean_in * (half + m) * p_ext / (half * max(p_in, 1e-300))
            n_ext = self.rng.poisson(mean_ext)
            dl, b = self._positions(n_ext, lat_lo - m, lat_hi + m, half + m)
            out = (np.abs(dl) >= half) | (b < lat_lo) | (b >= lat_hi)
            dl_out, b_out = dl[out], b[out]
        inside = np.r_[np.ones(n_in, bool), np.zeros(dl_out.size, bool)]
        return np.r_[dl_in, dl_out], np.r_[b_in, b_out], inside

    def _spectra_and_shapes(self, n):
        lo, hi = self.flux_range
        flux = _powerlaw_flux(self.rng, lo, hi, self.logn_logs_slope, n)
        index = np.clip(self.rng.normal(self.index_mean, self.index_sigma, n), 1.2, 3.5)
        slo, shi = self.sigma_range_deg
        sigma = np.exp(self.rng.uniform(np.log(slo), np.log(shi), n))
        sigma[self.rng.uniform(size=n) < self.point_fraction] = 0.0
        return flux, index, sigma

    def sample_sources(self, lon0, lat0, livetime_s):
        """Sources in and around one patch centred on (lon0, lat0).

        Returns
        -------
        dict
            Arrays ``x``, ``y``, ``lon``, ``lat``, ``flux_1tev``, ``index``,
            ``sigma_deg``, ``ext_class``, ``counts_band`` and ``inside``.
        """
        dl, lat, inside = self._patch_positions(lat0)
        n = dl.size
        flux, index, sigma = self._spectra_and_shapes(n)
        c = (self.npix - 1) / 2
        x = c - dl / self.cdelt       # l grows to the left (CDELT1 < 0)
        y = c + (lat - lat0) / self.cdelt
        return dict(x=x, y=y, lon=(lon0 + dl) % 360, lat=lat, flux_1tev=flux, index=index,
                    sigma_deg=sigma, ext_class=extension_class(sigma),
                    counts_band=self.response.band_counts(flux, index, livetime_s),
                    inside=inside)

    # -- background --------------------------------------------------------------------------
    def _pixel_area_deg2(self, lat0):
        """Solid angle of each row's pixels (deg2): exact for the plate carree."""
        half = np.deg2rad(self.cdelt) / 2
        b = np.deg2rad(lat0 + (np.arange(self.npix) - (self.npix - 1) / 2) * self.cdelt)
        return self.cdelt * np.rad2deg(np.sin(b + half) - np.sin(b - half))

    def _diffuse_band_ratios(self):
        """Diffuse counts per band relative to the 0.788-8.88 TeV band (index-weighted Aeff)."""
        integ = self.response.band_exposure_integrals(self.diffuse_index)[0]
        return integ / integ[1]

    def expected_background(self, lon0, lat0, livetime_s):
        """Hadronic + diffuse expected counts of one patch: ``(3, npix, npix)`` float32."""
        area = self._pixel_area_deg2(lat0)                          # (npix,) per row
        had = self.response.background_counts_per_deg2(livetime_s)
        bkg = (self.background_scale * had[:, None] * area[None, :]).astype(np.float32)
        out = np.repeat(bkg[:, :, None], self.npix, axis=2)
        if self.diffuse_fraction > 0:
            c = (self.npix - 1) / 2
            pix = np.arange(self.npix)
            lon_pix = lon0 - (pix - c) * self.cdelt
            lat_pix = lat0 + (pix - c) * self.cdelt
            tmpl = diffuse_template(self.rng, lon_pix, lat_pix)
            # Relative to the unscaled hadronic counts of the middle band (pixel area at b=0).
            norm = self.diffuse_fraction * had[1] * self.cdelt ** 2
            ratios = (norm * self._diffuse_band_ratios()).astype(np.float32)
            out += ratios[:, None, None] * tmpl[None]
        return out

    # -- patches -----------------------------------------------------------------------------
    def sample_patches(self, n, livetime_h=None, lon=None, lat=None):
        """Simulate ``n`` patches.

        Parameters
        ----------
        n : int
            Number of patches.
        livetime_h : float or array-like, optional
            Livetime (hours), one value or one per patch; default the
            simulator's.
        lon, lat : float or array-like, optional
            Patch centres (deg); default the simulator's fixed or random centres.

        Returns
        -------
        `CTAOPatchBatch`
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        lt = np.asarray(self._check_livetime(self.livetime_h if livetime_h is None
                                             else livetime_h), float)
        if lt.ndim == 0:
            lt = np.full(n, float(lt))
        elif lt.shape != (n,):
            raise ValueError(f"livetime_h must be a number or {n} values (one per patch), "
                             f"got shape {lt.shape}")
        lon_c, lat_c = self._centres(n, lon, lat)
        shape = (n, 3, self.npix, self.npix)
        expected = np.empty(shape, np.float32)
        background = np.empty(shape, np.float32)
        sources, outside = [], []
        sigma_psf = self.response.psf_sigma_deg
        for i in range(n):
            seconds = lt[i] * 3600.0
            background[i] = self.expected_background(lon_c[i], lat_c[i], seconds)
            cat = self.sample_sources(lon_c[i], lat_c[i], seconds)
            sig = np.hypot(cat["sigma_deg"][:, None], sigma_psf[None, :]) / self.cdelt
            expected[i] = background[i] + render_gaussian_sources(
                self.npix, cat["x"], cat["y"], cat["counts_band"], sig)
            sources.append(_table(cat, cat["inside"]))
            outside.append(_table(cat, ~cat["inside"]))
        counts = self.rng.poisson(expected).astype(np.float32)
        return CTAOPatchBatch(counts=counts, expected=expected, background=background,
                              sources=sources, outside_sources=outside, lon=lon_c, lat=lat_c,
                              livetime=lt * u.h, psf_sigma_deg=self.psf_sigma_deg,
                              irf=self.response.irf, cdelt=self.cdelt)


def _require(ok, message):
    if not ok:
        raise ValueError(message)


# -- gammapy -------------------------------------------------------------------------------------
def to_gammapy_dataset(batch, i, models=False, n_true_per_band=8, name=None):
    """A gammapy `~gammapy.datasets.MapDataset` for patch ``i`` of a batch.

    The dataset has the patch's counts, its true background (hadronic +
    diffuse) as the background map, the exposure (effective area times
    livetime on a true-energy axis of ``n_true_per_band`` bins per band), a
    Gaussian `~gammapy.irf.PSFMap` with the band's sigma in each true-energy
    bin and a diagonal energy dispersion (true = reconstructed energy, as
    simulated).

    Parameters
    ----------
    batch : `CTAOPatchBatch`
        Simulated patches.
    i : int
        Patch index.
    models : bool, optional
        Also attach the true sources (inside and in the margin) as
        ``SkyModel(PointSpatialModel or GaussianSpatialModel,
        PowerLawSpectralModel)``, so that ``dataset.npred()`` reproduces
        ``batch.expected[i]`` (up to gammapy's PSF kernel truncation and
        spectral integration).
    n_true_per_band : int, optional
        True-energy bins per band.
    name : str, optional
        Dataset name (default ``"ctao-patch-{i}"``).

    Returns
    -------
    `~gammapy.datasets.MapDataset`
    """
    from gammapy.datasets import MapDataset
    from gammapy.irf import EDispKernelMap, PSFMap
    from gammapy.maps import Map, MapAxis, WcsGeom

    i = int(i)
    edges = batch.energy_edges.to_value(u.TeV)
    axis = MapAxis.from_energy_edges(edges * u.TeV, name="energy")
    true_edges = np.unique(np.concatenate(
        [np.geomspace(lo, hi, int(n_true_per_band) + 1) for lo, hi in zip(edges[:-1], edges[1:])]))
    axis_true = MapAxis.from_energy_edges(true_edges * u.TeV, name="energy_true")
    npix = batch.npix
    geom = WcsGeom(wcs=batch.wcs(i), npix=(npix, npix), axes=[axis])
    geom_true = geom.to_image().to_cube([axis_true])

    response = _response(batch.irf)
    centres = axis_true.center.to_value(u.TeV)
    livetime_s = float(batch.livetime[i].to_value(u.s))
    exposure = Map.from_geom(geom_true, unit="cm2 s")
    exposure.data[...] = (response.aeff(centres) * livetime_s)[:, None, None]

    band = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, len(edges) - 2)
    sigma = batch.psf_sigma_deg.to_value(u.deg)[band] * u.deg
    psf = PSFMap.from_gauss(axis_true, sigma=sigma)
    edisp = EDispKernelMap.from_diagonal_response(axis, axis_true)

    counts = Map.from_geom(geom, data=np.asarray(batch.counts[i], np.float32))
    background = Map.from_geom(geom, data=np.asarray(batch.background[i], np.float32))
    ds = MapDataset(counts=counts, background=background, exposure=exposure, psf=psf,
                    edisp=edisp, name=name or f"ctao-patch-{i}")
    if models:
        ds.models = _gammapy_source_models(batch, i) + [_background_model(ds.name)]
    return ds


def _background_model(dataset_name):
    from gammapy.modeling.models import FoVBackgroundModel
    return FoVBackgroundModel(dataset_name=dataset_name)


def _gammapy_source_models(batch, i):
    from gammapy.modeling.models import (GaussianSpatialModel, PointSpatialModel,
                                         PowerLawSpectralModel, SkyModel)
    from astropy.table import vstack

    tabs = [t for t in (batch.sources[i], batch.outside_sources[i]) if len(t)]
    if not tabs:
        return []
    t = vstack(tabs)
    models = []
    for k, row in enumerate(t):
        index = float(row["index"])
        amp = float(row["flux_1tev"]) * (index - 1) * u.Unit("cm-2 s-1 TeV-1")
        spectral = PowerLawSpectralModel(index=index, amplitude=amp, reference=1 * u.TeV)
        lon, lat, sig = float(row["lon"]), float(row["lat"]), float(row["sigma_deg"])
        if sig > 0:
            spatial = GaussianSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg,
                                           sigma=sig * u.deg, frame="galactic")
        else:
            spatial = PointSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, frame="galactic")
        models.append(SkyModel(spatial_model=spatial, spectral_model=spectral,
                               name=f"src-{k}"))
    return models

"""Fermi-LAT response of the simulator: counts per unit flux and PSF per energy band.

Both are calibrated on the data challenge's patches 0-63 (allowed by its rules
for instrument facts), from the noise-free ``agn + psr`` maps and the truth
positions and fluxes, by ``python -m astro_asid.simulate.calibrate``:

PSF
    A King profile per band, ``K(r) = (1 - 1/g) / (2 pi s^2) (1 + r^2 / (2 g s^2))^-g``,
    fitted jointly with the amplitudes of all sources in stamps around the
    bright sources of patches 0-63 (positions from the truth with the
    challenge WCS plus one common offset). This is the *effective* PSF of
    the challenge maps: the LAT PSF (P8R2 ULTRACLEANVETO, FRONT+BACK) blurred
    by the HEALPix nside-256 pixels (0.23 deg) the maps were made on and by the
    reprojection to 0.156 deg pixels. See `PSF_KING_SIGMA_DEG`,
    `PSF_KING_GAMMA` and the table in ``docs/simulate.rst``. The fit also
    measures the offset of the challenge's templates from their WCS position
    (`CHALLENGE_TEMPLATE_OFFSET_PIX`); our simulator does not reproduce it: it
    puts sources at their true positions.
Counts per unit flux ("exposure")
    ``counts_b = exposure_b * flux_b * exposure_scale`` with ``flux_b`` the
    photon flux in band ``b``. The challenge gives only ``flux_1000``
    (1-100 GeV) and ``flux_10000`` (10 GeV-1 TeV) per source, so the band
    fluxes of each calibration source are predicted from its
    ``flux_10000 / flux_1000`` ratio with the 4FGL-based spectral population of
    `~astro_asid.simulate.population` (median ``flux_b / flux_1000`` in bins
    of the ratio), and ``exposure_b`` is the median of ``counts_b / flux_b``,
    with ``counts_b`` the source's light inside the PSF truncation radius
    (`PSF_TRUNCATION_DEG`, 3.83 deg), as the simulator renders it.
    It is the exposure of the challenge maps averaged over the sky region of
    patches 0-63 (the north Galactic cap): the real LAT exposure varies by
    ~+-15 % over the sky, which is not modelled.

``exposure_scale = 1`` is the challenge's ~9.5 years; both sources and
background scale linearly with it (``years / 9.5``), so one simulator covers
mission lengths from ~1 to ~15 years and other survey depths.
"""

from functools import lru_cache

import numpy as np
from astropy import units as u

from .healpix import PATCH_CDELT

__all__ = ["FermiLATResponse", "CHALLENGE_YEARS", "EXPOSURE_CM2S", "PSF_KING_SIGMA_DEG",
           "PSF_KING_GAMMA", "PSF_TRUNCATION_DEG", "CHALLENGE_TEMPLATE_OFFSET_PIX",
           "PSF_FIT_RESIDUAL", "king_profile", "king_cdf", "king_containment_radius"]

#: Mission length of the data challenge (495 weeks, Aug 2008 - Feb 2018).
CHALLENGE_YEARS = 9.5

#: Calibrated counts per unit photon flux per band (cm2 s) for 9.5 years: the median over
#: the 114 calibration sources of (counts inside the truncation radius) / (band photon flux).
EXPOSURE_CM2S = np.array([2.249e11, 2.634e11, 3.278e11, 3.328e11, 3.829e11])

#: King sigma per band, deg (effective PSF of the challenge maps; fitted in 10/64 deg pixels:
#: 1.4781, 1.1185, 0.8939, 0.6981, 0.5728).
PSF_KING_SIGMA_DEG = np.array([1.47805648, 1.1184725, 0.89393081, 0.69805471,
                               0.57280011]) * PATCH_CDELT

#: King gamma per band.
PSF_KING_GAMMA = np.array([1.26171328, 1.72426386, 2.21913677, 3.22738123, 2.67930928])

#: The PSF is truncated at this radius and renormalised inside it (deg; 24.5 challenge
#: pixels). The 0.5-1 GeV King fit has gamma 1.26, whose untruncated tail would hold 29 %
#: of the light beyond 3.8 deg, where the calibration stamps cannot constrain it.
PSF_TRUNCATION_DEG = 24.5 * PATCH_CDELT

#: Measured (x, y) offset of the challenge's source templates from their WCS positions,
#: pixels: in the bottom band (fitted with 14-pixel stamps; used for bands 0-3) and in the
#: top band, where the HEALPix pixelisation of the challenge maps dominates.
CHALLENGE_TEMPLATE_OFFSET_PIX = {"band0": (-0.269, -0.247), "band4": (-0.385, -0.297)}

#: Relative squared residual of the King fits per band (HEALPix pixelisation of the
#: challenge templates dominates in the upper bands).
PSF_FIT_RESIDUAL = np.array([0.050, 0.111, 0.187, 0.336, 0.397])


def king_profile(r, sigma, gamma):
    """King PSF per unit area at radius ``r`` (same unit as ``sigma``), normalised to 1."""
    r = np.asarray(r, float)
    return (1 - 1 / gamma) / (2 * np.pi * sigma ** 2) * (
        1 + r ** 2 / (2 * gamma * sigma ** 2)) ** (-gamma)


def king_containment_radius(fraction, sigma, gamma, truncation=None):
    """Radius containing ``fraction`` of a King PSF (same unit as ``sigma``).

    With ``truncation``, of the profile truncated at that radius and renormalised.
    """
    f = np.asarray(fraction, float)
    if truncation is not None:
        f = f * king_cdf(truncation, sigma, gamma)
    return sigma * np.sqrt(2 * gamma * ((1 - f) ** (1 / (1 - gamma)) - 1))


def king_cdf(r, sigma, gamma):
    """Fraction of a King PSF within radius ``r``."""
    r = np.asarray(r, float)
    return 1 - (1 + r ** 2 / (2 * gamma * sigma ** 2)) ** (1 - gamma)


@lru_cache(maxsize=64)
def _stamp_bank(sigma_pix, gamma, half, phases, oversample, trunc_pix=np.inf):
    """Pixel-integrated King stamps at sub-pixel phases: ``(phases, phases, 2h+1, 2h+1)``."""
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    offs = (np.arange(phases) + 0.5) / phases - 0.5
    grid = np.arange(-half, half + 1, dtype=float)
    # 1-D sample positions along an axis for each phase: (phases, 2h+1, oversample).
    ax = grid[None, :, None] + sub[None, None, :] - offs[:, None, None]
    # Explicit loops keep memory small: phases^2 stamps of (2h+1)^2 x oversample^2.
    bank = np.empty((phases, phases, 2 * half + 1, 2 * half + 1))
    for qy in range(phases):
        yy = ax[qy][:, None, :, None]           # (ny, 1, os, 1)
        for qx in range(phases):
            xx = ax[qx][None, :, None, :]       # (1, nx, 1, os)
            r = np.sqrt(xx ** 2 + yy ** 2)
            bank[qy, qx] = (king_profile(r, sigma_pix, gamma) * (r <= trunc_pix)).mean(axis=(2, 3))
    # Renormalise inside the stamp: the truncated tail goes back into it (counts conserved).
    bank /= bank.sum(axis=(2, 3), keepdims=True)
    return bank.astype(np.float32)


class FermiLATResponse:
    """Counts per unit flux and PSF of the simulated LAT, per energy band.

    Parameters
    ----------
    exposure_scale : float, optional
        Exposure relative to the data challenge's ~9.5 years (e.g. ``1 / 9.5``
        for one year, ``15 / 9.5`` for fifteen).
    psf_scale : float, optional
        Multiplies the PSF width (robustness tests; 1 = calibrated).
    """

    energy_edges = [0.5, 1, 2, 7, 20, 200] * u.GeV

    def __init__(self, exposure_scale=1.0, psf_scale=1.0):
        exposure_scale = float(exposure_scale)
        psf_scale = float(psf_scale)
        if not np.isfinite(exposure_scale) or exposure_scale <= 0:
            raise ValueError(f"exposure_scale must be > 0, got {exposure_scale}")
        if not np.isfinite(psf_scale) or psf_scale <= 0:
            raise ValueError(f"psf_scale must be > 0, got {psf_scale}")
        self.exposure_scale = exposure_scale
        self.psf_scale = psf_scale

    @classmethod
    def from_years(cls, years, **kwargs):
        """Response for a mission length in years (exposure ``years / 9.5`` of the challenge's)."""
        return cls(exposure_scale=float(years) / CHALLENGE_YEARS, **kwargs)

    @property
    def years(self):
        """Equivalent mission length, years."""
        return self.exposure_scale * CHALLENGE_YEARS

    @property
    def n_bands(self):
        return len(EXPOSURE_CM2S)

    @property
    def exposure(self):
        """Counts per unit photon flux per band, ``Quantity`` cm2 s."""
        return EXPOSURE_CM2S * self.exposure_scale * u.cm ** 2 * u.s

    def counts(self, flux_band):
        """Expected counts per band from photon fluxes ``(..., 5)`` in cm-2 s-1."""
        return np.asarray(flux_band, float) * EXPOSURE_CM2S * self.exposure_scale

    @property
    def psf_sigma_deg(self):
        """King sigma per band, deg."""
        return PSF_KING_SIGMA_DEG * self.psf_scale

    @property
    def psf_gamma(self):
        """King gamma per band."""
        return PSF_KING_GAMMA.copy()

    @property
    def psf_truncation_deg(self):
        """Radius at which the PSF is truncated (and renormalised), deg."""
        return PSF_TRUNCATION_DEG * self.psf_scale

    def containment_radius(self, fraction=0.68):
        """Containment radius per band of the (truncated) PSF, ``Quantity`` deg."""
        return king_containment_radius(fraction, self.psf_sigma_deg, self.psf_gamma,
                                       self.psf_truncation_deg) * u.deg

    def psf(self, band, r_deg):
        """PSF per deg^2 of band ``band`` at radii ``r_deg`` (truncated, normalised to 1)."""
        s, g, t = self.psf_sigma_deg[band], self.psf_gamma[band], self.psf_truncation_deg
        r = np.asarray(r_deg, float)
        return king_profile(r, s, g) * (r <= t) / king_cdf(t, s, g)

    def stamp_half_size(self, band, cdelt=PATCH_CDELT, fraction=0.99, max_half=24):
        """Half-width in pixels of the PSF stamps of a band (containment ``fraction``, capped)."""
        r = king_containment_radius(fraction, self.psf_sigma_deg[band], self.psf_gamma[band],
                                    self.psf_truncation_deg)
        return int(min(max_half, max(2, np.ceil(r / cdelt))))

    def stamp_bank(self, band, cdelt=PATCH_CDELT, half=None, phases=8, oversample=5):
        """Pixel-integrated PSF stamps at ``phases x phases`` sub-pixel offsets.

        Returns
        -------
        `~numpy.ndarray`
            ``(phases, phases, 2 half + 1, 2 half + 1)`` float32, each summing to
            1. Stamp ``[qy, qx]`` is the PSF centred at offset
            ``((q + 0.5) / phases - 0.5)`` pixel from the central pixel's centre.
        """
        if half is None:
            half = self.stamp_half_size(band, cdelt)
        return _stamp_bank(float(self.psf_sigma_deg[band] / cdelt), float(self.psf_gamma[band]),
                           int(half), int(phases), int(oversample),
                           float(self.psf_truncation_deg / cdelt))

    def __repr__(self):
        return (f"FermiLATResponse(exposure_scale={self.exposure_scale:g} "
                f"(~{self.years:.1f} yr), psf_scale={self.psf_scale:g})")

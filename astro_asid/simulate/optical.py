"""Simulated optical CCD fields with truth catalogs (numpy/scipy only).

What is in a field
------------------
- Stars: Moffat PSF (FWHM 1.8-5 px by default, down to 1 px and below with
  ``fwhm_range``; beta 2.5-5), integrated over the pixel (3x3 sub-samples
  for FWHM >= 1.8 px, more below: at least 7 per FWHM, so that the pixel
  values stay within 1.5 % of the exact integral); magnitudes drawn from
  ``dN/dm ~ 10**(0.25 m)`` between the saturation limit minus one magnitude
  and about 1.5 mag beyond the field's 5-sigma limit, so faint undetectable
  stars add confusion noise as in real data.
- Crowding (stars per pixel): ``"empty"``, ``"sparse"`` (5e-4-2e-3),
  ``"moderate"`` (3e-3-1e-2) and ``"crowded"`` (2e-2-6e-2, a globular
  cluster: a Plummer profile whose centre lies in or near the field).
- PSF variation (``psf_variation`` = v > 0, off by default): the FWHM
  varies over the field as ``fwhm * (1 + v f(x, y))``, ``f`` a random
  quadratic polynomial scaled to [-1, 1] over the frame, and the PSF is
  elliptical (``ellipticity = 1 - b/a`` up to v, orientation varying with
  position; the FWHM is the geometric mean of the axes). Every star is
  rendered with its local PSF, every galaxy convolved with the PSF at its
  centre; the truth gets the local ``fwhm`` and ``meta["psf_field"]`` the
  polynomials (`OpticalField.psf_at`).
- Galaxies: Sersic profiles (n 0.5-4, effective radius 0.8-6 px, axis
  ratio 0.3-1) convolved with the PSF (on the sub-pixel grid, then
  integrated over the pixels, when the PSF is narrower than 1.8 px or
  varies; the default fields convolve the pixel-integrated profiles).
- Detector: sky (50-3000 e-/px with a +-5 % gradient), Poisson noise, read
  noise (3-12 e-), gain (0.8-3 e-/ADU), a bias pedestal, and saturation
  (20,000-65,000 ADU above the bias; saturated pixels are clipped and
  flagged). With ``bleed``, the charge above the full well (the saturation
  level in electrons) first flows up and down the column into the
  neighbouring pixels until they are full too (charge is conserved), as in
  a real CCD; the streaks are listed in `OpticalField.bleeds`.
- Artefacts that are *not* sources: cosmic rays (sharp 1-8 px tracks, not
  blurred by the PSF) and, in 30 % of the fields, a satellite trail across
  the field. Their pixels are listed in ``artefact_mask`` (1 cosmic ray,
  2 trail, 3 bleed: pixels that received charge from an over-full one, of
  a star or a cosmic ray; the bleeding star's own pixels are not marked, it
  stays a source).

Everything is in pixels with 0-based pixel centres (numpy/photutils
convention); ``flux`` is the total flux in ADU above the bias and sky,
``mag = zeropoint - 2.5 log10(flux)``.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import fftconvolve

__all__ = ["OpticalSkySimulator", "OpticalField", "CROWDING_LEVELS", "moffat_alpha",
           "optical_wcs"]

#: Star density ranges (stars per pixel) of each crowding level.
CROWDING_LEVELS = {
    "empty": (0.0, 0.0),
    "sparse": (5e-4, 2e-3),
    "moderate": (3e-3, 1e-2),
    "crowded": (2e-2, 6e-2),
}

_SUB = 3  # sub-pixel sampling of the profiles (PSF FWHM >= _FWHM_SUB3)
_FWHM_SUB3 = 1.8  # below this FWHM, 3 sub-samples are too coarse (2-3 % error at 1 px)
_PER_FWHM = 7.0  # sub-samples per FWHM below _FWHM_SUB3 (<= 0.6 % error)
_STAMP_VALUES = 4_000_000  # sub-sampled values per batch of stamps (memory)
_MAX_PSF_VARIATION = 0.5


def _subsampling(fwhm):
    """Sub-samples per pixel side for a PSF whose narrowest FWHM is ``fwhm`` (px).

    3 from 1.8 px up (as the simulator always did, so that the default fields
    are unchanged); below, the smallest odd number giving >= 7 per FWHM.
    """
    if fwhm >= _FWHM_SUB3:
        return _SUB
    return 2 * int(np.ceil((_PER_FWHM / fwhm - 1.0) / 2.0)) + 1


def moffat_alpha(fwhm, beta):
    """Moffat core width ``alpha`` for a given FWHM and ``beta``."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _moffat(dx, dy, alpha, beta, q=None, theta=None):
    """Moffat profile (peak 1); elliptical with axis ratio ``q`` and the major
    axis at ``theta`` (rad from +x towards +y), ``alpha`` the geometric mean."""
    if q is None:
        return (1.0 + (dx ** 2 + dy ** 2) / alpha ** 2) ** (-beta)
    c, s = np.cos(theta), np.sin(theta)
    u = dx * c + dy * s
    w = -dx * s + dy * c
    return (1.0 + (u ** 2 * q + w ** 2 / q) / alpha ** 2) ** (-beta)


def _poly_terms(x, y, shape):
    """Quadratic terms ``1, u, v, u^2, uv, v^2`` of the frame coordinates
    scaled to [-1, 1] (pixel edges), shape ``(6,) + x.shape``."""
    ny, nx = shape
    u = 2.0 * (np.asarray(x, float) + 0.5) / nx - 1.0
    v = 2.0 * (np.asarray(y, float) + 0.5) / ny - 1.0
    return np.stack([np.ones_like(u), u, v, u ** 2, u * v, v ** 2])


def _local_psf(meta, shape, x, y):
    """Local FWHM, ellipticity and major-axis angle at ``(x, y)`` for a field's meta."""
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    pf = meta.get("psf_field")
    if not pf:
        return np.full(x.shape, float(meta["fwhm"])), np.zeros(x.shape), np.zeros(x.shape)
    t = _poly_terms(x, y, shape)
    amp = float(pf["amplitude"])
    f = np.clip(np.tensordot(pf["fwhm_coeffs"], t, 1), -1.0, 1.0)
    e1 = np.tensordot(pf["e1_coeffs"], t, 1)
    e2 = np.tensordot(pf["e2_coeffs"], t, 1)
    return (float(meta["fwhm"]) * (1.0 + amp * f), np.minimum(np.hypot(e1, e2), amp),
            0.5 * np.arctan2(e2, e1))


def _sersic_b(n):
    # Ciotti & Bertin (1999) expansion, good to 1e-4 for n > 0.36
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n ** 2)


@dataclass
class OpticalField:
    """One simulated field.

    Attributes
    ----------
    image : `~numpy.ndarray`
        ``(ny, nx)`` float32 in ADU (bias and sky included, saturation clipped).
    truth : dict of `~numpy.ndarray`
        One entry per source: ``x``, ``y``, ``flux`` (ADU), ``mag``,
        ``is_star``, ``r_eff`` (px, 0 for stars), ``sersic_n``, ``q``,
        ``snr`` (matched-filter signal-to-noise against sky and read noise),
        ``saturated`` (a pixel of the source reached saturation); with PSF
        variation also ``fwhm``, the local PSF FWHM at the source (px).
    cosmic_rays : dict of `~numpy.ndarray`
        ``x``, ``y`` (centroid), ``npix``.
    trails : list of dict
        ``x0, y0, x1, y1`` end points and ``peak_snr``.
    artefact_mask : `~numpy.ndarray`
        uint8; 1 where a cosmic ray deposited charge, 2 on a trail, 3 where
        charge bled from a saturated pixel (the first code set is kept).
    saturated : `~numpy.ndarray`
        bool; pixels at the saturation level.
    meta : dict
        ``fwhm`` (the field's PSF FWHM; the centre of the range of the local
        ones with PSF variation), ``beta``, ``gain``, ``read_noise``,
        ``sky_adu``, ``bias``, ``saturation``, ``zeropoint``, ``rms_adu``,
        ``crowding``, ``density``, ``mag_limit_5sigma``, ``psf_variation``,
        ``bleed`` (whether charge bled in this field) and, with PSF
        variation, ``psf_field`` (the polynomials of `psf_at`).
    bleeds : dict of `~numpy.ndarray`
        The bleed streaks, one per column and contiguous run: ``x`` (the
        column), ``y0``, ``y1`` (first and last rows, the saturated core
        included) and ``electrons`` (the charge that bled out of the core).
    """

    image: np.ndarray
    truth: dict
    cosmic_rays: dict
    trails: list
    artefact_mask: np.ndarray
    saturated: np.ndarray
    meta: dict = field(default_factory=dict)
    bleeds: dict = field(default_factory=lambda: _no_bleeds())

    def psf_at(self, x, y):
        """The local PSF at pixel positions ``(x, y)``.

        Returns
        -------
        fwhm, ellipticity, theta : `~numpy.ndarray`
            FWHM (px, geometric mean of the axes), ``1 - b/a`` and the major
            axis' angle (rad, from +x towards +y); the field's ``fwhm``, 0 and
            0 without PSF variation.
        """
        return _local_psf(self.meta, self.image.shape, x, y)

    def truth_table(self):
        """The truth as an `~astropy.table.Table`."""
        from astropy.table import Table
        return Table({k: np.asarray(v) for k, v in self.truth.items()})

    def to_hdu(self, wcs=None):
        """A `~astropy.io.fits.PrimaryHDU` with the image and the detector keywords."""
        from astropy.io import fits
        hdr = wcs.to_header() if wcs is not None else fits.Header()
        m = self.meta
        hdr["GAIN"] = (float(m["gain"]), "e-/ADU")
        hdr["RDNOISE"] = (float(m["read_noise"]), "e-")
        hdr["SATURATE"] = (float(m["saturation"] + m["bias"]), "ADU")
        hdr["MAGZP"] = (float(m["zeropoint"]), "mag for 1 ADU")
        hdr["SEEING"] = (float(m["fwhm"]), "PSF FWHM in pixels")
        hdr["BUNIT"] = "adu"
        return fits.PrimaryHDU(self.image, header=hdr)


def _no_bleeds():
    return {"x": np.zeros(0, int), "y0": np.zeros(0, int), "y1": np.zeros(0, int),
            "electrons": np.zeros(0)}


def optical_wcs(shape, pixel_scale_arcsec=0.5, center=(150.0, 2.0)):
    """A TAN `~astropy.wcs.WCS` for a simulated field."""
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(center)
    w.wcs.crpix = [shape[1] / 2.0 + 0.5, shape[0] / 2.0 + 0.5]
    w.wcs.cdelt = [-pixel_scale_arcsec / 3600.0, pixel_scale_arcsec / 3600.0]
    w.pixel_shape = (shape[1], shape[0])
    return w


class OpticalSkySimulator:
    """Random optical CCD fields with truth (see the module docstring).

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of a field.
    crowding : str or sequence of str
        One of `CROWDING_LEVELS`, or several to draw from per field
        (default: sparse, moderate and crowded equally often).
    fwhm_range, beta_range : tuple
        PSF FWHM (px, log-uniform; pixel integration is accurate to ~1 %
        down to 1 px) and Moffat beta ranges.
    sky_range : tuple
        Sky level (e-/px, log-uniform).
    galaxy_density : tuple
        Galaxies per pixel (uniform).
    cosmic_ray_density : tuple
        Cosmic rays per pixel (log-uniform).
    trail_probability : float
        Chance that a field has a satellite trail.
    zeropoint : float
        Magnitude of 1 ADU.
    psf_variation : float
        Amplitude ``v`` (0 to 0.5) of the PSF variation over a field: the local
        FWHM spans ``fwhm * (1 +- v)`` and the ellipticity reaches ``v``
        (see the module docstring). 0 (the default) is one round PSF.
    bleed : bool or float
        Whether the charge above the full well bleeds along the columns
        (`True`: in every field, `False`: never), or the chance that it does
        in a field.
    seed : int or `~numpy.random.Generator`

    Notes
    -----
    The fields of a seed do not depend on the options that are off by
    default as long as they are off. ``bleed=True`` draws no random number,
    so the fields of a seed only gain their bleed streaks (and the
    ``saturated`` flag of sources under them). ``psf_variation`` draws its
    polynomials after the sources, so the first field keeps its sources
    (not its noise); a fractional ``bleed`` draws one number per field.
    """

    def __init__(self, shape=(128, 128), crowding=("sparse", "moderate", "crowded"),
                 fwhm_range=(1.8, 5.0), beta_range=(2.5, 5.0), sky_range=(50.0, 3000.0),
                 galaxy_density=(3e-4, 3e-3), cosmic_ray_density=(1e-4, 1e-3),
                 trail_probability=0.3, zeropoint=25.0, psf_variation=0.0, bleed=False,
                 seed=0):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (ny, nx) with sides >= 16, got {shape}")
        crowding = [crowding] if isinstance(crowding, str) else list(crowding)
        for c in crowding:
            if c not in CROWDING_LEVELS:
                raise ValueError(f"unknown crowding {c!r}; use one of {sorted(CROWDING_LEVELS)}")
        self.crowding = crowding
        lo, hi = (float(v) for v in fwhm_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"fwhm_range must be (lo, hi) with 0 < lo <= hi, got {fwhm_range}")
        self.fwhm_range = fwhm_range
        self.psf_variation = float(psf_variation)
        if not 0.0 <= self.psf_variation <= _MAX_PSF_VARIATION:
            raise ValueError(f"psf_variation must be in [0, {_MAX_PSF_VARIATION}], "
                             f"got {psf_variation}")
        self.bleed = float(bleed)
        if not 0.0 <= self.bleed <= 1.0:
            raise ValueError(f"bleed must be True, False or a probability, got {bleed}")
        self.beta_range = beta_range
        self.sky_range = sky_range
        self.galaxy_density = galaxy_density
        self.cosmic_ray_density = cosmic_ray_density
        self.trail_probability = float(trail_probability)
        self.zeropoint = float(zeropoint)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    # -- rendering ------------------------------------------------------------------
    @staticmethod
    def _add_stamps(img, stamps, x0, y0):
        """Add ``(n, s, s)`` stamps whose lower-left pixels are ``(x0, y0)``, clipped."""
        ny, nx = img.shape
        s = stamps.shape[-1]
        yy, xx = np.mgrid[:s, :s]
        for st, a, b in zip(stamps, x0, y0):
            ys, xs = yy + b, xx + a
            ok = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
            np.add.at(img, (ys[ok], xs[ok]), st[ok])

    def _star_stamps(self, x, y, fwhm, beta, ellipticity=None, theta=None):
        """Unit-sum Moffat stamps (pixel-integrated) and their lower-left pixels.

        ``fwhm`` is one value or one per star; ``ellipticity`` and ``theta``
        (per star) make the PSF elliptical (`_moffat`).
        """
        if np.ndim(fwhm) == 0 and ellipticity is None:
            # one round PSF: the code path of the default fields (bit for bit)
            fwhm = float(fwhm)
            alpha, q, t = moffat_alpha(fwhm, beta), None, None
            major = minor = fwhm
        else:
            fwhm = np.broadcast_to(np.asarray(fwhm, float), np.shape(x))
            q = 1.0 - (np.zeros(np.shape(x)) if ellipticity is None
                       else np.asarray(ellipticity, float))
            t = np.zeros(np.shape(x)) if theta is None else np.asarray(theta, float)
            alpha = moffat_alpha(fwhm, beta)
            major = float(np.max(fwhm / np.sqrt(q), initial=0.0))
            minor = float(np.min(fwhm * np.sqrt(q), initial=np.inf))
        sub = _subsampling(minor)
        h = int(np.ceil(3.0 * major)) + 2
        s = 2 * h + 1
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        # sub-pixel grid relative to the stamp's centre pixel
        g = (np.arange(s * sub) - (s * sub - 1) / 2.0) / sub
        out = np.empty((len(x), s, s), np.float32)
        batch = 256
        if q is not None or sub != _SUB:
            batch = int(np.clip(_STAMP_VALUES // (s * sub) ** 2, 1, 256))
        for i0 in range(0, len(x), batch):
            sl = slice(i0, i0 + batch)
            dx = g[None, None, :] - (x[sl] - ix[sl])[:, None, None]
            dy = g[None, :, None] - (y[sl] - iy[sl])[:, None, None]
            if q is None:
                prof = _moffat(dx, dy, alpha, beta)
            else:
                prof = _moffat(dx, dy, alpha[sl, None, None], beta, q[sl, None, None],
                               t[sl, None, None])
            prof = prof.reshape(-1, s, sub, s, sub).sum(axis=(2, 4))
            out[sl] = prof / prof.sum(axis=(1, 2), keepdims=True)
        return out, ix - h, iy - h

    def _psf_kernel(self, fwhm, beta, ellipticity=0.0, theta=0.0, sub=None):
        """The centred PSF, unit sum: round and pixel-integrated without ``sub``
        (the default fields), else point-sampled on a grid ``sub`` times finer
        than the pixels (for `_galaxy_stamp`)."""
        if sub is None:
            st, _, _ = self._star_stamps(np.zeros(1), np.zeros(1), fwhm, beta)
            return st[0]
        q = 1.0 - ellipticity
        h = int(np.ceil(3.0 * fwhm / np.sqrt(q))) + 2
        g = (np.arange((2 * h + 1) * sub) - ((2 * h + 1) * sub - 1) / 2.0) / sub
        k = _moffat(g[None, :], g[:, None], moffat_alpha(fwhm, beta), beta,
                    q if ellipticity else None, theta)
        return k / k.sum()

    def _galaxy_stamp(self, x, y, r_eff, n, q, pa, kernel, sub=None):
        """Unit-sum PSF-convolved Sersic stamp and its lower-left pixel.

        Without ``sub``, the profile is integrated over the pixels (3x3
        sub-samples) and convolved with the pixel-integrated PSF ``kernel``
        (the default fields). With ``sub``, ``kernel`` is the PSF on the
        ``sub``-times finer grid: the profile is convolved on that grid, then
        integrated over the pixels, which does not count the pixel twice (it
        matters for an undersampled PSF).
        """
        fine = sub is not None
        sub = sub if fine else _SUB
        kh = kernel.shape[0] // sub // 2 if fine else kernel.shape[0] // 2
        h = int(np.ceil(5.0 * r_eff)) + kh + 1
        s = 2 * h + 1
        ix, iy = int(np.rint(x)), int(np.rint(y))
        g = (np.arange(s * sub) - (s * sub - 1) / 2.0) / sub
        dx = g[None, :] - (x - ix)
        dy = g[:, None] - (y - iy)
        c, si = np.cos(pa), np.sin(pa)
        u = dx * c + dy * si
        v = -dx * si + dy * c
        r = np.sqrt(u ** 2 + (v / q) ** 2)
        prof = np.exp(-_sersic_b(n) * ((r / r_eff) ** (1.0 / n) - 1.0))
        if fine:
            conv = np.clip(fftconvolve(prof, kernel, mode="same"), 0, None)
            conv = conv.reshape(s, sub, s, sub).sum(axis=(1, 3))
        else:
            prof = prof.reshape(s, sub, s, sub).sum(axis=(1, 3))
            conv = np.clip(fftconvolve(prof, kernel, mode="same"), 0, None)
        return (conv / conv.sum()).astype(np.float32), ix - h, iy - h

    # -- one field --------------------------------------------------------------------
    def sample(self, crowding=None):
        """Simulate one `OpticalField` (``crowding`` overrides the random choice)."""
        if crowding is not None and crowding not in CROWDING_LEVELS:
            raise ValueError(f"unknown crowding {crowding!r}; use one of {sorted(CROWDING_LEVELS)}")
        rng = self.rng
        ny, nx = self.shape
        crowd = crowding or self.crowding[rng.integers(len(self.crowding))]
        fwhm = float(np.exp(rng.uniform(*np.log(self.fwhm_range))))
        beta = float(rng.uniform(*self.beta_range))
        gain = float(rng.uniform(0.8, 3.0))
        rn = float(rng.uniform(3.0, 12.0))
        sky_e = float(np.exp(rng.uniform(*np.log(self.sky_range))))
        bias = float(rng.uniform(0.0, 1000.0))
        sat = float(rng.uniform(20000.0, 65000.0))
        zp = self.zeropoint + float(rng.uniform(-1.0, 1.0))
        rms_adu = np.sqrt(sky_e + rn ** 2) / gain

        kernel = self._psf_kernel(fwhm, beta)
        n_eff = 1.0 / float((kernel.astype(float) ** 2).sum())
        # 5-sigma point-source flux and the flux whose peak pixel saturates
        f5 = 5.0 * rms_adu * np.sqrt(n_eff)
        fsat = sat / float(kernel.max())
        m_lim = zp - 2.5 * np.log10(f5)
        m_bright = zp - 2.5 * np.log10(fsat) - 1.0
        m_faint = m_lim + 1.5

        # stars
        lo, hi = CROWDING_LEVELS[crowd]
        density = float(rng.uniform(lo, hi)) if hi > 0 else 0.0
        n_star = rng.poisson(density * nx * ny)
        if crowd == "crowded":
            # a globular cluster: Plummer profile centred in or near the field
            a = float(rng.uniform(0.3, 1.2)) * max(nx, ny)
            cx, cy = rng.uniform(-0.2, 1.2) * nx, rng.uniform(-0.2, 1.2) * ny
            xs, ys = self._plummer(n_star, cx, cy, a, nx, ny)
        else:
            xs, ys = rng.uniform(-0.5, nx - 0.5, n_star), rng.uniform(-0.5, ny - 0.5, n_star)
        ms = self._magnitudes(n_star, m_bright, m_faint)

        # galaxies
        n_gal = rng.poisson(rng.uniform(*self.galaxy_density) * nx * ny)
        xg, yg = rng.uniform(-0.5, nx - 0.5, n_gal), rng.uniform(-0.5, ny - 0.5, n_gal)
        mg = self._magnitudes(n_gal, m_bright + 1.0, m_faint)
        r_eff = np.exp(rng.uniform(np.log(0.8), np.log(6.0), n_gal))
        sn = rng.uniform(0.5, 4.0, n_gal)
        q = rng.uniform(0.3, 1.0, n_gal)
        pa = rng.uniform(0, np.pi, n_gal)

        # the PSF over the field (drawn after the sources: the first field keeps them)
        psf_meta = {"fwhm": fwhm}
        if self.psf_variation > 0:
            psf_meta["psf_field"] = self._psf_field(self.psf_variation)
        fwhm_s, e_s, t_s = _local_psf(psf_meta, self.shape, xs, ys)
        fwhm_g, e_g, t_g = _local_psf(psf_meta, self.shape, xg, yg)

        flux_s = 10.0 ** (-0.4 * (ms - zp))
        flux_g = 10.0 ** (-0.4 * (mg - zp))
        src = np.zeros((ny, nx), np.float64)
        if self.psf_variation > 0:
            stamps, x0, y0 = self._star_stamps(xs, ys, fwhm_s, beta, e_s, t_s)
        else:
            stamps, x0, y0 = self._star_stamps(xs, ys, fwhm, beta)
        self._add_stamps(src, stamps * flux_s[:, None, None].astype(np.float32), x0, y0)
        snr_s = flux_s * np.sqrt((stamps.astype(float) ** 2).sum(axis=(1, 2))) / rms_adu
        peak_s = flux_s * stamps.max(axis=(1, 2))
        snr_g, peak_g = np.empty(n_gal), np.empty(n_gal)
        # the default fields (one PSF, FWHM >= 1.8 px) keep their rendering bit for bit
        legacy = self.psf_variation == 0 and _subsampling(fwhm) == _SUB
        for i in range(n_gal):
            if legacy:
                k, sub = kernel, None
            else:
                sub = _subsampling(fwhm_g[i] * np.sqrt(1.0 - e_g[i]))
                k = self._psf_kernel(fwhm_g[i], beta, e_g[i], t_g[i], sub=sub)
            st, a0, b0 = self._galaxy_stamp(xg[i], yg[i], r_eff[i], sn[i], q[i], pa[i], k, sub)
            self._add_stamps(src, (st * flux_g[i])[None], [a0], [b0])
            snr_g[i] = flux_g[i] * np.sqrt((st.astype(float) ** 2).sum()) / rms_adu
            peak_g[i] = flux_g[i] * st.max()

        # sky with a gradient, then electrons
        yy, xx = np.mgrid[:ny, :nx]
        gx, gy = rng.uniform(-0.05, 0.05, 2)
        sky = sky_e * (1.0 + gx * (xx / nx - 0.5) * 2 + gy * (yy / ny - 0.5) * 2)
        lam_e = sky + src * gain
        img_e = rng.poisson(lam_e).astype(np.float64) + rng.normal(0.0, rn, (ny, nx))

        art = np.zeros((ny, nx), np.uint8)
        crs = self._cosmic_rays(img_e, art)
        trails = []
        if rng.uniform() < self.trail_probability:
            trails.append(self._trail(img_e, art, fwhm, rms_adu * gain))
        bleed = self.bleed >= 1.0 or (self.bleed > 0.0 and rng.uniform() < self.bleed)
        # the full well: the saturation level (ADU above the bias) in electrons
        bleeds = _bleed(img_e, sat * gain, art) if bleed else _no_bleeds()

        adu = img_e / gain + bias
        saturated = adu >= sat + bias
        if bleed:
            # bled pixels hold the full well exactly, which can round below sat + bias
            saturated |= img_e >= sat * gain
            adu[saturated] = sat + bias
        adu = np.minimum(adu, sat + bias).astype(np.float32)

        def sat_of(x, y, peak):
            ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
            iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
            return saturated[iy, ix] | (peak >= sat)

        truth = {
            "x": np.concatenate([xs, xg]), "y": np.concatenate([ys, yg]),
            "flux": np.concatenate([flux_s, flux_g]), "mag": np.concatenate([ms, mg]),
            "is_star": np.concatenate([np.ones(n_star, bool), np.zeros(n_gal, bool)]),
            "r_eff": np.concatenate([np.zeros(n_star), r_eff]),
            "sersic_n": np.concatenate([np.zeros(n_star), sn]),
            "q": np.concatenate([np.ones(n_star), q]),
            "snr": np.concatenate([snr_s, snr_g]),
            "saturated": np.concatenate([sat_of(xs, ys, peak_s), sat_of(xg, yg, peak_g)]),
        }
        if self.psf_variation > 0:
            # only here: with one PSF it is meta["fwhm"], and the default columns stay as they were
            truth["fwhm"] = np.concatenate([fwhm_s, fwhm_g])
        meta = dict(fwhm=fwhm, beta=beta, gain=gain, read_noise=rn, sky_adu=sky_e / gain,
                    bias=bias, saturation=sat, zeropoint=zp, rms_adu=float(rms_adu),
                    crowding=crowd, density=density, mag_limit_5sigma=float(m_lim),
                    psf_variation=self.psf_variation, bleed=bool(bleed))
        meta.update(psf_meta)
        return OpticalField(image=adu, truth=truth, cosmic_rays=crs, trails=trails,
                            artefact_mask=art, saturated=saturated, meta=meta, bleeds=bleeds)

    def sample_fields(self, n, crowding=None):
        """A list of ``n`` fields."""
        return [self.sample(crowding) for _ in range(int(n))]

    # -- parts --------------------------------------------------------------------------
    def _magnitudes(self, n, m_bright, m_faint, slope=0.25):
        # inverse CDF of dN/dm ~ 10**(slope m) on [m_bright, m_faint]
        u = self.rng.uniform(size=n)
        a, b = 10.0 ** (slope * m_bright), 10.0 ** (slope * m_faint)
        return np.log10(a + u * (b - a)) / slope

    def _plummer(self, n, cx, cy, a, nx, ny):
        xs, ys = [], []
        got = 0
        while got < n:
            k = 4 * (n - got) + 64
            # Plummer surface density: r = a * sqrt(u / (1 - u)) within a truncation
            u = self.rng.uniform(0, 0.97, k)
            r = a * np.sqrt(u / (1 - u))
            t = self.rng.uniform(0, 2 * np.pi, k)
            x, y = cx + r * np.cos(t), cy + r * np.sin(t)
            ok = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
            xs.append(x[ok])
            ys.append(y[ok])
            got += int(ok.sum())
        return np.concatenate(xs)[:n], np.concatenate(ys)[:n]

    def _psf_field(self, amplitude):
        """Random quadratic polynomials of the PSF over the frame (``meta["psf_field"]``):
        ``fwhm_coeffs`` scaled to [-1, 1] and ``e1_coeffs``, ``e2_coeffs`` (the
        ellipticity components) to a largest ellipticity of ``amplitude``."""
        c = self.rng.normal(size=(3, 6))
        # the extremes on a fine grid of the frame (those of a quadratic are near enough)
        ny, nx = self.shape
        gy, gx = np.meshgrid(np.linspace(-0.5, ny - 0.5, 33), np.linspace(-0.5, nx - 0.5, 33))
        t = _poly_terms(gx, gy, self.shape)
        f = np.tensordot(c[0], t, 1)
        lo, hi = f.min(), f.max()
        cf = c[0] * 2.0 / (hi - lo)
        cf[0] -= (hi + lo) / (hi - lo)
        e = np.hypot(np.tensordot(c[1], t, 1), np.tensordot(c[2], t, 1)).max()
        ce = c[1:] * amplitude / e
        return {"amplitude": float(amplitude), "fwhm_coeffs": cf.tolist(),
                "e1_coeffs": ce[0].tolist(), "e2_coeffs": ce[1].tolist()}

    def _cosmic_rays(self, img_e, art):
        rng = self.rng
        ny, nx = img_e.shape
        n = rng.poisson(np.exp(rng.uniform(*np.log(self.cosmic_ray_density))) * nx * ny)
        cx, cy, npix = [], [], []
        for _ in range(n):
            length = int(rng.choice([1, 1, 2, 2, 3, 4, 6, 8]))
            x, y = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
            t = rng.uniform(0, np.pi)
            px = np.clip(np.rint(x + np.arange(length) * np.cos(t)).astype(int), 0, nx - 1)
            py = np.clip(np.rint(y + np.arange(length) * np.sin(t)).astype(int), 0, ny - 1)
            e = np.exp(rng.uniform(np.log(300.0), np.log(30000.0), length))
            np.add.at(img_e, (py, px), e)
            art[py, px] = 1
            cx.append(px.mean())
            cy.append(py.mean())
            npix.append(len(set(zip(px, py))))
        return {"x": np.asarray(cx, float), "y": np.asarray(cy, float),
                "npix": np.asarray(npix, int)}

    def _trail(self, img_e, art, fwhm, rms_e):
        rng = self.rng
        ny, nx = img_e.shape
        # a line through a random point at a random angle, Gaussian cross-profile
        x, y = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        t = rng.uniform(0, np.pi)
        sig = fwhm / 2.355 * rng.uniform(1.0, 2.0)
        peak_snr = float(np.exp(rng.uniform(np.log(3.0), np.log(50.0))))
        yy, xx = np.mgrid[:ny, :nx]
        d = np.abs(-(xx - x) * np.sin(t) + (yy - y) * np.cos(t))
        prof = peak_snr * rms_e * np.exp(-0.5 * (d / sig) ** 2)
        img_e += rng.poisson(prof)  # with the trail's own shot noise
        art[(d <= 2.0 * sig) & (art == 0)] = 2
        L = 2.0 * max(nx, ny)
        return {"x0": x - L * np.cos(t), "y0": y - L * np.sin(t),
                "x1": x + L * np.cos(t), "y1": y + L * np.sin(t), "peak_snr": peak_snr,
                "sigma": sig}


def _fill(room, amount):
    """Charge taken by pixels with free capacity ``room`` (in flow order) from ``amount``."""
    before = np.cumsum(room) - room
    return np.clip(amount - before, 0.0, room)


def _bleed(img_e, full_well, art):
    """Let the charge above ``full_well`` flow along the columns of ``img_e`` (in place).

    The excess of each run of over-full pixels in a column goes half up and
    half down, filling the next pixels that are not full (full ones pass it
    on) to the full well; what one side cannot hold goes to the other, and
    what the column cannot hold stays in the run (the image is clipped
    later). Charge is conserved. Pixels that received charge get code 3 in
    ``art`` where it is 0. Returns the streaks (`OpticalField.bleeds`).
    """
    over = img_e > full_well
    gained = np.zeros(img_e.shape, bool)
    out = {k: [] for k in ("x", "y0", "y1", "electrons")}
    for c in np.flatnonzero(over.any(axis=0)):
        col = img_e[:, c]  # a view: the image changes in place
        before = col.copy()
        edges = np.flatnonzero(np.diff(np.r_[0, over[:, c].view(np.int8), 0]))
        moved = []
        for i0, i1 in zip(edges[::2], edges[1::2]):  # rows i0 .. i1 - 1 are over-full
            excess = float((col[i0:i1] - full_well).sum())
            room_up = np.clip(full_well - col[i1:], 0.0, None)
            room_down = np.clip(full_well - col[:i0][::-1], 0.0, None)
            up = down = 0.5 * excess
            cap_up, cap_down = float(room_up.sum()), float(room_down.sum())
            if up > cap_up:
                up, down = cap_up, down + up - cap_up
            if down > cap_down:
                up, down = min(up + down - cap_down, cap_up), cap_down
            col[i1:] += _fill(room_up, up)
            col[:i0][::-1] += _fill(room_down, down)
            col[i0:i1] = full_well + (excess - up - down) / (i1 - i0)
            moved.append((i0, i1, up + down))
        got = col > before
        got[over[:, c]] = False
        gained[:, c] = got
        # one streak per contiguous run of over-full and bled pixels that bled
        run = over[:, c] | got
        redges = np.flatnonzero(np.diff(np.r_[0, run.view(np.int8), 0]))
        for y0, y1 in zip(redges[::2], redges[1::2]):
            if got[y0:y1].any():
                out["x"].append(c)
                out["y0"].append(y0)
                out["y1"].append(y1 - 1)
                out["electrons"].append(sum(m for a, b, m in moved if y0 <= a and b <= y1))
    art[gained & (art == 0)] = 3
    return {"x": np.asarray(out["x"], int), "y0": np.asarray(out["y0"], int),
            "y1": np.asarray(out["y1"], int), "electrons": np.asarray(out["electrons"], float)}

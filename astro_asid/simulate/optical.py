"""Simulated optical CCD fields with truth catalogs (numpy/scipy only).

What is in a field
------------------
- Stars: Moffat PSF (FWHM 1.8-5 px, beta 2.5-5, the same over the field),
  integrated over the pixel (3x sub-sampling); magnitudes drawn from
  ``dN/dm ~ 10**(0.25 m)`` between the saturation limit minus one magnitude
  and about 1.5 mag beyond the field's 5-sigma limit, so faint undetectable
  stars add confusion noise as in real data.
- Crowding (stars per pixel): ``"empty"``, ``"sparse"`` (5e-4-2e-3),
  ``"moderate"`` (3e-3-1e-2) and ``"crowded"`` (2e-2-6e-2, a globular
  cluster: a Plummer profile whose centre lies in or near the field).
- Galaxies: Sersic profiles (n 0.5-4, effective radius 0.8-6 px, axis
  ratio 0.3-1) convolved with the PSF.
- Detector: sky (50-3000 e-/px with a +-5 % gradient), Poisson noise, read
  noise (3-12 e-), gain (0.8-3 e-/ADU), a bias pedestal, and saturation
  (20,000-65,000 ADU above the bias; saturated pixels are clipped and
  flagged).
- Artefacts that are *not* sources: cosmic rays (sharp 1-8 px tracks, not
  blurred by the PSF) and, in 30 % of the fields, a satellite trail across
  the field. Their pixels are listed in ``artefact_mask`` (1 cosmic ray,
  2 trail).

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

_SUB = 3  # sub-pixel sampling of the profiles


def moffat_alpha(fwhm, beta):
    """Moffat core width ``alpha`` for a given FWHM and ``beta``."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


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
        ``saturated`` (a pixel of the source reached saturation).
    cosmic_rays : dict of `~numpy.ndarray`
        ``x``, ``y`` (centroid), ``npix``.
    trails : list of dict
        ``x0, y0, x1, y1`` end points and ``peak_snr``.
    artefact_mask : `~numpy.ndarray`
        uint8; 1 where a cosmic ray deposited charge, 2 on a trail.
    saturated : `~numpy.ndarray`
        bool; pixels at the saturation level.
    meta : dict
        ``fwhm``, ``beta``, ``gain``, ``read_noise``, ``sky_adu``, ``bias``,
        ``saturation``, ``zeropoint``, ``rms_adu``, ``crowding``, ``density``.
    """

    image: np.ndarray
    truth: dict
    cosmic_rays: dict
    trails: list
    artefact_mask: np.ndarray
    saturated: np.ndarray
    meta: dict = field(default_factory=dict)

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
        PSF FWHM (px, log-uniform) and Moffat beta ranges.
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
    seed : int or `~numpy.random.Generator`
    """

    def __init__(self, shape=(128, 128), crowding=("sparse", "moderate", "crowded"),
                 fwhm_range=(1.8, 5.0), beta_range=(2.5, 5.0), sky_range=(50.0, 3000.0),
                 galaxy_density=(3e-4, 3e-3), cosmic_ray_density=(1e-4, 1e-3),
                 trail_probability=0.3, zeropoint=25.0, seed=0):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (ny, nx) with sides >= 16, got {shape}")
        crowding = [crowding] if isinstance(crowding, str) else list(crowding)
        for c in crowding:
            if c not in CROWDING_LEVELS:
                raise ValueError(f"unknown crowding {c!r}; use one of {sorted(CROWDING_LEVELS)}")
        self.crowding = crowding
        self.fwhm_range = fwhm_range
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

    def _star_stamps(self, x, y, fwhm, beta):
        """Unit-sum Moffat stamps (pixel-integrated) and their lower-left pixels."""
        alpha = moffat_alpha(fwhm, beta)
        h = int(np.ceil(3.0 * fwhm)) + 2
        s = 2 * h + 1
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        # sub-pixel grid relative to the stamp's centre pixel
        g = (np.arange(s * _SUB) - (s * _SUB - 1) / 2.0) / _SUB
        out = np.empty((len(x), s, s), np.float32)
        for i0 in range(0, len(x), 256):
            sl = slice(i0, i0 + 256)
            dx = g[None, None, :] - (x[sl] - ix[sl])[:, None, None]
            dy = g[None, :, None] - (y[sl] - iy[sl])[:, None, None]
            prof = (1.0 + (dx ** 2 + dy ** 2) / alpha ** 2) ** (-beta)
            prof = prof.reshape(-1, s, _SUB, s, _SUB).sum(axis=(2, 4))
            out[sl] = prof / prof.sum(axis=(1, 2), keepdims=True)
        return out, ix - h, iy - h

    def _psf_kernel(self, fwhm, beta):
        st, _, _ = self._star_stamps(np.zeros(1), np.zeros(1), fwhm, beta)
        return st[0]

    def _galaxy_stamp(self, x, y, r_eff, n, q, pa, kernel):
        kh = kernel.shape[0] // 2
        h = int(np.ceil(5.0 * r_eff)) + kh + 1
        s = 2 * h + 1
        ix, iy = int(np.rint(x)), int(np.rint(y))
        g = (np.arange(s * _SUB) - (s * _SUB - 1) / 2.0) / _SUB
        dx = g[None, :] - (x - ix)
        dy = g[:, None] - (y - iy)
        c, si = np.cos(pa), np.sin(pa)
        u = dx * c + dy * si
        v = -dx * si + dy * c
        r = np.sqrt(u ** 2 + (v / q) ** 2)
        prof = np.exp(-_sersic_b(n) * ((r / r_eff) ** (1.0 / n) - 1.0))
        prof = prof.reshape(s, _SUB, s, _SUB).sum(axis=(1, 3))
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

        flux_s = 10.0 ** (-0.4 * (ms - zp))
        flux_g = 10.0 ** (-0.4 * (mg - zp))
        src = np.zeros((ny, nx), np.float64)
        stamps, x0, y0 = self._star_stamps(xs, ys, fwhm, beta)
        self._add_stamps(src, stamps * flux_s[:, None, None].astype(np.float32), x0, y0)
        snr_s = flux_s * np.sqrt((stamps.astype(float) ** 2).sum(axis=(1, 2))) / rms_adu
        peak_s = flux_s * stamps.max(axis=(1, 2))
        snr_g, peak_g = np.empty(n_gal), np.empty(n_gal)
        for i in range(n_gal):
            st, a0, b0 = self._galaxy_stamp(xg[i], yg[i], r_eff[i], sn[i], q[i], pa[i], kernel)
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

        adu = img_e / gain + bias
        saturated = adu >= sat + bias
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
        meta = dict(fwhm=fwhm, beta=beta, gain=gain, read_noise=rn, sky_adu=sky_e / gain,
                    bias=bias, saturation=sat, zeropoint=zp, rms_adu=float(rms_adu),
                    crowding=crowd, density=density, mag_limit_5sigma=float(m_lim))
        return OpticalField(image=adu, truth=truth, cosmic_rays=crs, trails=trails,
                            artefact_mask=art, saturated=saturated, meta=meta)

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

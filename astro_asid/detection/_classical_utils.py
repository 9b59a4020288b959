"""Shared pieces of the classical detectors: PSF width, background and noise,
matched filtering, sub-pixel peaks, standard error estimates and the output table.

Private module: the public API is in `astro_asid.detection.classical`.
"""

import warnings

import numpy as np
from astropy import units as u
from astropy.stats import SigmaClip, sigma_clipped_stats
from astropy.table import QTable
from scipy import ndimage
from scipy.special import erf

__all__ = []

#: FWHM (pixels) used when neither the options nor ``image.psf`` give the PSF.
DEFAULT_FWHM = 3.0
#: Gaussian sigma <-> FWHM.
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Significance at which ``score = 1 - 1/e``; see `snr_to_score`.
SCORE_SCALE = 10.0

_COUNT_UNITS = (u.ct, u.count, u.photon)


def snr_to_score(snr, scale=SCORE_SCALE):
    """Map a significance (sigma units) monotonically into 0..1.

    ``score = 1 - exp(-max(snr, 0) / scale)``: 3 sigma -> 0.26, 5 -> 0.39,
    10 -> 0.63, 20 -> 0.86, 30 -> 0.95, so scores spread over the range that
    matters for detection (a TS map uses ``snr = sqrt(TS)``).
    """
    snr = np.nan_to_num(np.asarray(snr, dtype=float), nan=0.0, posinf=np.inf)
    return 1.0 - np.exp(-np.clip(snr, 0.0, None) / scale)


def check_positive(name, value, allow_none=False):
    """Raise ValueError unless ``value`` is a finite positive number."""
    if value is None and allow_none:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, not {value!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def band_sigmas(image, option, option_name="psf_sigma", fwhm=False):
    """Gaussian PSF sigma (pixels) per band, shape ``(n_bands,)``.

    Priority: the detector option (``option``, a scalar or one value per band;
    a FWHM when ``fwhm`` is True), then ``image.psf["sigma_pix"]`` or
    ``image.psf["fwhm_pix"]``, then `DEFAULT_FWHM`.
    """
    n = image.n_bands
    scale = FWHM_TO_SIGMA if fwhm else 1.0
    if option is not None:
        values = np.atleast_1d(np.asarray(option, dtype=float)) * scale
        where = f"option {option_name}"
    elif image.psf and image.psf.get("sigma_pix") is not None:
        values = np.atleast_1d(np.asarray(image.psf["sigma_pix"], dtype=float))
        where = "image.psf['sigma_pix']"
    elif image.psf and image.psf.get("fwhm_pix") is not None:
        values = np.atleast_1d(np.asarray(image.psf["fwhm_pix"], dtype=float)) * FWHM_TO_SIGMA
        where = "image.psf['fwhm_pix']"
    else:
        values = np.array([DEFAULT_FWHM * FWHM_TO_SIGMA])
        where = "the default"
    if values.ndim != 1 or values.size not in (1, n):
        raise ValueError(f"{where} must be a scalar or have one value per band ({n}), "
                         f"got shape {np.shape(values)}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{where} must hold positive finite PSF widths, got {values}")
    return np.broadcast_to(values, (n,)).astype(float)


def effective_sigma(image, sigmas):
    """One Gaussian sigma for the band sum: the counts-weighted rms of the band sigmas.

    A sum of Gaussians of widths ``s_b`` and weights ``w_b`` has second moment
    ``sum(w_b s_b**2)``; the weights are the band totals of the image (the
    bands that dominate the sum dominate its PSF).
    """
    if sigmas.size == 1:
        return float(sigmas[0])
    weights = np.clip(np.nansum(image.filled(0.0), axis=(1, 2)), 0, None).astype(float)
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        weights = np.ones_like(sigmas)
    return float(np.sqrt(np.sum(weights * sigmas ** 2) / weights.sum()))


def is_counts(image):
    """True when the image holds Poisson counts.

    Every unmasked value is non-negative, and either the unit is a count unit,
    or there is no unit and the values are integers with a small median (< 50,
    which excludes integer ADU images with a bias level, whose noise is not
    Poisson in those units).
    """
    good = image.data[~image.mask]
    if good.size == 0 or np.any(good < 0):
        return False
    if image.unit is not None:
        try:
            return any(image.unit.is_equivalent(cu) for cu in _COUNT_UNITS)
        except (AttributeError, TypeError):
            return False
    return bool(np.all(good == np.round(good)) and np.median(good) < 50)


def gaussian_profile(sigma, radius=3.0):
    """1-D pixel-integrated Gaussian of odd size, normalised to sum 1.

    Integrating over each pixel (differences of ``erf``) keeps the kernel
    right for PSFs of about one pixel, where sampling the Gaussian at pixel
    centres is biased.
    """
    half = max(1, int(np.ceil(radius * sigma)))
    edges = np.arange(-half - 0.5, half + 1.0, 1.0)
    prof = np.diff(erf(edges / (np.sqrt(2.0) * sigma))) / 2.0
    return prof / prof.sum()


def correlate_separable(data, profile):
    """Zero-padded 2-D correlation with the separable kernel ``outer(profile, profile)``."""
    out = ndimage.correlate1d(np.asarray(data, dtype=float), profile, axis=0, mode="constant")
    return ndimage.correlate1d(out, profile, axis=1, mode="constant")


def masked_smooth(data, valid, scale):
    """Gaussian smoothing that ignores invalid pixels (normalised convolution).

    Returns the local mean of the valid pixels within about ``scale`` pixels;
    where no valid pixel is near, the mean of all valid pixels.
    """
    data = np.where(valid, data, 0.0).astype(float)
    num = ndimage.gaussian_filter(data, scale, mode="reflect", truncate=3.0)
    den = ndimage.gaussian_filter(valid.astype(float), scale, mode="reflect", truncate=3.0)
    fallback = data[valid].mean() if valid.any() else 0.0
    out = np.full(data.shape, fallback, dtype=float)
    good = den > 1e-3
    out[good] = num[good] / den[good]
    return out


def counts_background(counts, valid, psf_sigma, scale, n_iter=3, nsigma_mask=3.0):
    """Background of a Poisson counts map, with sources masked iteratively.

    The background is the normalised Gaussian smoothing (width ``scale``) of the
    counts, skipping pixels that are invalid or belong to a source. Source
    pixels are those where the PSF-matched filter of ``counts - background``
    exceeds ``nsigma_mask`` times its Poisson noise ``sqrt(conv(B, K**2))``,
    dilated by the PSF radius (2 sigma); the mask and the background are
    updated ``n_iter`` times. A mean rather than a median keeps low-count
    (mostly 0 and 1) maps unbiased.

    Parameters
    ----------
    counts : `~numpy.ndarray`
        2-D counts; values at invalid pixels are ignored.
    valid : `~numpy.ndarray`
        Boolean, False at masked pixels.
    psf_sigma : float
        PSF Gaussian sigma (pixels), for the source mask.
    scale : float
        Smoothing scale (pixels) of the background.

    Returns
    -------
    background, source_mask : `~numpy.ndarray`
    """
    counts = np.where(valid, counts, 0.0).astype(float)
    prof = gaussian_profile(psf_sigma)
    use = valid.copy()
    radius = max(1, int(round(2 * psf_sigma)))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = xx ** 2 + yy ** 2 <= radius ** 2
    source_mask = np.zeros_like(valid)
    bkg = masked_smooth(counts, use, scale)
    for _ in range(n_iter):
        excess = correlate_separable(np.where(valid, counts - bkg, 0.0), prof)
        noise = np.sqrt(np.clip(correlate_separable(np.where(valid, bkg, 0.0), prof ** 2),
                                1e-12, None))
        new_mask = ndimage.binary_dilation(excess > nsigma_mask * noise, structure=disk)
        new_use = valid & ~new_mask
        if new_use.sum() < 0.2 * valid.sum():
            # sources everywhere: keep the previous mask rather than fit nothing
            break
        source_mask = new_mask
        if np.array_equal(new_use, use):
            break
        use = new_use
        bkg = masked_smooth(counts, use, scale)
    return np.clip(bkg, 0.0, None), source_mask


def generic_background(data, mask, box_size):
    """Background and per-pixel noise rms of a non-count image.

    photutils `~photutils.background.Background2D` (sigma-clipped median, 3x3
    median filter of the box grid) when the image holds at least 2x2 boxes of
    ``box_size``; otherwise, or when too few boxes are usable, sigma-clipped
    global median and standard deviation. Masked pixels are excluded.
    """
    from photutils.background import Background2D, MedianBackground, StdBackgroundRMS

    ny, nx = data.shape
    if min(ny, nx) >= 2 * box_size:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bkg = Background2D(data, box_size, mask=mask, exclude_percentile=50.0,
                                   sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
                                   bkg_estimator=MedianBackground(),
                                   bkg_rms_estimator=StdBackgroundRMS())
            back = np.asarray(bkg.background, dtype=float)
            rms = np.asarray(bkg.background_rms, dtype=float)
            if np.all(np.isfinite(back)) and np.all(np.isfinite(rms)) and np.all(rms > 0):
                return back, rms
        except ValueError:
            pass
    _, median, std = sigma_clipped_stats(data[~mask], sigma=3.0, maxiters=10)
    if not np.isfinite(std) or std <= 0:
        std = np.nanstd(data[~mask])
    if not np.isfinite(std) or std <= 0:
        std = 1.0  # constant image: any positive noise gives no detection
    return np.full(data.shape, float(median)), np.full(data.shape, float(std))


def default_box_size(shape):
    """Background box: a quarter of the shorter side, between 8 and 64 pixels."""
    return int(np.clip(min(shape) // 4, 8, 64))


class BandSumModel:
    """Band-summed image, its background, noise and PSF-matched significance.

    The common front end of the ``peaks``, ``dao`` and ``log`` detectors.

    Attributes
    ----------
    data : band sum (masked pixels 0), ``mask`` its 2-D mask (a pixel masked
    in any band, so partially masked sums never look like dips),
    ``background``, ``variance`` (per pixel, of the data), ``residual`` (data
    minus background, 0 at masked pixels), ``sigma`` (effective PSF sigma),
    ``profile`` (1-D PSF profile, the kernel is its outer product),
    ``smoothed`` (residual convolved with the PSF),
    ``snr`` (``smoothed`` over its noise ``sqrt(conv(variance, K**2))``: the
    matched-filter significance), ``counts`` (Poisson mode).
    """

    def __init__(self, image, sigma, box_size=None, counts=None):
        self.mask = np.any(image.mask, axis=0)
        if self.mask.all():
            raise ValueError("every pixel is masked in at least one band: nothing to search")
        self.valid = ~self.mask
        self.data = np.where(self.mask, 0.0, image.filled(0.0).sum(axis=0)).astype(float)
        self.sigma = float(sigma)
        self.counts = is_counts(image) if counts is None else bool(counts)
        self.profile = gaussian_profile(self.sigma)
        if self.counts:
            if np.any(self.data < 0):
                raise ValueError("counts mode needs non-negative data")
            scale = max(4.0 * self.sigma, (box_size or default_box_size(self.data.shape)) / 2.0)
            self.background, _ = counts_background(self.data, self.valid, self.sigma, scale)
            # Poisson variance of the background; a floor avoids zero noise on empty maps
            floor = max(1e-3 * float(self.background[self.valid].mean()), 1e-6)
            self.variance = np.clip(self.background, floor, None)
        else:
            box = box_size or default_box_size(self.data.shape)
            back, rms = generic_background(np.where(self.mask, np.nan, self.data), self.mask,
                                           int(box))
            self.background = back
            self.variance = rms ** 2
        self.residual = np.where(self.mask, 0.0, self.data - self.background)
        self.smoothed = correlate_separable(self.residual, self.profile)
        noise = np.sqrt(correlate_separable(np.where(self.mask, 0.0, self.variance),
                                            self.profile ** 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            self.snr = np.where(noise > 0, self.smoothed / noise, 0.0)
        self.snr[self.mask] = 0.0

    def snr_at(self, x, y):
        """Matched-filter significance at the nearest pixel of each position."""
        ix, iy = self._index(x, y)
        return self.snr[iy, ix]

    def _index(self, x, y):
        ny, nx = self.data.shape
        ix = np.clip(np.round(np.asarray(x, float)).astype(int), 0, nx - 1)
        iy = np.clip(np.round(np.asarray(y, float)).astype(int), 0, ny - 1)
        return ix, iy

    def in_mask(self, x, y):
        """True where the nearest pixel of a position is masked (or outside)."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        ny, nx = self.data.shape
        outside = ~((x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5))
        ix, iy = self._index(x, y)
        return outside | self.mask[iy, ix]

    def photometry(self, x, y, aperture_radius_fwhm=1.0):
        """Aperture flux and error at positions, corrected to total PSF flux.

        A circular aperture of radius ``aperture_radius_fwhm`` PSF FWHMs on the
        background-subtracted band sum (`~photutils.aperture.aperture_photometry`,
        masked pixels excluded); the sum is divided by the Gaussian encircled
        fraction ``1 - exp(-r**2 / (2 sigma**2))``. The error adds in quadrature
        the background noise of the aperture pixels and, for counts, the
        Poisson noise of the source counts.
        """
        from photutils.aperture import CircularAperture, aperture_photometry

        x = np.asarray(x, float)
        y = np.asarray(y, float)
        if x.size == 0:
            return np.zeros(0), np.zeros(0)
        radius = aperture_radius_fwhm * self.sigma / FWHM_TO_SIGMA
        variance = self.variance.copy()
        if self.counts:
            variance = variance + np.clip(self.residual, 0, None)
        aper = CircularAperture(np.column_stack([x, y]), r=radius)
        phot = aperture_photometry(self.residual, aper, error=np.sqrt(variance), mask=self.mask)
        frac = 1.0 - np.exp(-radius ** 2 / (2.0 * self.sigma ** 2))
        flux = np.asarray(phot["aperture_sum"], float) / frac
        flux_err = np.asarray(phot["aperture_sum_err"], float) / frac
        return flux, flux_err

    def position_error(self, snr, flux):
        """Standard 1-sigma position error per axis (pixels) of a Gaussian PSF.

        ``sigma_x**2 = 2 sigma**2 / snr**2 + sigma**2 / flux``: the Cramer-Rao
        bound for a circular Gaussian of width ``sigma``; the first term is the
        background-limited part (``snr`` the matched-filter significance,
        ``8 pi sigma**4 b / F**2``), the second the photon-limited part, used for
        counts only (for other images the source noise in data units is not
        known).
        """
        snr = np.clip(np.asarray(snr, float), 1e-3, None)
        var = 2.0 * self.sigma ** 2 / snr ** 2
        if self.counts:
            var = var + self.sigma ** 2 / np.clip(np.asarray(flux, float), 1.0, None)
        return np.sqrt(var)


def quadratic_peak(values):
    """Sub-pixel maximum of a 3x3 patch by a least-squares 2-D quadratic.

    Fits ``f = c0 + c1 dx + c2 dy + c3 dx**2 + c4 dy**2 + c5 dx dy`` to the
    nine values (offsets -1, 0, 1 about the centre).

    Returns
    -------
    dx, dy : float
        Offset of the maximum from the centre pixel (clipped to +-1).
    hessian : `~numpy.ndarray`
        ``[[2 c3, c5], [c5, 2 c4]]``, the second derivatives of the fit.
    ok : bool
        False when the fit has no maximum (Hessian not negative definite).
    """
    dy, dx = np.mgrid[-1:2, -1:2]
    dx = dx.ravel().astype(float)
    dy = dy.ravel().astype(float)
    design = np.column_stack([np.ones(9), dx, dy, dx ** 2, dy ** 2, dx * dy])
    coef = np.linalg.lstsq(design, np.asarray(values, float).ravel(), rcond=None)[0]
    hess = np.array([[2 * coef[3], coef[5]], [coef[5], 2 * coef[4]]])
    det = np.linalg.det(hess)
    if not (hess[0, 0] < 0 and det > 0):
        return 0.0, 0.0, hess, False
    off = -np.linalg.solve(hess, coef[1:3])
    return float(np.clip(off[0], -1, 1)), float(np.clip(off[1], -1, 1)), hess, True


def parabola_offset(fm, f0, fp):
    """Vertex offset of the parabola through (-1, fm), (0, f0), (1, fp), clipped to +-0.5."""
    fm, f0, fp = (np.asarray(v, float) for v in (fm, f0, fp))
    den = fm - 2 * f0 + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
    return np.clip(np.nan_to_num(off), -0.5, 0.5)


def prune_close(x, y, strength, min_sep):
    """Indices of detections kept by greedy suppression: strongest first, and
    nothing closer than ``min_sep`` pixels to a stronger kept one."""
    from scipy.spatial import cKDTree

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.size == 0:
        return np.zeros(0, dtype=int)
    points = np.column_stack([x, y])
    tree = cKDTree(points)
    suppressed = np.zeros(x.size, dtype=bool)
    kept = []
    for i in np.argsort(-np.asarray(strength, float), kind="stable"):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed[tree.query_ball_point(points[i], min_sep * (1 - 1e-9))] = True
    return np.array(kept, dtype=int)


def make_table(x, y, score, x_err, y_err, flux, flux_err, unit=None, **extra):
    """The detector output table, sorted by decreasing score.

    Zero rows still carry every column. ``flux`` and ``flux_err`` get ``unit``
    when it is known.
    """
    cols = dict(x_centroid=x, y_centroid=y, score=score, x_err=x_err, y_err=y_err,
                flux=flux, flux_err=flux_err, **extra)
    cols = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    order = np.argsort(-cols["score"], kind="stable")
    table = QTable()
    for name, values in cols.items():
        values = values[order]
        if unit is not None and name in ("flux", "flux_err"):
            values = values * unit
        table[name] = values
    return table


def empty_table(unit=None, extra=()):
    """A zero-row output table with every column."""
    empty = np.zeros(0)
    return make_table(*([empty] * 7), unit=unit, **{name: empty for name in extra})

"""The ``log`` detector: multi-scale Laplacian of Gaussian blob finding."""

import numpy as np
from scipy import ndimage

from ._classical_utils import (FWHM_TO_SIGMA, BandSumModel, band_sigmas, check_positive,
                               effective_sigma, empty_table, make_table, parabola_offset,
                               prune_close, snr_to_score)
from .base import Detector

__all__ = ["LoGDetector"]


def _log_noise(scale):
    """Standard deviation of ``-scale**2 * LoG`` applied to unit white noise.

    Measured on the discrete filter itself (the root sum of squares of its
    response to a unit impulse), so it is exact for small scales too; the
    continuous value is ``1 / (sqrt(2 pi) scale)``.
    """
    half = int(np.ceil(4 * scale)) + 2
    impulse = np.zeros((2 * half + 1, 2 * half + 1))
    impulse[half, half] = 1.0
    response = scale ** 2 * ndimage.gaussian_laplace(impulse, scale, mode="constant")
    return float(np.sqrt(np.sum(response ** 2)))


class LoGDetector(Detector):
    """Multi-scale, scale-normalised Laplacian of Gaussian (LoG) blob finding.

    The band sum is background-subtracted as in ``peaks`` and divided by its
    noise per pixel (so it is white noise of unit variance where there is no
    source). At each scale ``s`` (``num_sigma`` values from ``min_sigma`` to
    ``max_sigma``) the response ``-s**2 * LoG_s`` (`scipy.ndimage.gaussian_laplace`)
    is divided by its own noise level, computed exactly for white noise,
    which gives a significance ``S(s, y, x)`` comparable across scales (the
    plain scale-normalised response of `skimage.feature.blob_log` is noisier
    at small scales). Detections are the local maxima of ``S`` in scale and
    space above ``nsigma``, pruned greedily to ``min_separation``, refined to
    sub-pixel precision by a parabola through the peak and its neighbours.

    Outputs: ``snr`` (the LoG significance), ``score = 1 - exp(-snr / 10)``,
    ``sigma`` (the scale of the maximum: for a Gaussian blob of width ``w`` the
    significance peaks at ``sqrt(3) w``, so about 1.7 PSF sigma for point
    sources, larger for extended blobs); ``x_err = y_err`` and ``flux``,
    ``flux_err`` as in ``peaks`` (Cramer-Rao bound from the PSF matched-filter
    significance at the position; aperture photometry of radius one FWHM).

    Parameters
    ----------
    min_sigma, max_sigma : float, optional
        Scale range (pixels); default 1 and 3 times the PSF sigma.
    num_sigma : int, optional
        Number of scales, linearly spaced.
    nsigma : float, optional
        Detection threshold on the LoG significance.
    fwhm : float or array-like, optional
        PSF FWHM in pixels (for the default scales, errors and photometry);
        default from ``image.psf``, else 3.
    min_separation : float, optional
        Minimum distance between detections (pixels); default ``max(2, FWHM)``.
    box_size : int, optional
        Background box (pixels), as for ``peaks``.
    poisson : bool or None, optional
        Poisson counts (True), Gaussian noise (False) or automatic (None).
    """

    name = "log"
    description = "multi-scale Laplacian of Gaussian on the noise-normalised image"
    instruments = ("any",)

    def __init__(self, min_sigma=None, max_sigma=None, num_sigma=5, nsigma=5.0, fwhm=None,
                 min_separation=None, box_size=None, poisson=None):
        super().__init__()
        self.min_sigma = check_positive("min_sigma", min_sigma, allow_none=True)
        self.max_sigma = check_positive("max_sigma", max_sigma, allow_none=True)
        if (self.min_sigma is not None and self.max_sigma is not None
                and self.max_sigma < self.min_sigma):
            raise ValueError(f"max_sigma ({max_sigma}) is below min_sigma ({min_sigma})")
        if int(num_sigma) != num_sigma or num_sigma < 1:
            raise ValueError(f"num_sigma must be a positive integer, got {num_sigma!r}")
        self.num_sigma = int(num_sigma)
        self.nsigma = check_positive("nsigma", nsigma)
        if fwhm is not None:
            for value in np.atleast_1d(fwhm):
                check_positive("fwhm", value)
        self.fwhm = fwhm
        self.min_separation = check_positive("min_separation", min_separation, allow_none=True)
        self.box_size = None if box_size is None else int(check_positive("box_size", box_size))
        self.poisson = poisson

    def scales(self, psf_sigma):
        """The LoG scales (pixels) for a PSF of Gaussian width ``psf_sigma``."""
        lo = self.min_sigma if self.min_sigma is not None else psf_sigma
        hi = self.max_sigma if self.max_sigma is not None else max(lo, 3.0 * psf_sigma)
        return np.linspace(lo, hi, self.num_sigma) if self.num_sigma > 1 else np.array([lo])

    def significance_cube(self, model, scales):
        """LoG significance ``S``, shape ``(n_scales, ny, nx)``, 0 at masked pixels."""
        z = np.where(model.mask, 0.0, model.residual / np.sqrt(model.variance))
        cube = np.empty((len(scales),) + z.shape)
        for i, s in enumerate(scales):
            cube[i] = -s ** 2 * ndimage.gaussian_laplace(z, s, mode="constant") / _log_noise(s)
        cube[:, model.mask] = 0.0
        return cube

    def detect(self, image):
        """Find blobs in ``image``; see the class docstring.

        Returns
        -------
        `~astropy.table.QTable`
            ``x_centroid``, ``y_centroid``, ``score``, ``x_err``, ``y_err``,
            ``flux``, ``flux_err``, ``snr``, ``sigma``, by decreasing score.
        """
        extra = ("snr", "sigma")
        sigma = effective_sigma(image, band_sigmas(image, self.fwhm, "fwhm", fwhm=True))
        model = BandSumModel(image, sigma, self.box_size, self.poisson)
        scales = self.scales(sigma)
        cube = self.significance_cube(model, scales)
        min_sep = self.min_separation or max(2.0, sigma / FWHM_TO_SIGMA)
        local = ndimage.maximum_filter(cube, size=(3, 3, 3), mode="constant", cval=-np.inf)
        ks, ys, xs = np.nonzero((cube == local) & (cube > self.nsigma))
        if ks.size == 0:
            return empty_table(image.unit, extra=extra)
        snr = cube[ks, ys, xs]
        keep = prune_close(xs, ys, snr, min_sep)
        ks, ys, xs, snr = ks[keep], ys[keep], xs[keep], snr[keep]
        padded = np.pad(cube, ((0, 0), (1, 1), (1, 1)), mode="edge")
        yb, xb = ys + 1, xs + 1
        x = xs + parabola_offset(padded[ks, yb, xb - 1], padded[ks, yb, xb], padded[ks, yb, xb + 1])
        y = ys + parabola_offset(padded[ks, yb - 1, xb], padded[ks, yb, xb], padded[ks, yb + 1, xb])
        flux, flux_err = model.photometry(x, y)
        err = model.position_error(model.snr_at(x, y), flux)
        return make_table(x, y, snr_to_score(snr), err, err, flux, flux_err, unit=image.unit,
                          snr=snr, sigma=scales[ks])


"""The ``peaks`` detector: local maxima of the PSF-smoothed, background-subtracted image."""

import warnings

import numpy as np

from ._classical_utils import (FWHM_TO_SIGMA, BandSumModel, band_sigmas, check_positive,
                               effective_sigma, empty_table, make_table, parabola_offset,
                               snr_to_score)
from .base import Detector

__all__ = ["PeaksDetector"]

_CENTROIDS = ("2dg", "com", "quadratic")


class PeaksDetector(Detector):
    """Peaks of the PSF-matched significance map, centroided.

    Steps (on the sum of the bands):

    1. Background and noise: for Poisson counts (see ``poisson``) the
       normalised Gaussian smoothing of the counts with sources masked
       iteratively, and Poisson variance equal to the background; otherwise
       photutils `~photutils.background.Background2D` (sigma-clipped median and
       standard deviation in boxes of ``box_size``), or sigma-clipped global
       statistics for images smaller than two boxes.
    2. Matched filter: the residual is convolved with the Gaussian PSF ``K``
       and divided by its noise ``sqrt(conv(variance, K**2))``: the
       significance ``snr`` of a point source at each pixel.
    3. `photutils.detection.find_peaks` above ``nsigma`` with a minimum
       separation, outside masked pixels.
    4. Centroids by `photutils.centroids.centroid_sources` on the smoothed
       residual (``centroid``: a 2-D Gaussian fit, centre of mass, or
       quadratic); a failed or runaway centroid (more than one pixel from the
       peak) falls back to a parabola through the peak and its neighbours.

    Outputs: ``score = 1 - exp(-snr / 10)`` (monotone in the peak
    significance); ``x_err = y_err = sqrt(2 sigma**2 / snr**2 + sigma**2 / F)``
    (Cramer-Rao bound of a Gaussian PSF, photon term for counts only);
    ``flux`` from aperture photometry (radius one FWHM, corrected for the
    Gaussian encircled fraction) with background plus (for counts) source
    Poisson error; extra column ``snr``.

    Parameters
    ----------
    fwhm : float or array-like, optional
        PSF FWHM in pixels (one value, or one per band). Default: from
        ``image.psf`` (``sigma_pix`` or ``fwhm_pix``), else 3.
    nsigma : float, optional
        Detection threshold on the matched-filter significance.
    box_size : int, optional
        Background box (pixels); default a quarter of the shorter side,
        clipped to 8..64. For counts, the background smoothing scale is
        ``max(4 sigma, box_size / 2)``.
    min_separation : float, optional
        Minimum distance between peaks (pixels); default ``max(2, fwhm)``.
    centroid : {'2dg', 'com', 'quadratic'}, optional
        photutils centroid function used on each peak.
    poisson : bool or None, optional
        Treat the data as Poisson counts (True), as an image with Gaussian
        noise (False), or decide from the unit and values (None, see
        ``astro_asid.detection._classical_utils.is_counts``).
    """

    name = "peaks"
    description = "photutils find_peaks on the PSF-smoothed, background-subtracted image"
    instruments = ("any",)

    def __init__(self, fwhm=None, nsigma=5.0, box_size=None, min_separation=None,
                 centroid="2dg", poisson=None):
        super().__init__()
        if fwhm is not None:
            for value in np.atleast_1d(fwhm):
                check_positive("fwhm", value)
        self.fwhm = fwhm
        self.nsigma = check_positive("nsigma", nsigma)
        self.box_size = None if box_size is None else int(check_positive("box_size", box_size))
        self.min_separation = check_positive("min_separation", min_separation, allow_none=True)
        if centroid not in _CENTROIDS:
            raise ValueError(f"centroid must be one of {_CENTROIDS}, not {centroid!r}")
        self.centroid = centroid
        self.poisson = poisson

    def detect(self, image):
        """Find point sources in ``image``; see the class docstring.

        Returns
        -------
        `~astropy.table.QTable`
            ``x_centroid``, ``y_centroid``, ``score``, ``x_err``, ``y_err``,
            ``flux``, ``flux_err``, ``snr``, by decreasing score.
        """
        from photutils.detection import find_peaks

        sigma = effective_sigma(image, band_sigmas(image, self.fwhm, "fwhm", fwhm=True))
        model = BandSumModel(image, sigma, self.box_size, self.poisson)
        unit = image.unit
        min_sep = self.min_separation or max(2.0, sigma / FWHM_TO_SIGMA)
        box = 2 * int(np.ceil(min_sep)) + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NoDetectionsWarning: handled below
            peaks = find_peaks(model.snr, self.nsigma, box_size=box, mask=model.mask)
        if peaks is None or len(peaks) == 0:
            return empty_table(unit, extra=("snr",))
        xp = np.asarray(peaks["x_peak"], int)
        yp = np.asarray(peaks["y_peak"], int)
        x, y = self._centroids(model, xp, yp)
        keep = ~model.in_mask(x, y)
        x, y, xp, yp = x[keep], y[keep], xp[keep], yp[keep]
        snr = model.snr[yp, xp]
        flux, flux_err = model.photometry(x, y)
        err = model.position_error(snr, flux)
        return make_table(x, y, snr_to_score(snr), err, err, flux, flux_err, unit=unit, snr=snr)

    def _centroids(self, model, xp, yp):
        from photutils.centroids import (centroid_2dg, centroid_com, centroid_quadratic,
                                         centroid_sources)

        func = {"2dg": centroid_2dg, "com": centroid_com, "quadratic": centroid_quadratic}
        half = max(2, int(np.ceil(2.0 * model.sigma)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                x, y = centroid_sources(model.smoothed, xp, yp, box_size=2 * half + 1,
                                        mask=model.mask, centroid_func=func[self.centroid])
            except ValueError:
                x = np.full(xp.shape, np.nan)
                y = np.full(yp.shape, np.nan)
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        bad = ~np.isfinite(x) | ~np.isfinite(y) | (np.hypot(x - xp, y - yp) > 1.0)
        if np.any(bad):
            s = np.pad(model.smoothed, 1, mode="edge")
            xb, yb = xp[bad] + 1, yp[bad] + 1
            x[bad] = xp[bad] + parabola_offset(s[yb, xb - 1], s[yb, xb], s[yb, xb + 1])
            y[bad] = yp[bad] + parabola_offset(s[yb - 1, xb], s[yb, xb], s[yb + 1, xb])
        return x, y

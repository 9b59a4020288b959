"""The ``dao`` detector: photutils `~photutils.detection.DAOStarFinder` (DAOFIND)."""

import warnings

import numpy as np

from ._classical_utils import (FWHM_TO_SIGMA, BandSumModel, band_sigmas, check_positive,
                               effective_sigma, empty_table, make_table, snr_to_score)
from .base import Detector

__all__ = ["DAODetector"]


class DAODetector(Detector):
    """DAOFIND (Stetson 1987) through photutils `~photutils.detection.DAOStarFinder`.

    The band sum is background-subtracted as in the ``peaks`` detector (Poisson
    smoothing with source masking for counts, photutils
    `~photutils.background.Background2D` otherwise) and given to
    `~photutils.detection.DAOStarFinder` with the per-pixel threshold
    ``nsigma * noise``, which DAOFIND scales by its kernel's relative error so
    that it is an ``nsigma`` detection in the convolved image. Positions are
    DAOFIND's marginal Gaussian fits (``x_centroid``, ``y_centroid``);
    sources whose centroid falls on a masked pixel are dropped.

    Outputs follow the other classical detectors: ``snr`` is the PSF
    matched-filter significance at the DAOFIND position, ``score = 1 -
    exp(-snr / 10)``, ``x_err = y_err = sqrt(2 sigma**2 / snr**2 + sigma**2 /
    F)``, ``flux`` and ``flux_err`` from aperture photometry (radius one FWHM,
    encircled-fraction corrected). DAOFIND's ``sharpness``, ``roundness1``
    and ``roundness2`` are kept.

    Parameters
    ----------
    fwhm : float or array-like, optional
        PSF FWHM in pixels (one value, or one per band). Default: from
        ``image.psf``, else 3.
    nsigma : float, optional
        Detection threshold in units of the background noise.
    sharplo, sharphi : float, optional
        Bounds on DAOFIND sharpness (photutils ``sharpness_range``). Wider
        than DAOFIND's 0.2..1 because sharpness is noisy in low-count Poisson
        images, where the classic bounds reject about one real source in ten.
    roundlo, roundhi : float, optional
        Bounds on DAOFIND roundness (photutils ``roundness_range``).
    min_separation : float, optional
        Minimum distance between sources (pixels); default ``max(2, FWHM)``
        (photutils' own default, 2.5 FWHM, merges close pairs).
    box_size : int, optional
        Background box (pixels), as for ``peaks``.
    poisson : bool or None, optional
        Poisson counts (True), Gaussian noise (False) or automatic (None).
    """

    name = "dao"
    description = "photutils DAOStarFinder (DAOFIND) on the background-subtracted image"
    instruments = ("any",)

    def __init__(self, fwhm=None, nsigma=5.0, sharplo=0.0, sharphi=1.5, roundlo=-1.0,
                 roundhi=1.0, min_separation=None, box_size=None, poisson=None):
        super().__init__()
        if fwhm is not None:
            for value in np.atleast_1d(fwhm):
                check_positive("fwhm", value)
        self.fwhm = fwhm
        self.nsigma = check_positive("nsigma", nsigma)
        for name, lo, hi in (("sharp", sharplo, sharphi), ("round", roundlo, roundhi)):
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"{name}lo must be below {name}hi, got {lo} and {hi}")
        self.sharplo, self.sharphi = float(sharplo), float(sharphi)
        self.roundlo, self.roundhi = float(roundlo), float(roundhi)
        self.min_separation = check_positive("min_separation", min_separation, allow_none=True)
        self.box_size = None if box_size is None else int(check_positive("box_size", box_size))
        self.poisson = poisson

    def detect(self, image):
        """Find point sources in ``image``; see the class docstring.

        Returns
        -------
        `~astropy.table.QTable`
            ``x_centroid``, ``y_centroid``, ``score``, ``x_err``, ``y_err``,
            ``flux``, ``flux_err``, ``snr``, ``sharpness``, ``roundness1``,
            ``roundness2``, by decreasing score.
        """
        from photutils.detection import DAOStarFinder

        extra = ("snr", "sharpness", "roundness1", "roundness2")
        sigma = effective_sigma(image, band_sigmas(image, self.fwhm, "fwhm", fwhm=True))
        model = BandSumModel(image, sigma, self.box_size, self.poisson)
        fwhm = sigma / FWHM_TO_SIGMA
        finder = DAOStarFinder(threshold=self.nsigma * np.sqrt(model.variance),
                               fwhm=fwhm,
                               sharpness_range=(self.sharplo, self.sharphi),
                               roundness_range=(self.roundlo, self.roundhi),
                               min_separation=self.min_separation or max(2.0, fwhm))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NoDetectionsWarning: handled below
            found = finder(model.residual, mask=model.mask)
        if found is None or len(found) == 0:
            return empty_table(image.unit, extra=extra)
        x = np.asarray(found["x_centroid"], float)
        y = np.asarray(found["y_centroid"], float)
        keep = np.isfinite(x) & np.isfinite(y)
        keep[keep] = ~model.in_mask(x[keep], y[keep])
        found, x, y = found[keep], x[keep], y[keep]
        if len(found) == 0:
            return empty_table(image.unit, extra=extra)
        snr = model.snr_at(x, y)
        flux, flux_err = model.photometry(x, y)
        err = model.position_error(snr, flux)
        return make_table(x, y, snr_to_score(snr), err, err, flux, flux_err, unit=image.unit,
                          snr=snr, sharpness=found["sharpness"], roundness1=found["roundness1"],
                          roundness2=found["roundness2"])

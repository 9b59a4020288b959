"""`ASIDStarFinder`: astro_asid detectors behind the photutils star-finder interface."""

import warnings

import numpy as np
from astropy.table import QTable
from photutils.detection import StarFinderBase
from photutils.utils.exceptions import NoDetectionsWarning

from astro_asid.catalog import validate_candidates
from astro_asid.core import as_sky_image
from astro_asid.detection.base import Detector

__all__ = ["ASIDStarFinder"]


class ASIDStarFinder(StarFinderBase):
    """A photutils-compatible star finder running any astro_asid detector.

    Drop-in for code written for `~photutils.detection.DAOStarFinder`:
    ``finder(data, mask=None)`` returns a `~astropy.table.QTable` in pixel
    coordinates, or `None` with a `~photutils.utils.exceptions.NoDetectionsWarning`
    when nothing is found. No WCS is needed.

    Parameters
    ----------
    detector : str or `~astro_asid.detection.Detector`, optional
        Registered detector name or instance (default ``"peaks"``).
    min_score : float, optional
        Keep only candidates with ``score >= min_score``.
    **options
        Passed to the detector (e.g. ``fwhm=3.0, nsigma=5``).

    Examples
    --------
    >>> import numpy as np
    >>> from astro_asid import ASIDStarFinder
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:64, :64]
    >>> image = 500 * np.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / 4.5) + 10
    >>> finder = ASIDStarFinder("peaks", fwhm=3.0)
    >>> stars = finder(rng.poisson(image).astype(float))
    >>> print(len(stars), round(float(stars["x_centroid"][0])), round(float(stars["y_centroid"][0])))
    1 20 30
    """

    def __init__(self, detector="peaks", *, min_score=0.0, **options):
        from astro_asid.plugins.manager import get_detector

        if isinstance(detector, Detector):
            if options:
                raise TypeError("options cannot be combined with a Detector instance")
            self.detector = detector
        else:
            self.detector = get_detector(detector, **options)
        self.min_score = float(min_score)

    def find_stars(self, data, mask=None):
        """Find stars in a 2-D image.

        Parameters
        ----------
        data : 2D array-like
            The image.
        mask : 2D bool array, optional
            True marks pixels to ignore.

        Returns
        -------
        table : `~astropy.table.QTable` or None
            ``id``, ``x_centroid``, ``y_centroid``, ``flux``, ``score`` and
            any other column the detector gives; None when nothing is found.
        """
        data = np.asanyarray(data)
        if data.ndim != 2:
            raise ValueError(f"data must be a 2-D image, got {data.ndim} dimensions")
        image = as_sky_image(data, mask=mask, require_wcs=False)
        if self.detector.needs_counts:
            image.check_counts(f"detector {self.detector.name!r}")
        cands = validate_candidates(self.detector.detect(image), image.shape,
                                    origin=f"detector {self.detector.name!r}")
        if len(cands):
            keep = np.asarray(cands["score"], float) >= self.min_score
            ix = np.clip(np.round(np.asarray(cands["x_centroid"], float)).astype(int), 0,
                         image.shape[1] - 1)
            iy = np.clip(np.round(np.asarray(cands["y_centroid"], float)).astype(int), 0,
                         image.shape[0] - 1)
            cands = cands[keep & ~image.mask2d[iy, ix]]
        if len(cands) == 0:
            warnings.warn("No sources were found.", NoDetectionsWarning)
            return None
        cands.sort("score", reverse=True)
        out = QTable()
        out["id"] = np.arange(1, len(cands) + 1)
        for name in cands.colnames:
            out[name] = cands[name]
        return out

"""Test helpers shared by several test modules."""

import numpy as np
from astropy.wcs import WCS


def make_wcs(shape=(64, 64), lon=10.0, lat=5.0, cdelt=10 / 64, frame="galactic"):
    """A CAR WCS like the Fermi-LAT data challenge's."""
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"] if frame == "galactic" else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [lon, lat]
    wcs.wcs.cdelt = [-cdelt, cdelt]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    return wcs


def point_sources(shape, positions, counts, sigma=1.5, background=5.0, seed=0):
    """Poisson image with Gaussian point sources on a flat background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    model = np.full(shape, float(background))
    for (x, y), c in zip(positions, counts):
        model += c * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    return rng.poisson(model).astype(float), model

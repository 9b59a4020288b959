"""A deliberately simple detector: the N brightest pixels of the band-summed image."""

import numpy as np
from astropy.table import QTable

from astro_asid.detection import Detector
from astro_asid.plugins import hookimpl


class BrightestPixels(Detector):
    name = "brightest"
    description = "The n brightest pixels (example plugin)"
    instruments = ("any",)

    def __init__(self, n=3):
        self.n = int(n)

    def detect(self, image):
        img = image.band_sum()
        img[image.mask2d] = -np.inf
        idx = np.argsort(img, axis=None)[::-1][: self.n]
        y, x = np.unravel_index(idx, img.shape)
        vals = img.ravel()[idx]
        score = vals / vals.max() if vals.max() > 0 else np.zeros(len(vals))
        return QTable({"x_centroid": x.astype(float), "y_centroid": y.astype(float),
                       "score": np.clip(score, 0, 1)})


@hookimpl
def asid_register_detectors(registry):
    registry.add(BrightestPixels)

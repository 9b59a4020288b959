"""Registers one good-looking detector, then fails: nothing of it may stay registered."""

from astropy.table import QTable

from astro_asid.detection import Detector
from astro_asid.plugins import hookimpl


class HalfGood(Detector):
    name = "half-good"
    description = "registered before the failure; must be rolled back"

    def detect(self, image):
        return QTable({"x_centroid": [1.0], "y_centroid": [1.0], "score": [0.5]})


class NotADetector:
    name = "not-a-detector"


@hookimpl
def asid_register_detectors(registry):
    registry.add(HalfGood)
    registry.add(NotADetector)

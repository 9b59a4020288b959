"""The classical (non-learning) detectors: ``peaks``, ``dao``, ``log`` and ``tsmap``.

They share conventions (see each class and ``docs/detectors_classical.rst``):
positions are 0-based pixels, ``score`` is a monotone map of the detection
significance into 0..1, ``x_err``/``y_err`` are 1-sigma standard estimates and
``flux``/``flux_err`` are in the image unit (counts for count maps).
"""

from ._classical_utils import snr_to_score
from .dao import DAODetector
from .log import LoGDetector
from .peaks import PeaksDetector
from .tsmap import TSMapDetector, compute_ts_map, estimate_background, spectral_weights

__all__ = ["PeaksDetector", "DAODetector", "LoGDetector", "TSMapDetector", "CLASSICAL_DETECTORS",
           "compute_ts_map", "estimate_background", "spectral_weights", "snr_to_score"]

#: The classical detector classes, for registration as built-in plugins.
CLASSICAL_DETECTORS = [PeaksDetector, DAODetector, LoGDetector, TSMapDetector]

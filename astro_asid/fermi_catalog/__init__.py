"""Classify Fermi-LAT 4FGL catalog sources from their spectra and light curves.

Dense and recurrent networks on the measured band fluxes and yearly light
curves of the 4FGL catalog (seed 004: Finke, Kraemer & Manconi 2021), with a
deep-ensemble or MC-dropout uncertainty per prediction, scikit-learn
baselines, shipped models (``"agn-psr"``, ``"msp-young"``, ``"bll-fsrq"``) and
the ``asid classify-4fgl`` command.
"""

from .baselines import BaselineClassifier  # noqa: F401
from .classifier import PRETRAINED, CatalogClassifier  # noqa: F401
from .features import (TASKS, FeatureConfig, candidate_mask, extract_features,  # noqa: F401
                       task_labels)
from .io import RELEASES, load_4fgl  # noqa: F401
from .metrics import (classification_metrics, ece_noise_floor,  # noqa: F401
                      expected_calibration_error)

__all__ = ["load_4fgl", "RELEASES", "TASKS", "FeatureConfig", "extract_features", "task_labels",
           "candidate_mask", "CatalogClassifier", "PRETRAINED", "BaselineClassifier",
           "classification_metrics", "expected_calibration_error", "ece_noise_floor"]

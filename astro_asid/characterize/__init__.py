"""Source characterisation: refined positions with calibrated errors, fluxes
with errors, source/FAKE and class probabilities (and, for CTAO, extension).

`~astro_asid.find_sources` runs the characteriser shipped for the image's
instrument after any detector (built-in or plugin), unless it is called with
``characterize=False``. See :doc:`/characterize` in the documentation.
"""

from astro_asid.characterize.apply import characterize_candidates, resolve_characterizer
from astro_asid.characterize.cutouts import extract_cutouts
from astro_asid.characterize.model import (CHARACTERIZER_NAMES, Characterizer, SigmaCalibration,
                                           shipped_characterizer)

__all__ = ["Characterizer", "SigmaCalibration", "shipped_characterizer", "extract_cutouts",
           "characterize_candidates", "resolve_characterizer", "CHARACTERIZER_NAMES"]

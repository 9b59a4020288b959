"""Simulated gamma-ray skies: Fermi-LAT (4FGL-based populations, response, backgrounds)
and CTAO Galactic-plane-survey patches.

The entry points are `FermiSkySimulator` and `CTAOSkySimulator`; `write_dataset`
writes simulated Fermi-LAT patches and their truth tables to disk (``asid simulate``).
"""

from .background import BACKGROUND_MODELS, BackgroundModel, get_background
from .ctao import CTAOPatchBatch, CTAOSkySimulator
from .fermi import FermiSkySimulator, PatchBatch, render_point_sources
from .instrument import FermiLATResponse
from .io import read_dataset, write_dataset
from .population import SourcePopulation

__all__ = ["FermiSkySimulator", "PatchBatch", "CTAOSkySimulator", "CTAOPatchBatch",
           "FermiLATResponse", "SourcePopulation",
           "BackgroundModel", "BACKGROUND_MODELS", "get_background", "render_point_sources",
           "write_dataset", "read_dataset"]

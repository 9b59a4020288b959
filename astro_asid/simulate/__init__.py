"""Simulated Fermi-LAT skies: 4FGL-based source populations, instrument response, backgrounds.

The entry point is `FermiSkySimulator`; `write_dataset` writes simulated
patches and their truth tables to disk (``asid simulate``).
"""

from .background import BACKGROUND_MODELS, BackgroundModel, get_background
from .fermi import FermiSkySimulator, PatchBatch, render_point_sources
from .instrument import FermiLATResponse
from .io import read_dataset, write_dataset
from .population import SourcePopulation

__all__ = ["FermiSkySimulator", "PatchBatch", "FermiLATResponse", "SourcePopulation",
           "BackgroundModel", "BACKGROUND_MODELS", "get_background", "render_point_sources",
           "write_dataset", "read_dataset"]

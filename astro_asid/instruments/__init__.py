"""Instrument adapters: from what gamma-ray users hold to one source catalog.

- `astro_asid.instruments.fermi`: Fermi-LAT all-sky HEALPix count cubes, tiled
  into the data challenge's overlapping CAR patches, detections merged.
- `astro_asid.instruments.ctao`: gammapy maps and datasets (CTAO and other
  IACTs), and catalogs -> gammapy models.
- `astro_asid.instruments.merge`: merging detections of overlapping tiles.
"""

from .fermi import (FERMI_ENERGY_EDGES, FERMI_PSF_R68_DEG, FermiHealpixAdapter, HealpixCube,
                    HealpixTiling, fermi_psf_sigma_deg, find_sources_healpix, read_healpix_cube)
from .merge import close_pairs, merge_duplicates

__all__ = ["FERMI_ENERGY_EDGES", "FERMI_PSF_R68_DEG", "FermiHealpixAdapter", "HealpixCube",
           "HealpixTiling", "fermi_psf_sigma_deg", "find_sources_healpix", "read_healpix_cube",
           "close_pairs", "merge_duplicates"]

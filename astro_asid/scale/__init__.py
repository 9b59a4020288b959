"""Survey-scale execution: blocks of an image as independent tasks, run in this
process or on a dask cluster.

`~astro_asid.find_sources` cuts an optical image into blocks of network tiles
when its detector can work that way (``asid-optical``). Each block is one
call of `process_block`, a pure function of the block's pixels, its geometry
(`Block`), a `DetectorSpec` and the characteriser option; the serial path and
dask workers call it on the same slices, so they give the same catalog.
``find_sources(..., scheduler="processes", workers=4)`` runs the blocks on a
local cluster, ``scheduler="tcp://host:8786"`` or a `distributed.Client` on
an existing one (see :doc:`/scale`). Any other detector (CTAO maps, the
classical detectors) runs on *patches* of the image (`astro_asid.scale.patches`:
`plan_patches`, `process_patch`, `find_in_patches`): each patch owns the sources
of its core, and sources two patches both report are merged in this process.
dask is an optional dependency (``pip install 'astro-asid[scale]'``), imported
only when a cluster is asked for.
"""

from astro_asid.scale.block import (POSITION_COLUMNS, Block, block_context, block_inputs,
                                    plan_blocks, process_block)
from astro_asid.scale.lazy import is_dask_array, lazy_sky_image
from astro_asid.scale.fits_sections import FitsSection, lazy_fits, lazy_optical_image
from astro_asid.scale.patches import (Patch, find_in_patches, patch_image, plan_patches,
                                      process_patch)
from astro_asid.scale.scheduler import SchedulerError, check_scheduler, map_blocks, open_client
from astro_asid.scale.spec import DetectorSpec, build_detector

__all__ = ["Block", "DetectorSpec", "FitsSection", "lazy_fits", "lazy_optical_image", "SchedulerError", "POSITION_COLUMNS", "block_context",
           "block_inputs", "build_detector", "check_scheduler", "is_dask_array",
           "lazy_sky_image", "map_blocks", "open_client", "plan_blocks", "process_block",
           "Patch", "plan_patches", "patch_image", "process_patch", "find_in_patches"]

"""Block-by-block source finding in optical images: memory bounded by the block.

`~astro_asid.find_sources` sends an optical image here when its detector
can work in blocks (``asid-optical``: `ASIDOpticalDetector.blocks`). Each
block is a square of network tiles; it is processed from start to end on its
own: background and noise on the block plus a margin (unless the image
carries maps), S/N, network, decoding, score calibration, and the
characteriser on the same block. A candidate belongs to the one tile where
it is most central, so blocks never report the same source twice and the
merged catalog needs no de-duplication: the blocks' rows are concatenated.

Only the input image, its mask and one block's maps are in memory at a time
(about 6 float32 maps of ``(block + 2 margin)**2`` pixels: ~130 MB for the
default 8 x 8 tiles of 256 px), whatever the image size.

Each block is one call of `astro_asid.scale.process_block` on the block's
slices of the image, in this process or, with ``find_sources(...,
scheduler=...)``, on the workers of a dask cluster (`astro_asid.scale`); both
give the same catalog, bit for bit.
"""

import numpy as np
from astropy.table import vstack

from astro_asid.characterize.apply import resolve_characterizer
from astro_asid.scale.block import (BLOCK_THREADS, block_context, block_inputs, plan_blocks,
                                    process_block)

__all__ = ["supports_blocks", "find_in_blocks"]


def supports_blocks(detector):
    """Whether ``detector`` can run block by block (has ``blocks`` and ``detect_block``)."""
    return all(hasattr(detector, a) for a in ("blocks", "detect_block", "block_snr",
                                              "outer_bounds", "finish"))


def _block_tasks(sky, blocks, detector, characterize, context, model, threads=None):
    """The `process_block` arguments of every block, made when asked for."""
    for block in blocks:
        parts = block_inputs(sky, block)
        data, mask = parts.pop("data"), parts.pop("mask")
        kwargs = dict(parts, threads=threads, **context)
        if model is not None:
            kwargs["model"] = model
        yield (data, mask, block, detector, characterize), kwargs


def _device_of(detector):
    """The torch device a detector's network runs on ("cpu" for non-deep detectors)."""
    from astro_asid.detection.deep import resolve_device

    return resolve_device(getattr(detector, "device", "cpu"))


def find_in_blocks(sky, detector, characterize=None, origin_name=None, scheduler=None,
                   workers=None, progress=False):
    """Detect and characterise ``sky`` block by block; one merged candidate table.

    Parameters
    ----------
    sky : `~astro_asid.SkyImage`
        A 2-D optical image; its data may be a dask array
        (`~astro_asid.scale.lazy_sky_image`): only one block's region is
        computed at a time.
    detector
        A block-capable detector (`supports_blocks`).
    characterize
        The ``find_sources`` option.
    origin_name : str, optional
        Names the detector in error messages.
    scheduler, workers
        Where the blocks run (see `~astro_asid.scale.check_scheduler`): in
        this process by default, else on a dask cluster, where each worker
        rebuilds the detector from its name and options.
    progress : bool
        Show a progress bar over the blocks.

    Returns
    -------
    `~astropy.table.QTable`
        The validated candidates (sorted by decreasing ``score``, stably:
        ties keep the block order), as `~astro_asid.find_sources` builds its
        catalog from; ``meta`` carries the characteriser's keys and
        ``meta["n_blocks"]``. The same table, bit for bit, whatever the scheduler.
    """
    from astro_asid.scale.scheduler import (auto_workers, check_scheduler, describe_plan,
                                            is_serial, map_blocks, open_client)
    from astro_asid.scale.spec import DetectorSpec, check_characterizer_spec

    if scheduler is None and workers is None:
        workers = auto_workers(int(np.prod(sky.shape)), _device_of(detector))
    plan = check_scheduler(scheduler, workers)
    model = resolve_characterizer(characterize, sky.instrument)
    blocks = plan_blocks(sky, detector)
    context = block_context(sky, origin_name)
    if is_serial(plan):
        tasks = _block_tasks(sky, blocks, detector, characterize, context, model)
        parts = map_blocks(process_block, tasks, progress=progress, total=len(blocks))
    else:
        spec = DetectorSpec.from_detector(detector)
        char = check_characterizer_spec(characterize)
        with open_client(plan) as client:
            tasks = _block_tasks(sky, blocks, spec, char, context, None, threads=BLOCK_THREADS)
            parts = map_blocks(process_block, tasks, client=client, progress=progress,
                               total=len(blocks))
    parts = [p for p in parts if p is not None]
    if any(len(p) for p in parts):
        parts = [p for p in parts if len(p)]  # empty blocks may lack characteriser columns
    else:
        parts = parts[:1]
    if not parts:
        # nothing valid anywhere: the detector's own (empty) table, for the schema
        from astro_asid.catalog import validate_candidates
        from astro_asid.detection.decoders import Candidates

        empty = detector.finish(Candidates.empty(), sky)
        return validate_candidates(empty, sky.shape, origin=origin_name or detector.name)
    meta = {}
    for p in parts:
        meta.update(p.meta)
    tab = vstack(parts, metadata_conflicts="silent") if len(parts) > 1 else parts[0]
    order = np.argsort(-np.asarray(tab["score"], float), kind="stable")
    tab = tab[order]
    tab.meta.update(meta)
    tab.meta["n_blocks"] = len(blocks)
    tab.meta["scheduler"] = describe_plan(plan)
    return tab

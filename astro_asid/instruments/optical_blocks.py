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
"""

import numpy as np
from astropy.table import vstack

from astro_asid.characterize.apply import characterize_candidates, resolve_characterizer

__all__ = ["supports_blocks", "find_in_blocks", "run_block", "POSITION_COLUMNS"]

#: Candidate columns in pixel coordinates, shifted between block and image.
POSITION_COLUMNS = ("x_centroid", "y_centroid", "x_detector", "y_detector")


def supports_blocks(detector):
    """Whether ``detector`` can run block by block (has ``blocks`` and ``detect_block``)."""
    return all(hasattr(detector, a) for a in ("blocks", "detect_block", "block_snr",
                                              "outer_bounds", "finish"))


def _block_image(sky, outer, maps):
    """The `SkyImage` of a block's outer region, with its background/noise maps."""
    snr, bad, back, noise = maps
    a0, a1, b0, b1 = outer
    sl = (slice(a0, a1), slice(b0, b1))
    meta = {k: (v[sl] if isinstance(v, np.ndarray) and v.shape == sky.shape else v)
            for k, v in sky.meta.items()}
    wcs = sky.wcs[a0:a1, b0:b1] if sky.wcs is not None else None
    data = np.asarray(sky.data[0][sl], np.float32)
    return sky.copy(data=data[np.newaxis], mask=bad[np.newaxis], wcs=wcs,
                    background=back[np.newaxis], noise=noise[np.newaxis], meta=meta)


def run_block(sky, detector, grid, jobs, bounds, characterize=None, model=None,
              origin_name=None):
    """Candidates of one block, characterised, in image pixel coordinates.

    Parameters
    ----------
    sky : `~astro_asid.SkyImage`
        The whole image (only the block's region is read).
    detector
        A block-capable detector (`supports_blocks`).
    grid, jobs, bounds
        The tile grid and one block from ``detector.blocks(sky.shape)``.
    characterize, model
        The ``find_sources`` option and the characteriser it resolved to.
    origin_name : str, optional
        Names the detector in error messages.

    Returns
    -------
    `~astropy.table.QTable` or None
        None when the block has no valid pixels.
    """
    from astro_asid.catalog import validate_candidates

    outer = detector.outer_bounds(sky, bounds)
    maps = detector.block_snr(sky, outer)
    if maps is None:
        return None
    cand = detector.detect_block(sky, grid, jobs, bounds, maps=(maps, outer[::2]))
    tab = detector.finish(cand, sky)
    tab = validate_candidates(tab, sky.shape, origin=origin_name or detector.name)
    if model is None:
        return tab
    a0, b0 = outer[0], outer[2]
    for name, off in (("x_centroid", b0), ("y_centroid", a0)):
        tab[name] = np.asarray(tab[name], float) - off
    tab = characterize_candidates(characterize, _block_image(sky, outer, maps), tab,
                                  detector=detector.name, model=model)
    for name in POSITION_COLUMNS:
        if name in tab.colnames:
            tab[name] = np.asarray(tab[name], float) + (b0 if name.startswith("x") else a0)
    return tab


def find_in_blocks(sky, detector, characterize=None, origin_name=None):
    """Detect and characterise ``sky`` block by block; one merged candidate table.

    Returns the validated candidates (sorted by decreasing ``score``), as
    `~astro_asid.find_sources` builds its catalog from; ``meta`` carries the
    characteriser's keys and ``meta["n_blocks"]``.
    """
    model = resolve_characterizer(characterize, sky.instrument)
    grid, blocks = detector.blocks(sky.shape)
    parts = [run_block(sky, detector, grid, jobs, bounds, characterize, model, origin_name)
             for jobs, bounds in blocks]
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
    return tab

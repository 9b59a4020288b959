"""Blocks of an image as independent units of work.

A block-capable detector (``asid-optical``, see
`astro_asid.instruments.optical_blocks.supports_blocks`) cuts an image into
blocks of network tiles. `plan_blocks` lists them as `Block` records (plain
numbers), `block_inputs` cuts the one region of the image a block needs (its
``outer`` region: the block plus the background margin), and
`process_block` turns those pixels into the block's characterised candidates
in image coordinates. `process_block` is a pure function of its arguments:
the serial path of `~astro_asid.find_sources` and the dask workers call it
on the same slices, so both give the same catalog, bit for bit.
"""

import contextlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Block", "plan_blocks", "block_inputs", "block_context", "process_block",
           "POSITION_COLUMNS"]

#: Candidate columns in pixel coordinates, shifted between block and image.
POSITION_COLUMNS = ("x_centroid", "y_centroid", "x_detector", "y_detector")

#: torch intra-op threads of a block on a dask worker: a block there is a single-threaded
#: unit of work, and parallelism comes from running several blocks at once
#: (``find_sources(..., workers=N)``). The sums inside a network layer depend on the
#: thread count (at the 1e-7 level), so a serial run reproduces the workers' catalog bit
#: for bit when it also runs torch with this many threads.
BLOCK_THREADS = 1


class OuterRegion:
    """The ``outer`` region ``(y0, y1, x0, x1)`` of a unit of work (`Block`,
    `~astro_asid.scale.patches.Patch`): the pixels its task receives."""

    @property
    def slices(self):
        """``(slice(y0, y1), slice(x0, x1))`` of the ``outer`` region in the image."""
        a0, a1, b0, b1 = self.outer
        return slice(a0, a1), slice(b0, b1)

    @property
    def outer_shape(self):
        """``(ny, nx)`` of the ``outer`` region."""
        a0, a1, b0, b1 = self.outer
        return a1 - a0, b1 - b0


@dataclass(frozen=True)
class Block(OuterRegion):
    """One block of an image: which tiles, which pixels.

    Parameters
    ----------
    index : int
        Position of the block in `plan_blocks`' list (the merge order).
    jobs : tuple of (int, int)
        The ``(iy, ix)`` network tiles of the block in the image's tile grid.
    bounds : tuple of int
        ``(y0, y1, x0, x1)``: the pixels those tiles cover.
    outer : tuple of int
        ``bounds`` plus the detector's background margin, clipped to the
        image: the region a worker receives.
    grid : tuple of tuple of int
        The image's tile grid ``(ys, yb, xs, xb)``: tile starts and the
        bounds of the part of each tile where it is the most central one.
    shape : tuple of int
        ``(ny, nx)`` of the whole image.
    """

    index: int
    jobs: tuple
    bounds: tuple
    outer: tuple
    grid: tuple
    shape: tuple


def plan_blocks(sky, detector):
    """The `Block` list of ``sky`` for a block-capable ``detector``.

    Parameters
    ----------
    sky : `~astro_asid.SkyImage`
        The image (only its shape and whether it carries background/noise
        maps are read; its data may be a dask array).
    detector
        A detector with ``blocks`` and ``outer_bounds``
        (`~astro_asid.detection.ASIDOpticalDetector`).

    Returns
    -------
    list of `Block`
    """
    grid, blocks = detector.blocks(sky.shape)
    grid = tuple(tuple(int(v) for v in part) for part in grid)
    shape = tuple(int(n) for n in sky.shape)
    out = []
    for i, (jobs, bounds) in enumerate(blocks):
        outer = tuple(int(v) for v in detector.outer_bounds(sky, bounds))
        out.append(Block(i, tuple((int(a), int(b)) for a, b in jobs),
                         tuple(int(v) for v in bounds), outer, grid, shape))
    return out


def block_inputs(sky, block):
    """The pixels of ``block``'s ``outer`` region of ``sky``: the arguments of
    `process_block` that change from block to block.

    Returns
    -------
    dict
        ``data`` and ``mask`` (2-D slices, views of ``sky``'s arrays: numpy or
        dask, as the image holds them), ``background`` and ``noise`` (slices,
        or None when the image carries no maps) and ``meta`` (``sky.meta``
        with its image-shaped arrays, such as ``saturated``, cut to the region).
    """
    if sky.n_bands != 1:
        raise ValueError(f"blocks need a 2-D image; this one has {sky.n_bands} bands")
    sl = block.slices
    maps = sky.background is not None and sky.noise is not None
    meta = {k: (v[sl] if _image_shaped(v, sky.shape) else v) for k, v in sky.meta.items()}
    return {"data": sky.data[0][sl], "mask": sky.mask[0][sl],
            "background": sky.background[0][sl] if maps else None,
            "noise": sky.noise[0][sl] if maps else None, "meta": meta}


def _image_shaped(value, shape):
    """Whether a meta value is a per-pixel map of the image (numpy or dask)."""
    from astro_asid.scale.lazy import is_dask_array

    return (isinstance(value, np.ndarray) or is_dask_array(value)) \
        and tuple(value.shape) == tuple(shape)


def block_context(sky, origin=None):
    """The arguments of `process_block` shared by every block of ``sky``: ``wcs``
    (of the whole image), ``unit``, ``instrument``, ``psf`` and ``origin``."""
    return {"wcs": sky.wcs, "unit": sky.unit, "instrument": sky.instrument, "psf": sky.psf,
            "origin": origin}


def process_block(data, mask, block, detector, characterize=None, *, wcs=None, meta=None,
                  background=None, noise=None, unit=None, instrument="optical", psf=None,
                  origin=None, model=None, threads=None):
    """Detect and characterise the sources of one block; a pure function of its arguments.

    Parameters
    ----------
    data : `~numpy.ndarray`
        The block's ``outer`` region of the image, ``block.outer_shape``
        (copied to float32; NaN and infinite pixels are masked).
    mask : `~numpy.ndarray` of bool or None
        True marks pixels to ignore, same shape.
    block : `Block`
        The block's geometry.
    detector : `~astro_asid.scale.DetectorSpec` or detector instance
        A spec is built once per process (`~astro_asid.scale.build_detector`).
    characterize : None, bool, str or `~astro_asid.characterize.Characterizer`
        As for `~astro_asid.find_sources`.
    wcs : `~astropy.wcs.WCS`, optional
        Celestial WCS of the *whole* image (cut to the region here).
    meta : dict, optional
        The image's meta with image-shaped arrays cut to the region (`block_inputs`).
    background, noise : `~numpy.ndarray`, optional
        The image's own maps on the region; estimated on the region when not given.
    unit, instrument, psf
        As in `~astro_asid.SkyImage`.
    origin : str, optional
        Names the detector in error messages.
    model : `~astro_asid.characterize.Characterizer`, optional
        The characteriser already resolved from ``characterize`` (in-process
        callers); resolved here, once per process, when not given.

    Returns
    -------
    `~astropy.table.QTable` or None
        The block's validated candidates in image pixel coordinates (the
        detector's order), with the characteriser's columns; None when the
        block has no valid pixel.

    threads : int, optional
        torch intra-op threads during the call (the previous setting is
        restored afterwards); None leaves torch's setting alone. The dask
        path passes `BLOCK_THREADS`.
    """
    with _torch_threads(threads):
        return _process_block(data, mask, block, detector, characterize, wcs=wcs, meta=meta,
                              background=background, noise=noise, unit=unit,
                              instrument=instrument, psf=psf, origin=origin, model=model)


@contextlib.contextmanager
def _torch_threads(n):
    """torch limited to ``n`` intra-op threads inside the block (restored on exit)."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


def _process_block(data, mask, block, detector, characterize, *, wcs, meta, background, noise,
                   unit, instrument, psf, origin, model):
    from astro_asid.catalog import validate_candidates
    from astro_asid.characterize.apply import characterize_candidates
    from astro_asid.core import SkyImage
    from astro_asid.detection.decoders import Candidates
    from astro_asid.scale.spec import build_detector, resolve_block_characterizer

    det = build_detector(detector)
    a0, a1, b0, b1 = block.outer
    ny, nx = block.outer_shape
    data = np.array(data, dtype=np.float32, order="C", copy=True)
    if data.shape != (ny, nx):
        raise ValueError(f"block {block.index}: data of shape {data.shape}, its region "
                         f"{block.outer} needs {(ny, nx)}")
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool).reshape(ny, nx)
    data[bad] = np.nan
    maps = {}
    if background is not None and noise is not None:
        maps = {"background": np.array(background, np.float32, order="C")[np.newaxis],
                "noise": np.array(noise, np.float32, order="C")[np.newaxis]}
    local = SkyImage(data[np.newaxis], wcs=wcs[a0:a1, b0:b1] if wcs is not None else None,
                     mask=bad[np.newaxis], unit=unit, instrument=instrument, psf=psf,
                     meta=dict(meta or {}), **maps)
    got = det.block_snr(local, (0, ny, 0, nx))
    if got is None:
        return None
    where = origin or det.name
    raw = det.detect_block(local, block.grid, block.jobs, block.bounds, maps=(got, (a0, b0)))
    # the detector's final cuts on the block (an integer shift of float64 positions is exact)
    raw = Candidates(raw.x - b0, raw.y - a0, raw.raw_score)
    tab = validate_candidates(det.finish(raw, local), (ny, nx), origin=where)
    if model is None:
        model = resolve_block_characterizer(characterize, instrument)
    if model is not None:
        _, region_bad, back, sigma = got[:4]
        region = local.copy(mask=region_bad[np.newaxis], background=back[np.newaxis],
                            noise=sigma[np.newaxis])
        tab = characterize_candidates(characterize, region, tab, detector=det.name, model=model)
    for name in POSITION_COLUMNS:
        if name in tab.colnames:
            tab[name] = np.asarray(tab[name], float) + (b0 if name.startswith("x") else a0)
    return tab

"""Groups of all-sky HEALPix tiles as independent units of work.

`~astro_asid.instruments.fermi.find_sources_healpix` resamples the HEALPix
maps onto the CAR tiles in the calling process (the ``"split"`` resampling
draws its random numbers there, in one pass over all tiles, so the counts
never depend on how tiles are grouped or where they run). The tiles with a
valid pixel are then cut into consecutive groups (`plan_tile_groups`); one
group is one call of `process_tiles`, a pure function of the group's tile
images, their geometry (`TileGroup`, plain numbers), a
`~astro_asid.scale.DetectorSpec` and the ``characterize`` option, which
detects and characterises the group's candidates in tile pixel coordinates.
The merge across tile overlaps stays in the calling process, fed the groups'
tables in tile order: the serial path and dask workers give the same catalog.
"""

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["TileGroup", "DEFAULT_TILES_PER_TASK", "tiles_per_task_for", "plan_tile_groups",
           "tile_group_tasks", "process_tiles", "CharacterizerOnce"]

#: Tiles per task asked for by default: a full ``grid_nside=8`` grid (768 tiles) makes 48
#: tasks for a per-tile detector (``tsmap``); a batched detector rounds it up to whole
#: batches (`tiles_per_task_for`).
DEFAULT_TILES_PER_TASK = 16


@dataclass(frozen=True)
class TileGroup:
    """One task's tiles and their geometry (plain numbers, cheap to send).

    Parameters
    ----------
    index : int
        Position of the group in `plan_tile_groups`' list (the merge order).
    tiles : tuple of int
        The tiles (indices into the `~astro_asid.instruments.fermi.HealpixTiling`),
        in increasing order.
    lon0, lat0 : tuple of float
        Their centres (deg, in ``frame``).
    frame : str
        ``"galactic"`` or ``"icrs"``.
    tile_npix : int
        Tile width in pixels.
    tile_cdelt : float
        Tile pixel size (deg).
    crpix : float
        FITS reference pixel (1-based) of both axes.
    """

    index: int
    tiles: tuple
    lon0: tuple
    lat0: tuple
    frame: str
    tile_npix: int
    tile_cdelt: float
    crpix: float

    def wcs(self, j):
        """The WCS of the group's ``j``-th tile (the tiling's own, rebuilt)."""
        from astro_asid.instruments.fermi import _tile_wcs

        return _tile_wcs(self.frame, self.lon0[j], self.lat0[j], self.tile_cdelt, self.crpix,
                         self.tile_npix)


def tiles_per_task_for(detector, tiles_per_task=None):
    """Tiles in one task: ``tiles_per_task`` (default `DEFAULT_TILES_PER_TASK`) rounded up
    to a whole number of the detector's batches.

    A detector with a batch path (``detect_arrays``, e.g. ``asid-unet``) runs its network
    on ``batch_size`` tiles at once, and a network's output for one tile depends, in the
    last bits, on the size of its batch. Groups of whole batches put every tile in the
    same batch as a serial run over all tiles, so that the catalogs agree bit for bit.
    """
    if tiles_per_task is None:
        tiles_per_task = DEFAULT_TILES_PER_TASK
    if isinstance(tiles_per_task, bool) or not isinstance(tiles_per_task, (int, np.integer)) \
            or tiles_per_task < 1:
        raise ValueError(f"tiles_per_task must be a positive integer, not {tiles_per_task!r}")
    batch = 1
    if hasattr(detector, "detect_arrays"):
        batch = int(getattr(detector, "batch_size", 64) or 64)
    return -(-int(tiles_per_task) // batch) * batch


def plan_tile_groups(tiling, active, tiles_per_task):
    """The `TileGroup` list: consecutive runs of ``tiles_per_task`` of the ``active`` tiles.

    Parameters
    ----------
    tiling : `~astro_asid.instruments.fermi.HealpixTiling`
    active : array-like of int
        The tiles to search (those with a valid pixel), in increasing order.
    tiles_per_task : int
        See `tiles_per_task_for`.

    Returns
    -------
    list of `TileGroup`
    """
    active = [int(i) for i in active]
    return [TileGroup(k, tuple(part), tuple(float(tiling.lon0[i]) for i in part),
                      tuple(float(tiling.lat0[i]) for i in part), tiling.frame,
                      int(tiling.tile_npix), float(tiling.tile_cdelt), float(tiling.crpix))
            for k, part in enumerate(active[s:s + tiles_per_task]
                                     for s in range(0, len(active), tiles_per_task))]


def tile_group_tasks(groups, counts, detector, characterize, exposure=None, background=None,
                     **context):
    """The `process_tiles` arguments of every group, made when asked for.

    ``counts``, ``exposure`` and ``background`` are the tile images of the whole
    tiling, ``(n_tiles, n_bands, n, n)`` (counts NaN where masked); each task
    gets copies of its own tiles only. ``context`` holds the keyword arguments
    shared by every group.
    """
    for group in groups:
        idx = np.asarray(group.tiles, np.intp)
        kwargs = dict(context)
        kwargs["exposure"] = None if exposure is None else exposure[idx]
        kwargs["background"] = None if background is None else background[idx]
        yield (counts[idx], group, detector, characterize), kwargs


class CharacterizerOnce:
    """The characteriser of ``option`` for ``instrument``, resolved on first use and kept
    (the in-process path: loaded once per call, and only when a tile has candidates)."""

    def __init__(self, option, instrument):
        self.option, self.instrument = option, instrument
        self._done, self._model = False, None

    def __call__(self):
        if not self._done:
            from astro_asid.characterize.apply import resolve_characterizer

            self._model = resolve_characterizer(self.option, self.instrument)
            self._done = True
        return self._model


def process_tiles(counts, group, detector, characterize=None, *, exposure=None,
                  background=None, energy_edges=None, psf_sigma_pix=None,
                  instrument="fermi-lat", origin=None, blas_threads=1, threads=None,
                  model=None):
    """Detect and characterise the sources of one group of tiles; a pure function of its
    arguments.

    Parameters
    ----------
    counts : `~numpy.ndarray`
        ``(n_tiles, n_bands, n, n)`` tile images of the group, NaN where masked
        (the mask is ``isnan(counts)``: resampled counts are finite).
    group : `TileGroup`
        The tiles' geometry.
    detector : `~astro_asid.scale.DetectorSpec` or detector instance
        A spec is built once per process (`~astro_asid.scale.build_detector`).
    characterize : None, bool, str or `~astro_asid.characterize.Characterizer`
        As for `~astro_asid.instruments.fermi.find_sources_healpix` (None, a
        bool or a weights path on a dask worker).
    exposure, background : `~numpy.ndarray`, optional
        The tiles' exposure and background, same shape as ``counts``.
    energy_edges : `~astropy.units.Quantity`, optional
        The bands' edges.
    psf_sigma_pix : sequence of float, optional
        PSF sigma per band in tile pixels (``image.psf["sigma_pix"]``).
    instrument : str
        Stored on the tile images.
    origin : str, optional
        Where the detector comes from, for error messages.
    blas_threads : int or None
        BLAS threads while detecting and characterising (threadpoolctl).
    threads : int, optional
        torch intra-op threads during the call (restored afterwards); None
        leaves torch's setting alone. The dask path passes
        `~astro_asid.scale.block.BLOCK_THREADS` (1); the serial path passes
        None, and equals the workers' result bit for bit when torch runs with
        that many threads in the calling process (a network layer's sums
        depend on the thread count at the 1e-7 level).
    model : callable, optional
        Returns the characteriser resolved from ``characterize``
        (`CharacterizerOnce`, in-process callers); None: resolved here, once
        per process.

    Returns
    -------
    dict
        ``tables`` (the validated, characterised candidates of the tiles
        with any, in tile pixel coordinates), ``tiles`` (their tile indices),
        ``characterized`` (whether a characteriser ran) and the seconds spent
        in ``detect_s`` and ``characterize_s``.
    """
    from astro_asid.scale.block import _torch_threads

    with _torch_threads(threads):
        return _process_tiles(counts, group, detector, characterize, exposure=exposure,
                              background=background, energy_edges=energy_edges,
                              psf_sigma_pix=psf_sigma_pix, instrument=instrument,
                              origin=origin, blas_threads=blas_threads, model=model)


def _process_tiles(counts, group, detector, characterize, *, exposure, background,
                   energy_edges, psf_sigma_pix, instrument, origin, blas_threads, model):
    from astropy import units as u

    from astro_asid.characterize.apply import characterize_candidates
    from astro_asid.core import SkyImage
    from astro_asid.instruments.fermi import _blas_limit, _detect_tiles
    from astro_asid.scale.spec import build_detector, resolve_block_characterizer

    det = build_detector(detector)
    counts = np.asarray(counts, dtype=np.float32)
    n, size = len(group.tiles), group.tile_npix
    if counts.ndim != 4 or counts.shape[0] != n or counts.shape[2:] != (size, size):
        raise ValueError(f"tile group {group.index}: counts of shape {counts.shape}, its "
                         f"{n} tiles need ({n}, n_bands, {size}, {size})")
    masks = np.isnan(counts)
    psf = None if psf_sigma_pix is None else [float(v) for v in psf_sigma_pix]

    def image(j):
        return SkyImage(data=counts[j], wcs=group.wcs(j), mask=masks[j],
                        energy_edges=energy_edges, unit=u.ct, instrument=instrument,
                        exposure=None if exposure is None else exposure[j],
                        background=None if background is None else background[j],
                        psf=None if psf is None else {"sigma_pix": list(psf)},
                        meta={"tile": group.tiles[j],
                              "tile_centre": (group.lon0[j], group.lat0[j])})

    t0 = time.perf_counter()
    tables, local = _detect_tiles(det, origin, counts, masks, image, blas_threads,
                                  labels=group.tiles)
    t1 = time.perf_counter()
    characterized = False
    if tables and characterize is not False:
        char = model() if model is not None else resolve_block_characterizer(characterize,
                                                                             instrument)
        if char is not None:
            with _blas_limit(blas_threads):
                tables = [characterize_candidates(characterize, image(j), t, detector=det.name,
                                                  model=char)
                          for t, j in zip(tables, local)]
            characterized = True
    return {"tables": tables, "tiles": [group.tiles[j] for j in local],
            "characterized": characterized, "detect_s": t1 - t0,
            "characterize_s": time.perf_counter() - t1}

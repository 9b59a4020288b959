"""Patches of an image as independent units of work, for any detector.

`~astro_asid.find_sources` runs a detector that has no blocks (the CTAO
U-Net ``asid-ctao``, ``tsmap``, ``peaks``, ``dao``...) on a whole image in one
call. With a ``scheduler``/``workers``, or on an image with more than
``astro_asid.conf.patch_pixels`` pixels, it cuts the image into *patches*
instead (`find_in_patches`):

- `plan_patches` tiles the image with non-overlapping *cores* of at most
  ``conf.patch_size`` pixels a side; a patch's *outer* region is its core grown
  by an overlap on every side (the detector's ``halo_pixels`` when it declares
  one, else ``conf.patch_overlap``), clipped to the image.
- `patch_image` cuts the `~astro_asid.SkyImage` of a patch's outer region
  (data, mask, background, noise, per-pixel exposure and image-shaped meta
  arrays; the WCS sliced; PSF, energy edges, unit and instrument kept).
- `process_patch`, a pure function of that image, the patch's geometry, a
  `~astro_asid.scale.DetectorSpec` and the ``characterize`` option, detects,
  validates, drops candidates on masked pixels, keeps the candidates whose
  detected position lies in the core (each position of the image is in exactly
  one core: a patch *owns* the sources of its core) or within the merge radius
  of it, characterises them and returns them in image pixel coordinates.
- `merge_patch_duplicates` keeps one detection of a source that two patches
  both report: a detector that is not translation invariant (a U-Net tiling
  its input from the patch's corner, a background estimated on the patch) can
  find one source from two neighbouring patches at slightly different
  positions on either side of the boundary of their cores, so that both
  patches own it, or neither does.

The serial path and dask workers call `process_patch` on the same patch images
and the merge runs in the calling process on the patches' tables in patch
order, so the catalog is the same, bit for bit, wherever the patches ran.
"""

from dataclasses import dataclass

import numpy as np

from astro_asid.scale.block import OuterRegion

__all__ = ["Patch", "plan_patches", "patch_image", "process_patch", "patch_overlap_for",
           "merge_radius_for", "merge_patch_duplicates", "find_in_patches",
           "MIN_MERGE_RADIUS"]

#: Smallest default merge radius (pixels), see `merge_radius_for`.
MIN_MERGE_RADIUS = 1.5


@dataclass(frozen=True)
class Patch(OuterRegion):
    """One patch of an image: the pixels it owns and the pixels its detector sees.

    Parameters
    ----------
    index : int
        Position of the patch in `plan_patches`' list (row-major; the merge order).
    core : tuple of int
        ``(y0, y1, x0, x1)``: the pixels whose sources the patch reports. The
        cores of a plan tile the image without overlap.
    outer : tuple of int
        ``core`` grown by the overlap on each side, clipped to the image: the
        region the detector runs on.
    """

    index: int
    core: tuple
    outer: tuple

    def owns(self, x, y, margin=0):
        """Whether image pixel positions ``(x, y)`` lie in the core (the pixel whose
        centre is nearest, ``floor(v + 0.5)``, is a core pixel), or within
        ``margin`` pixels of it."""
        y0, y1, x0, x1 = self.core
        ix = np.floor(np.asarray(x, float) + 0.5)
        iy = np.floor(np.asarray(y, float) + 0.5)
        return (iy >= y0 - margin) & (iy < y1 + margin) & (ix >= x0 - margin) \
            & (ix < x1 + margin)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive" if minimum > 0 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer (pixels), not {value!r}")
    return int(value)


def _cuts(n, size):
    """Edges of ``ceil(n / size)`` consecutive pieces of ``range(n)``, sizes within 1."""
    k = -(-n // size)
    return [(i * n) // k for i in range(k + 1)]


def plan_patches(shape, size, overlap):
    """The `Patch` list of an image of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    size : int
        Largest core side (pixels, ``conf.patch_size``). Each axis is cut into
        ``ceil(n / size)`` cores of equal length (within one pixel).
    overlap : int
        Pixels added to a core on each side (``conf.patch_overlap`` or the
        detector's ``halo_pixels``), clipped to the image.

    Returns
    -------
    list of `Patch`
        Row-major order (``index`` is the position in the list).

    Raises
    ------
    ValueError
        ``size`` is not a positive integer or ``overlap`` not a non-negative one.
    """
    size = _check_int(size, "patch_size", 1)
    overlap = _check_int(overlap, "patch_overlap", 0)
    ny, nx = (int(n) for n in shape)
    ys, xs = _cuts(ny, size), _cuts(nx, size)
    out = []
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            outer = (max(y0 - overlap, 0), min(y1 + overlap, ny),
                     max(x0 - overlap, 0), min(x1 + overlap, nx))
            out.append(Patch(len(out), (y0, y1, x0, x1), outer))
    return out


def _per_pixel(value, shape):
    """Whether ``value`` is a per-pixel map of an image of ``shape``: ``(ny, nx)`` or
    ``(n_bands, ny, nx)`` (numpy or dask)."""
    from astro_asid.scale.lazy import is_dask_array

    return (isinstance(value, np.ndarray) or is_dask_array(value)) \
        and value.ndim in (2, 3) and tuple(value.shape[-2:]) == tuple(shape)


def _cut(value, sl):
    """A copy of the ``sl`` region of a per-pixel map (the last two axes; a
    `~astropy.units.Quantity` keeps its unit, a dask array is computed)."""
    part = value[(Ellipsis,) + sl]
    return part.copy() if isinstance(part, np.ndarray) else np.asarray(part)


def patch_image(sky, patch):
    """The `~astro_asid.SkyImage` of ``patch``'s outer region of ``sky``.

    Data, mask and the per-pixel maps (background, noise, an exposure of shape
    ``(n_bands, ny, nx)``, image-shaped ``meta`` arrays such as ``saturated``)
    are copied out of the region; the WCS is sliced (``wcs[y0:y1, x0:x1]``);
    the PSF, energy edges, unit, instrument and the rest of ``meta`` are kept.
    """
    shape = sky.shape
    sl = patch.slices

    def cut(value):
        return _cut(value, sl) if value is not None and _per_pixel(value, shape) else value

    meta = {k: cut(v) for k, v in sky.meta.items()}
    return sky.copy(data=_cut(sky.data, sl), mask=_cut(sky.mask, sl),
                    wcs=sky.wcs[sl] if sky.wcs is not None else None,
                    background=cut(sky.background), noise=cut(sky.noise),
                    exposure=cut(sky.exposure), meta=meta)


def process_patch(image, patch, detector, characterize=None, *, margin=0, origin=None,
                  model=None, threads=None):
    """Detect and characterise the sources one patch owns; a pure function of its arguments.

    Parameters
    ----------
    image : `~astro_asid.SkyImage`
        The patch's outer region (`patch_image`).
    patch : `Patch`
        The patch's geometry.
    detector : `~astro_asid.scale.DetectorSpec` or detector instance
        A spec is built once per process (`~astro_asid.scale.build_detector`).
    characterize : None, bool, str or `~astro_asid.characterize.Characterizer`
        As for `~astro_asid.find_sources` (None, a bool or a weights path on a
        dask worker).
    margin : int, optional
        Detections up to this many pixels outside the core are reported too
        (the merge radius, rounded up; see `merge_patch_duplicates`).
    origin : str, optional
        Names the detector in error messages.
    model : `~astro_asid.characterize.Characterizer`, optional
        The characteriser already resolved from ``characterize`` (in-process
        callers); resolved here, once per process, when not given.
    threads : int, optional
        torch intra-op threads during the call (restored afterwards); None
        leaves torch's setting alone. The dask path passes
        `~astro_asid.scale.block.BLOCK_THREADS`.

    Returns
    -------
    dict or None
        ``table``: the validated candidates in the core or within ``margin``
        of it (the detector's order), characterised, in image pixel
        coordinates; ``owned``: True for the rows in the core; ``others``:
        the ``(n, 2)`` image pixel positions ``(x, y)`` of the patch's other
        (unmasked) detections (`merge_patch_duplicates` uses them to tell
        duplicates from pairs of sources). None when the patch has no valid
        pixel.

    Raises
    ------
    `~astro_asid.utils.exceptions.PluginError`
        The detector failed (other than with a `ValueError` or `TypeError`,
        which pass through) or returned output that breaks the schema.
    """
    from astro_asid.scale.block import _torch_threads

    with _torch_threads(threads):
        return _process_patch(image, patch, detector, characterize, margin=margin,
                              origin=origin, model=model)


def _process_patch(image, patch, detector, characterize, *, margin, origin, model):
    from astro_asid.catalog import validate_candidates
    from astro_asid.characterize.apply import characterize_candidates
    from astro_asid.scale.block import POSITION_COLUMNS
    from astro_asid.scale.spec import build_detector, resolve_block_characterizer
    from astro_asid.utils.exceptions import PluginError

    det = build_detector(detector)
    if tuple(image.shape) != tuple(patch.outer_shape):
        raise ValueError(f"patch {patch.index}: an image of shape {tuple(image.shape)}, its "
                         f"region {patch.outer} needs {patch.outer_shape}")
    mask2d = image.mask2d
    if mask2d.all():
        return None
    where = origin or det.name
    try:
        raw = det.detect(image)
    except (ValueError, TypeError, PluginError):
        raise
    except Exception as exc:
        raise PluginError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
    cands = validate_candidates(raw, image.shape, origin=where)
    a0, _, b0, _ = patch.outer
    if len(cands):
        # as find_sources: no source in pixels the user masked out
        ny, nx = image.shape
        x = np.asarray(cands["x_centroid"], float)
        y = np.asarray(cands["y_centroid"], float)
        ix = np.clip(np.round(x).astype(int), 0, nx - 1)
        iy = np.clip(np.round(y).astype(int), 0, ny - 1)
        cands = cands[~mask2d[iy, ix]]
    # image coordinates (the same arithmetic wherever the patch runs)
    x = np.asarray(cands["x_centroid"], float) + b0
    y = np.asarray(cands["y_centroid"], float) + a0
    near = patch.owns(x, y, _check_int(margin, "margin", 0))
    others = np.column_stack([x[~near], y[~near]])
    cands = cands[near]
    owned = patch.owns(x[near], y[near])
    if model is None:
        model = resolve_block_characterizer(characterize, image.instrument)
    cands = characterize_candidates(characterize, image, cands, detector=det.name, model=model)
    for name in POSITION_COLUMNS:
        if name in cands.colnames:
            cands[name] = np.asarray(cands[name], float) + (b0 if name.startswith("x") else a0)
    return {"table": cands, "owned": owned, "others": others}


def patch_overlap_for(detector, overlap=None):
    """The overlap (pixels) of a detector's patches.

    ``overlap`` when given; else the detector's ``halo_pixels`` (the farthest
    pixel, from a detection, that can change it) when it declares one; else
    ``astro_asid.conf.patch_overlap``.
    """
    if overlap is None:
        overlap = getattr(detector, "halo_pixels", None)
    if overlap is None:
        from astro_asid.config import conf

        overlap = conf.patch_overlap
    return _check_int(overlap, "patch_overlap", 0)


def merge_radius_for(sky, radius=None):
    """The merge radius (pixels) of `merge_patch_duplicates` for ``sky``.

    ``radius`` when given; else twice the PSF's Gaussian sigma in its widest
    band (``sky.psf["sigma_pix"]``, or ``"fwhm_pix"`` / 2.3548), at least
    `MIN_MERGE_RADIUS` (1.5 px, which is also the radius without a PSF).
    """
    if radius is not None:
        radius = float(radius)
        if not np.isfinite(radius) or radius <= 0:
            raise ValueError(f"merge_radius must be a positive number of pixels, not {radius}")
        return radius
    psf = sky.psf or {}
    sigma = None
    if psf.get("sigma_pix") is not None:
        sigma = np.asarray(psf["sigma_pix"], float)
    elif psf.get("fwhm_pix") is not None:
        sigma = np.asarray(psf["fwhm_pix"], float) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    if sigma is None or sigma.size == 0 or not np.all(np.isfinite(sigma)):
        return MIN_MERGE_RADIUS
    return max(2.0 * float(np.max(sigma)), MIN_MERGE_RADIUS)


def merge_patch_duplicates(x, y, score, patch, owned, radius, reported=None):
    """Which detections to keep when neighbouring patches report the same source.

    A patch reports the detections in its core (*owned*) and those within
    ``radius`` outside it (see `process_patch`). Two detections are
    duplicates when they come from *different* patches, both are reported,
    they lie within ``radius`` pixels of each other, and each is the other's
    nearest detection among all those of the other's patch (reported or not).
    Of each group of duplicates one is kept: an owned detection before one
    outside its patch's core, then the highest score (ties: the first in the
    input order). A reported detection outside its patch's core is kept only
    when it won such a group: the patch whose core it is in saw the source too
    but placed it across the boundary, so neither patch owns it. Deterministic.

    A pair of real sources on either side of a core boundary is seen by both
    patches, each of which detects both, so each detection's nearest in the
    other patch is its own twin and the pair is not merged; a source found by
    two patches at slightly different positions is kept once, and one whose
    two positions straddle the boundary the wrong way is not lost.

    Parameters
    ----------
    x, y : array-like
        Image pixel positions of all detections.
    score : array-like
        Their scores (only those of reported detections are compared).
    patch : array-like of int
        The patch each detection came from.
    owned : array-like of bool
        True for the detections in their patch's core.
    radius : float
        Largest distance (pixels) of two detections of one source.
    reported : array-like of bool, optional
        True for the detections a patch reports (owned, or within ``radius``
        of its core); the others only tell duplicates from pairs. Default:
        ``owned``.

    Returns
    -------
    keep : `~numpy.ndarray` of bool
        True for the detections to keep (always reported ones).
    """
    from scipy.spatial import cKDTree

    from astro_asid.instruments.merge import _mutual_nearest, _resolve_duplicates

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    score = np.asarray(score, float).ravel()
    patch = np.asarray(patch).ravel()
    owned = np.asarray(owned, bool).ravel()
    reported = owned.copy() if reported is None else np.asarray(reported, bool).ravel() | owned
    keep = owned.copy()
    if x.size < 2:
        return keep
    pos = np.column_stack([x, y])
    pairs = cKDTree(pos).query_pairs(float(radius), output_type="ndarray")
    if len(pairs) == 0:
        return keep
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    pairs = pairs[patch[pairs[:, 0]] != patch[pairs[:, 1]]]
    if len(pairs) == 0:
        return keep
    sep = np.hypot(*(pos[pairs[:, 0]] - pos[pairs[:, 1]]).T)
    pairs = pairs[_mutual_nearest(pairs, sep, patch)]
    pairs = pairs[reported[pairs[:, 0]] & reported[pairs[:, 1]]]
    if len(pairs):
        # owned detections first (scores are within 0..1), then by score
        won = np.ones(x.size, bool)
        _resolve_duplicates(pairs, score + 2.0 * owned, won, np.arange(x.size))
        involved = np.unique(pairs)
        keep[involved] = won[involved]
    return keep


def _patch_tasks(sky, patches, detector, characterize, origin, margin, model=None,
                 threads=None):
    """The `process_patch` arguments of every patch, made when asked for."""
    for patch in patches:
        kwargs = {"margin": margin, "origin": origin, "threads": threads}
        if model is not None:
            kwargs["model"] = model
        yield (patch_image(sky, patch), patch, detector, characterize), kwargs


def _positions(tab):
    """The detector's positions of a patch table (before any characteriser refined them)."""
    xn = "x_detector" if "x_detector" in tab.colnames else "x_centroid"
    yn = "y_detector" if "y_detector" in tab.colnames else "y_centroid"
    return np.asarray(tab[xn], float), np.asarray(tab[yn], float)


def find_in_patches(sky, detector, characterize=None, origin_name=None, scheduler=None,
                    workers=None, progress=False, size=None, overlap=None, merge_radius=None):
    """Detect and characterise ``sky`` patch by patch; one merged candidate table.

    Parameters
    ----------
    sky : `~astro_asid.SkyImage`
        The image (in memory).
    detector
        Any detector; on a dask cluster it must be a registered class (workers
        rebuild it from its name and options, `~astro_asid.scale.DetectorSpec`).
    characterize
        The ``find_sources`` option (None, a bool or a weights path on dask).
    origin_name : str, optional
        Names the detector in error messages.
    scheduler, workers
        Where the patches run (see `~astro_asid.scale.check_scheduler`): in
        this process by default, else on a dask cluster.
    progress : bool
        Show a progress bar over the patches.
    size : int, optional
        Largest core side (pixels); default ``astro_asid.conf.patch_size``.
    overlap : int, optional
        Pixels of context on each side of a core; default `patch_overlap_for`.
    merge_radius : float, optional
        Pixels; default `merge_radius_for`.

    Returns
    -------
    `~astropy.table.QTable`
        The validated candidates (sorted by decreasing ``score``, stably: ties
        keep the patch order), as `~astro_asid.find_sources` builds its catalog
        from; ``meta`` carries the characteriser's keys, ``meta["n_patches"]``,
        ``meta["patch_duplicates"]`` (detections dropped as duplicates of
        another patch's) and ``meta["scheduler"]``. The same table, bit for
        bit, whatever the scheduler.
    """
    from astropy.table import vstack

    from astro_asid.catalog import validate_candidates
    from astro_asid.characterize.apply import resolve_characterizer
    from astro_asid.config import conf
    from astro_asid.scale.block import BLOCK_THREADS
    from astro_asid.scale.scheduler import (check_scheduler, describe_plan, is_serial,
                                            map_blocks, open_client)
    from astro_asid.scale.spec import DetectorSpec, check_characterizer_spec

    plan = check_scheduler(scheduler, workers)
    patches = plan_patches(sky.shape, conf.patch_size if size is None else size,
                           patch_overlap_for(detector, overlap))
    radius = merge_radius_for(sky, merge_radius)
    margin = int(np.ceil(radius))
    run = dict(progress=progress, total=len(patches), desc="patches")
    if is_serial(plan):
        model = resolve_characterizer(characterize, sky.instrument)
        tasks = _patch_tasks(sky, patches, detector, characterize, origin_name, margin, model)
        parts = map_blocks(process_patch, tasks, **run)
    else:
        spec = DetectorSpec.from_detector(detector)
        char = check_characterizer_spec(characterize)
        with open_client(plan) as client:
            tasks = _patch_tasks(sky, patches, spec, char, origin_name, margin,
                                 threads=BLOCK_THREADS)
            parts = map_blocks(process_patch, tasks, client=client, **run)
    done = [(p, i) for i, p in enumerate(parts) if p is not None]
    tables = [p["table"] for p, _ in done]
    meta = {}
    for t in tables:
        meta.update(t.meta)
    # a source reported by two patches: keep one (the other detections tell pairs apart)
    xs, ys, scores, where, owned, reported = [], [], [], [], [], []
    for p, i in done:
        tx, ty = _positions(p["table"])
        others = np.asarray(p["others"], float).reshape(-1, 2)
        xs += [tx, others[:, 0]]
        ys += [ty, others[:, 1]]
        scores += [np.asarray(p["table"]["score"], float), np.zeros(len(others))]
        where.append(np.full(len(tx) + len(others), i))
        owned += [np.asarray(p["owned"], bool), np.zeros(len(others), bool)]
        reported += [np.ones(len(tx), bool), np.zeros(len(others), bool)]
    n_dup = 0
    if done:
        reported = np.concatenate(reported)
        owned = np.concatenate(owned)
        keep = merge_patch_duplicates(np.concatenate(xs), np.concatenate(ys),
                                      np.concatenate(scores), np.concatenate(where), owned,
                                      radius, reported=reported)
        # duplicates: reported detections that another patch's detection replaces
        n_dup = int(owned.sum() - (keep & owned).sum())
        keep = keep[reported]
        start = 0
        for k, t in enumerate(tables):
            if not keep[start:start + len(t)].all():
                tables[k] = t[keep[start:start + len(t)]]
            start += len(t)
    if any(len(t) for t in tables):
        tables = [t for t in tables if len(t)]  # empty ones may lack characteriser columns
    else:
        tables = tables[:1]
    if not tables:
        # no patch with a valid pixel: an empty table of the required columns
        from astropy.table import QTable

        tab = validate_candidates(QTable(names=("x_centroid", "y_centroid", "score"),
                                         dtype=(float, float, float)), sky.shape,
                                  origin=origin_name or detector.name)
    else:
        tab = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
        order = np.argsort(-np.asarray(tab["score"], float), kind="stable")
        tab = tab[order]
    tab.meta.update(meta)
    tab.meta["n_patches"] = len(patches)
    tab.meta["patch_duplicates"] = n_dup
    tab.meta["scheduler"] = describe_plan(plan)
    return tab

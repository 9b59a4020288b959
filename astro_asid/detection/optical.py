"""``asid-optical``: U-Net + Laplacian-of-Gaussian peaks for optical CCD images (ASID-L).

The network sees the image as signal-to-noise, ``(data - background) /
noise`` (background and noise from `~astro_asid.instruments.optical`, or the
`~astro_asid.SkyImage`'s own maps), compressed with ``asinh(snr / 2)`` so that
a 5-sigma star and a saturated one both fit, plus a plane that flags masked
pixels. It was trained on `~astro_asid.simulate.optical.OpticalSkySimulator`
fields (sparse to globular-cluster crowding, Moffat PSFs of FWHM 1.8-5 px,
Sersic galaxies, cosmic rays and satellite trails, which are *not* sources),
to mark disks of 1.5 px around every source with matched-filter S/N >= 3.

Large images are cut into ``tile_size`` tiles (256 px) overlapping by
``overlap`` pixels; each batch of tiles is run, decoded, and only the
candidates inside the part of a tile where it is most central are kept, so
memory is bounded by the tile batch, not the image, and every pixel is
decoded exactly once.
"""

import numpy as np

from astro_asid.detection.decoders import Candidates
from astro_asid.detection.deep import ASIDUNetDetector

__all__ = ["ASIDOpticalDetector", "optical_input", "SNR_SCALE"]

#: ``asinh(snr / SNR_SCALE)`` compresses the signal-to-noise image.
SNR_SCALE = 2.0


def optical_input(snr, bad=None):
    """Network input ``(2, ny, nx)``: ``asinh(snr / 2)`` (0 where ``bad``) and the ``bad`` flag."""
    snr = np.asarray(snr, np.float32)
    x = np.arcsinh(snr / np.float32(SNR_SCALE)).astype(np.float32)
    flag = np.zeros_like(x) if bad is None else np.asarray(bad, np.float32)
    if bad is not None:
        x[np.asarray(bad, bool)] = 0.0
    return np.stack([x, flag], axis=-3)


def _snr(data, back, noise, bad):
    """``(data - back) / noise``, 0 on bad or non-finite pixels."""
    snr = (data - back) / noise
    snr[bad | ~np.isfinite(snr)] = 0.0
    return snr


class ASIDOpticalDetector(ASIDUNetDetector):
    """U-Net + LoG source finder for optical images (``asid-optical``).

    Parameters
    ----------
    weights : str or path, optional
        Default: the shipped ``asid-optical`` model.
    min_score : float
        Candidates with a lower calibrated score are dropped.
    log_sigma : float
        LoG scale (px) of the peak finder on the source-probability map.
    peak_threshold : float
        Minimum LoG response before calibration.
    box_size : int
        Background box when the image carries no background/noise maps.
    tile_size, overlap, batch_size : int
        Tiling of large images (pixels) and tiles per forward pass.
    block_tiles : int
        Large images are processed in blocks of ``block_tiles`` x
        ``block_tiles`` tiles (background, S/N, network, decoding), which
        bounds the memory (see `detect`).
    remove_trails : bool
        Find straight satellite/aircraft trails in each block's S/N image and
        fold them into the background before detection
        (`~astro_asid.instruments.optical_trails`), so that trails are not
        reported and stars on them still are.
    trail_min_snr : float or None
        With ``remove_trails``, a candidate on a trail's band (within 3 sigma
        of its centre line) is kept only if the S/N summed over the 3x3 pixels
        around it (``sum / 3``, in noise units) reaches this value: a trail's
        residual is not pure noise, so its ordinary noise peaks would otherwise
        be reported along the trail. None keeps them all.
    device, tta, score, refine
        As for `~astro_asid.detection.ASIDUNetDetector`.
    """

    name = "asid-optical"
    description = "U-Net + LoG peaks for optical CCD images (ASID-L)"
    instruments = ("optical",)
    needs_counts = False

    def __init__(self, weights=None, min_score=0.1, log_sigma=1.5 / np.sqrt(2.0),
                 peak_threshold=0.02, score="log", refine="offset", box_size=64, device=None,
                 tile_size=256, overlap=32, batch_size=8, tta=1, block_tiles=8,
                 remove_trails=True, trail_min_snr=5.0):
        super().__init__(weights=weights, min_score=min_score, log_sigma=log_sigma,
                         peak_threshold=peak_threshold, score=score, refine=refine,
                         device=device, tile_size=tile_size, overlap=overlap,
                         batch_size=batch_size, tta=tta)
        self.box_size = int(box_size)
        if int(block_tiles) < 1:
            raise ValueError(f"block_tiles must be >= 1, got {block_tiles}")
        self.block_tiles = int(block_tiles)
        self.remove_trails = bool(remove_trails)
        self.trail_min_snr = None if trail_min_snr is None else float(trail_min_snr)

    def _decode_batch(self, x):
        maps = self._forward(x)
        return [self.decode({k: v[i] if k != "seg" else v[i, 0] for k, v in maps.items()})
                for i in range(len(x))]

    def _run_tiles(self, snr, bad, grid, jobs, origin=(0, 0)):
        """Raw candidates (image coordinates) of the tiles ``jobs`` of the image's tile
        ``grid``; ``snr``/``bad`` cover the image from ``origin`` (y, x) on."""
        ys, yb, xs, xb = grid
        oy, ox = origin
        th = min(self.tile_size, yb[-1])
        tw = min(self.tile_size, xb[-1])
        found = []
        for j0 in range(0, len(jobs), self.batch_size):
            part = jobs[j0:j0 + self.batch_size]
            cuts = [(slice(ys[iy] - oy, ys[iy] - oy + th), slice(xs[ix] - ox, xs[ix] - ox + tw))
                    for iy, ix in part]
            x = np.stack([optical_input(snr[c], bad[c]) for c in cuts])
            for (iy, ix), cand in zip(part, self._decode_batch(x)):
                gx, gy = cand.x + xs[ix], cand.y + ys[iy]
                # keep what lies where this tile is the most central one
                core = ((gy >= yb[iy] - 0.5) & (gy < yb[iy + 1] - 0.5)
                        & (gx >= xb[ix] - 0.5) & (gx < xb[ix + 1] - 0.5))
                found.append(Candidates(gx[core], gy[core], cand.raw_score[core]))
        return found

    @staticmethod
    def _merge(found):
        if not found:
            return Candidates.empty()
        return Candidates(np.concatenate([c.x for c in found]),
                          np.concatenate([c.y for c in found]),
                          np.concatenate([c.raw_score for c in found]))

    def _grid(self, shape):
        ys, yb = self._tiles(shape[0])
        xs, xb = self._tiles(shape[1])
        return ys, yb, xs, xb

    def detect_snr(self, snr, bad=None, trails=None):
        """Candidates (pixel positions, calibrated scores) from a S/N image ``(ny, nx)``;
        ``trails`` (from ``snr_maps(..., return_trails=True)``) applies ``trail_min_snr``."""
        snr = np.asarray(snr, np.float32)
        bad = np.zeros(snr.shape, bool) if bad is None else np.asarray(bad, bool)
        grid = self._grid(snr.shape)
        jobs = [(iy, ix) for iy in range(len(grid[0])) for ix in range(len(grid[2]))]
        cand = self._veto_on_trails(self._merge(self._run_tiles(snr, bad, grid, jobs)), snr,
                                    trails)
        return self._table(cand, snr.shape, bad)

    def _veto_on_trails(self, cand, snr, trails, origin=(0, 0)):
        """``cand`` (image coordinates) without those on a trail band of ``snr`` (which
        starts at ``origin`` (y, x) of the image) whose 3x3 S/N is below
        ``trail_min_snr``."""
        if self.trail_min_snr is None or trails is None or not len(trails) or not len(cand):
            return cand
        from scipy.ndimage import uniform_filter

        from astro_asid.instruments.optical_trails import trail_model

        _, band = trail_model(snr.shape, trails)
        ny, nx = snr.shape
        iy = np.clip(np.rint(cand.y - origin[0]).astype(int), 0, ny - 1)
        ix = np.clip(np.rint(cand.x - origin[1]).astype(int), 0, nx - 1)
        on = band[iy, ix]
        if not on.any():
            return cand
        # the 3x3 sum over sqrt(9): a PSF-sized matched filter in noise units
        box = uniform_filter(np.asarray(snr, np.float64), 3, mode="constant") * 3.0
        return cand.select(~on | (box[iy, ix] >= self.trail_min_snr))

    def blocks(self, shape):
        """The image's blocks: ``(jobs, (y0, y1, x0, x1))`` per block of ``block_tiles``
        x ``block_tiles`` network tiles, the pixel range those tiles cover."""
        ys, _, xs, _ = grid = self._grid(shape)
        th, tw = min(self.tile_size, shape[0]), min(self.tile_size, shape[1])
        k = self.block_tiles
        out = []
        for by in range(0, len(ys), k):
            for bx in range(0, len(xs), k):
                iys = range(by, min(by + k, len(ys)))
                ixs = range(bx, min(bx + k, len(xs)))
                jobs = [(iy, ix) for iy in iys for ix in ixs]
                out.append((jobs, (ys[iys[0]], ys[iys[-1]] + th, xs[ixs[0]], xs[ixs[-1]] + tw)))
        return grid, out

    def block_snr(self, image, outer):
        """S/N, bad-pixel map of the region ``outer = (y0, y1, x0, x1)`` of ``image``.

        From the image's own background/noise maps when it has them, else from
        `~astro_asid.instruments.optical.estimate_background` on the region
        (callers add ``box_size`` pixels around the block); with
        ``remove_trails``, trails found in the region are added to the
        background and their shot noise to the noise. Returns
        ``(snr, bad, background, noise, trails)``: float32 maps of the region
        and the trails' table (`snr_maps` with ``return_trails=True``); None
        when every pixel is bad.
        """
        a0, a1, b0, b1 = outer
        sl = (slice(a0, a1), slice(b0, b1))
        data = np.asarray(image.data[0][sl], np.float32)
        bad = image.mask2d[sl] | ~np.isfinite(data)
        if bad.all():
            return None
        own = image.background is not None and image.noise is not None
        return self.snr_maps(data, bad,
                             background=image.background[0][sl] if own else None,
                             noise=image.noise[0][sl] if own else None, return_trails=True)

    def snr_maps(self, data, bad=None, background=None, noise=None, return_trails=False):
        """The S/N image the network sees, from a 2-D image.

        Background and noise are ``background``/``noise`` when given, else
        `~astro_asid.instruments.optical.estimate_background` (``box_size``);
        with ``remove_trails``, trails are then folded into them. The
        characteriser's training set (`~astro_asid.characterize.optical_data`)
        uses this too, so it sees the candidates' S/N exactly as at run time.

        Parameters
        ----------
        data : `~numpy.ndarray`
            ``(ny, nx)`` image.
        bad : `~numpy.ndarray` of bool, optional
            True marks pixels to ignore (non-finite pixels are always bad).
        background, noise : `~numpy.ndarray`, optional
            The image's own maps (both or neither).
        return_trails : bool
            Also return the trails found (for `detect_snr`).

        Returns
        -------
        snr, bad, background, noise : `~numpy.ndarray`
            float32 maps (``bad`` bool); ``snr`` is 0 on bad pixels.
        trails : `~astropy.table.Table`
            Only with ``return_trails``: the trails folded into the background
            (`~astro_asid.instruments.optical_trails.find_trails`; no rows
            without ``remove_trails``).
        """
        from astro_asid.instruments.optical import estimate_background

        data = np.asarray(data, np.float32)
        if data.ndim != 2:
            raise ValueError(f"data must be a 2-D image, got shape {data.shape}")
        bad = np.zeros(data.shape, bool) if bad is None else np.asarray(bad, bool)
        bad = bad | ~np.isfinite(data)
        if (background is None) != (noise is None):
            raise ValueError("give both background and noise maps, or neither")
        own = background is not None
        if own:
            back = np.asarray(background, np.float32)
            noise = np.asarray(noise, np.float32)
        else:
            back, noise = estimate_background(data, bad, box_size=self.box_size)
        snr = _snr(data, back, noise, bad)
        trails = None
        if self.remove_trails:
            snr, back, noise, trails = self._remove_trails(data, bad, snr, back, noise,
                                                           own_maps=own)
        out = (snr.astype(np.float32, copy=False), bad, back, noise)
        if return_trails:
            if trails is None:  # trails not searched: an empty table of the same columns
                from astro_asid.instruments.optical_trails import find_trails
                trails = find_trails(snr, bad, max_trails=0)
            out += (trails,)
        return out

    def _remove_trails(self, data, bad, snr, back, noise, own_maps):
        """S/N, background and noise with the trails found in ``snr`` folded into the
        background (`~astro_asid.instruments.optical_trails`), and the trails' table."""
        from astro_asid.instruments.optical import estimate_background
        from astro_asid.instruments.optical_trails import find_trails, remove_trails, trail_model

        trails = find_trails(snr, bad)
        if not len(trails):
            return snr, back, noise, trails
        if not own_maps:
            # a trail raises the box background along it in patches: estimate it again
            # without the trails' bands, then refit the trails on the new S/N
            _, band = trail_model(snr.shape, trails)
            back, noise = estimate_background(data, bad | band, box_size=self.box_size)
            snr = _snr(data, back, noise, bad)
        model, scale, _ = remove_trails(snr, bad, trails=trails)
        # the trails become background; their band's noise includes their shot noise
        back = (back + model * noise).astype(np.float32)
        noise = (noise * scale).astype(np.float32)
        return _snr(data, back, noise, bad), back, noise, trails

    def block_margin(self, image):
        """Pixels added around a block for its background (none when the image has maps)."""
        return 0 if image.background is not None and image.noise is not None else self.box_size

    def detect_block(self, image, grid, jobs, bounds, maps=None):
        """Raw candidates (image coordinates) of one block of `blocks`.

        ``maps`` is `block_snr`'s output for the block's ``outer`` region
        with its origin, ``(maps, (y0, x0))``; computed when not given.
        """
        if maps is None:
            outer = self.outer_bounds(image, bounds)
            maps = (self.block_snr(image, outer), outer[::2])
        (got, origin) = maps
        if got is None:
            return Candidates.empty()
        snr, bad, _, _, trails = got
        cand = self._merge(self._run_tiles(snr, bad, grid, jobs, origin=origin))
        return self._veto_on_trails(cand, snr, trails, origin)

    def outer_bounds(self, image, bounds):
        """A block's ``bounds`` plus `block_margin`, clipped to the image."""
        ny, nx = image.shape
        m = self.block_margin(image)
        y0, y1, x0, x1 = bounds
        return max(y0 - m, 0), min(y1 + m, ny), max(x0 - m, 0), min(x1 + m, nx)

    def detect(self, image):
        """Detect sources in an optical `~astro_asid.SkyImage`.

        The image is processed in blocks of ``block_tiles`` x ``block_tiles``
        network tiles (`blocks`): each block's S/N image comes from the image's
        own background/noise maps when it has them, else from
        `~astro_asid.instruments.optical.estimate_background` on the block plus
        ``box_size`` pixels around it, so memory is bounded by the block, not
        the image, and a block is an independent unit of work.
        """
        if image.n_bands != 1:
            raise ValueError(f"{self.name} works on 2-D optical images; the image has "
                             f"{image.n_bands} bands (pass one filter)")
        grid, blocks = self.blocks(image.shape)
        found = [self.detect_block(image, grid, jobs, bounds) for jobs, bounds in blocks]
        return self.finish(self._merge(found), image)

    def finish(self, cand, image):
        """Calibrated, masked, sorted table of raw candidates (image coordinates)."""
        return self._table(cand, image.shape, image.mask2d)

    def detect_arrays(self, images, masks=None):
        """Detect sources in a stack of 2-D images ``(n, ny, nx)`` (background estimated
        per image); returns one table per image."""
        from astro_asid.core import SkyImage

        images = np.asarray(images, np.float32)
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        out = []
        for i, img in enumerate(images):
            m = None if masks is None else np.asarray(masks[i], bool).reshape(img.shape)
            out.append(self.detect(SkyImage(img[np.newaxis], mask=None if m is None
                                            else m[np.newaxis] | ~np.isfinite(img)[None])))
        return out

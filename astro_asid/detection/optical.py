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
    device, tta, score, refine
        As for `~astro_asid.detection.ASIDUNetDetector`.
    """

    name = "asid-optical"
    description = "U-Net + LoG peaks for optical CCD images (ASID-L)"
    instruments = ("optical",)
    needs_counts = False

    def __init__(self, weights=None, min_score=0.1, log_sigma=1.5 / np.sqrt(2.0),
                 peak_threshold=0.02, score="log", refine="offset", box_size=64, device="cpu",
                 tile_size=256, overlap=32, batch_size=8, tta=1):
        super().__init__(weights=weights, min_score=min_score, log_sigma=log_sigma,
                         peak_threshold=peak_threshold, score=score, refine=refine,
                         device=device, tile_size=tile_size, overlap=overlap,
                         batch_size=batch_size, tta=tta)
        self.box_size = int(box_size)

    def _decode_batch(self, x):
        maps = self._forward(x)
        return [self.decode({k: v[i] if k != "seg" else v[i, 0] for k, v in maps.items()})
                for i in range(len(x))]

    def detect_snr(self, snr, bad=None):
        """Candidates (pixel positions, calibrated scores) from a S/N image ``(ny, nx)``."""
        snr = np.asarray(snr, np.float32)
        ny, nx = snr.shape
        bad = np.zeros(snr.shape, bool) if bad is None else np.asarray(bad, bool)
        t = self.tile_size
        ys, yb = self._tiles(ny)
        xs, xb = self._tiles(nx)
        th, tw = min(t, ny), min(t, nx)
        found = []
        jobs = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        for j0 in range(0, len(jobs), self.batch_size):
            part = jobs[j0:j0 + self.batch_size]
            x = np.stack([optical_input(snr[ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw],
                                        bad[ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw])
                          for iy, ix in part])
            for (iy, ix), cand in zip(part, self._decode_batch(x)):
                gx, gy = cand.x + xs[ix], cand.y + ys[iy]
                # keep what lies where this tile is the most central one
                core = ((gy >= yb[iy] - 0.5) & (gy < yb[iy + 1] - 0.5)
                        & (gx >= xb[ix] - 0.5) & (gx < xb[ix + 1] - 0.5))
                found.append(Candidates(gx[core], gy[core], cand.raw_score[core]))
        cand = Candidates(np.concatenate([c.x for c in found]),
                          np.concatenate([c.y for c in found]),
                          np.concatenate([c.raw_score for c in found]))
        return self._table(cand, (ny, nx), bad)

    def detect(self, image):
        from astro_asid.instruments.optical import snr_image

        if image.n_bands != 1:
            raise ValueError(f"{self.name} works on 2-D optical images; the image has "
                             f"{image.n_bands} bands (pass one filter)")
        return self.detect_snr(snr_image(image, box_size=self.box_size), image.mask2d)

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

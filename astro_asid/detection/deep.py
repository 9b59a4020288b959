"""The deep-learning detectors: one U-Net backbone family, four decoders.

=============== ================================================================
name            method
=============== ================================================================
``asid-unet``   U-Net segmentation + Laplacian-of-Gaussian peaks (ASID-L)
``unek``        U-Net segmentation + penalised k-means (Panes et al. 2021, app. B)
``centroidnet`` U-Net offset vectors to the nearest centre + voting (Centroid-Net)
``cedirnet``    U-Net direction (cos, sin) to the nearest centre + convergence
                kernels (CeDiRNet)
=============== ================================================================

Each detector loads its weights lazily, on first use, from
``astro_asid/models/<name>.safetensors`` and its JSON model card (or from
``weights=``), checks the sha256 and caches the network for all instances.
The score is calibrated on held-out simulations (`ScoreCalibration`): it
estimates the probability that a candidate is a real source, and a threshold
on it gives a clean precision/recall trade-off.

Input handling
--------------
- Counts cubes with the model's bands (five Fermi-LAT bands 0.5-1, 1-2, 2-7,
  7-20, 20-200 GeV for the shipped models) are used as they are; if the
  image's ``energy_edges`` differ from the model's an `ASIDInputWarning` is
  emitted.
- A 2-D image (one band) is treated as summed counts over the model's energy
  range and goes through the model's summed-band input channel (the shipped
  models are trained with 15% of such examples); expect a lower recall.
- Any other number of bands is a `ValueError` (sum the bands into a 2-D image).
- Images of 64x64 pixels or smaller go through the fully convolutional network
  in one pass (padded to a multiple of ``2**depth``); larger ones are cut into
  overlapping ``tile_size`` tiles, normalised and predicted tile by tile, and
  each output pixel is taken from the tile in which it is most central, so
  the decoders see one seamless map.
- The network was trained at the pixel scale of its card (10/64 deg for the
  shipped models); another scale gives an `ASIDInputWarning`.
"""

import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from astropy.table import QTable, vstack

from astro_asid.core import pixel_scale_deg, pixel_scale_mismatch
from astro_asid.detection.base import Detector
from astro_asid.detection.decoders import (ScoreCalibration, centroid_votes,
                                           direction_convergence, kmeans_penalised, log_peaks,
                                           refine_positions)
from astro_asid.detection.multiscale import bin_counts, check_scales, merge_scales
from astro_asid.nn.io import load_weights, shipped_model_path, weights_path
from astro_asid.nn.normalize import model_input
from astro_asid.nn.unet import build_unet, inference_copy
from astro_asid.utils.exceptions import ASIDInputWarning, WeightsError

__all__ = ["DeepDetector", "resolve_device", "ASIDUNetDetector", "UNEKDetector",
           "CentroidNetDetector", "CeDiRNetDetector", "ASIDCTAODetector", "DEEP_DETECTORS",
           "OTHER_DEEP_DETECTORS", "load_model", "clear_model_cache"]

_CACHE = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache():
    """Forget every cached network (they are reloaded on next use)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def resolve_device(device=None, check=False):
    """The torch device name for a detector's ``device`` option.

    Parameters
    ----------
    device : str or None
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; None reads
        ``astro_asid.conf.device``.
    check : bool
        Raise when CUDA is asked for and torch cannot use it.

    Returns
    -------
    str
        ``"cpu"`` or a CUDA device name; ``"auto"`` is CUDA when
        ``torch.cuda.is_available()``.

    Raises
    ------
    ValueError
        An unknown device name.
    RuntimeError
        ``check`` and CUDA requested but not available.
    """
    from astro_asid.config import conf

    name = conf.device if device is None else device
    if not isinstance(name, str) or not (name in ("cpu", "cuda", "auto")
                                         or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not {name!r}"
                         + (" (from astro_asid.conf.device)" if device is None else ""))
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if check and name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but torch cannot use CUDA on this machine "
                           f"(torch {torch.__version__}); use device='cpu' or 'auto'")
    return name


def load_model(path, device="cpu"):
    """Load (and cache) a U-Net and its card from ``path`` (``.safetensors`` or stem).

    Raises
    ------
    WeightsError
        Missing or corrupt files, a card without a U-Net config, or tensors
        that do not fit the architecture the card describes.
    """
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    try:
        wfile = weights_path(path)
        cfile = path.with_suffix(".json")
        st, sc = wfile.stat(), cfile.stat()
        key = (str(cfile.resolve()), sc.st_mtime_ns, str(wfile.resolve()), st.st_mtime_ns,
               st.st_size, str(device))
    except (OSError, WeightsError):
        wfile, key = path.with_suffix(".safetensors"), None
    with _CACHE_LOCK:
        if key is not None and key in _CACHE:
            return _CACHE[key]
    tensors, card = load_weights(path)
    config = card.get("config")
    if card.get("architecture", "unet") != "unet" or not isinstance(config, dict):
        raise WeightsError(f"model card {path.with_suffix('.json')} does not describe a U-Net "
                           "(needs 'architecture': 'unet' and a 'config' dict)")
    try:
        model = build_unet(config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in tensors.items()}, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(f"weights {wfile} do not fit the U-Net of their card: {exc}") from None
    model.eval().to(device)
    with _CACHE_LOCK:
        if key is not None:
            _CACHE[key] = (model, card)
    return model, card


def _inference_model(model):
    """The BN-folded, channels-last copy of a cached network (`inference_copy`), made once."""
    with _CACHE_LOCK:
        fast = _CACHE.get(("inference", id(model)))
        if fast is None or fast[0] is not model:
            fast = (model, inference_copy(model))
            _CACHE[("inference", id(model))] = fast
    return fast[1]


def _as_stack(cubes, masks):
    """``(n, n_bands, ny, nx)`` float32 cubes (a ``(n, ny, nx)`` stack gets one band) and
    masks broadcast to them (or None)."""
    cubes = np.asarray(cubes, dtype=np.float32)
    if cubes.ndim == 3:
        cubes = cubes[:, np.newaxis]
    if masks is not None:
        masks = np.broadcast_to(np.asarray(masks, bool), cubes.shape)
    return cubes, masks


class DeepDetector(Detector):
    """Base class of the U-Net detectors (not registered itself).

    Parameters
    ----------
    weights : str or path, optional
        Weights file (``.safetensors`` with its ``.json`` card next to it);
        default: the model shipped with astro_asid for this detector.
    min_score : float
        Candidates with a lower calibrated score are dropped.
    device : str, optional
        ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` (CUDA when
        available); default ``astro_asid.conf.device`` (``"auto"``).
    tile_size, overlap : int
        Tiling of images larger than ``tile_size`` (pixels).
    batch_size : int
        Patches per forward pass.
    tta : {1, 2, 4}
        Test-time augmentation: average the network over this many mirror
        images (1 = none; costs ``tta`` times the network time).
    """

    instruments = ("fermi-lat",)
    needs_counts = True
    model_name = None

    def __init__(self, weights=None, min_score=0.1, device=None, tile_size=64, overlap=16,
                 batch_size=64, tta=1):
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be within 0..1, got {min_score}")
        if int(tile_size) < 8 or not 0 <= int(overlap) < int(tile_size) // 2:
            raise ValueError(f"need tile_size >= 8 and 0 <= overlap < tile_size/2, got "
                             f"{tile_size}, {overlap}")
        self.weights = weights
        self.min_score = float(min_score)
        resolve_device(device)  # fail early on unknown names
        self.device = device
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.batch_size = int(batch_size)
        if tta not in (1, 2, 4):
            raise ValueError(f"tta must be 1, 2 or 4, got {tta!r}")
        self.tta = int(tta)

    # -- model ---------------------------------------------------------------
    def _weights_path(self):
        if self.weights is not None:
            return Path(self.weights)
        return shipped_model_path(self.model_name or self.name)

    def _model(self):
        return load_model(self._weights_path(), resolve_device(self.device, check=True))

    @property
    def card(self):
        """The model card (loads the weights on first use)."""
        return self._model()[1]

    @property
    def halo_pixels(self):
        """How far (pixels) from a detection the input can change it: ``tile_size``.

        A detection is read from the network output of the tile where it is
        most central (at least ``overlap / 2`` from that tile's edge), and a
        tile's input is normalised as a whole, so any pixel of that tile
        counts; the decoders read a few pixels around the peak, within that
        margin. `astro_asid.scale.patches` gives each patch this much context.
        """
        return self.tile_size

    def _calibration(self):
        cal = self.card.get("score_calibration", {}).get(self.name)
        return ScoreCalibration.from_dict(cal) if cal else None

    # -- network pass ----------------------------------------------------------
    def _forward(self, x):
        """Run the network on ``(n, c, ny, nx)`` inputs (numpy); returns numpy maps."""
        model = _inference_model(self._model()[0])
        dev = next(model.parameters()).device
        m = model.multiple
        ny, nx = x.shape[-2:]
        py, px = (-ny) % m, (-nx) % m
        if py or px:
            x = np.pad(x, ((0, 0), (0, 0), (0, py), (0, px)))
        # test-time augmentation: average over mirror images (vectors mirrored back)
        flips = [(), (3,), (2,), (2, 3)][:self.tta]
        out = {}
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size])).to(dev)
                xb = xb.contiguous(memory_format=torch.channels_last)
                acc = {}
                for dims in flips:
                    res = model(torch.flip(xb, dims) if dims else xb)
                    for k, v in res.items():
                        if k == "seg":
                            v = torch.sigmoid(v)
                        if dims:
                            v = torch.flip(v, dims)
                            if k in ("offset", "direction") and v.shape[1] == 2:
                                sign = torch.tensor([-1.0 if 3 in dims else 1.0,
                                                     -1.0 if 2 in dims else 1.0], device=v.device)
                                v = v * sign.view(1, 2, 1, 1)
                        acc[k] = acc[k] + v if k in acc else v
                for k, v in acc.items():
                    v = v / len(flips)
                    out.setdefault(k, []).append(v[..., :ny, :nx].float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    def _tiles(self, n):
        t, s = self.tile_size, self.tile_size - self.overlap
        starts = list(range(0, max(n - t, 0) + 1, s))
        if starts[-1] + t < n:
            starts.append(n - t)
        # each pixel is taken from the tile where it is most central
        bounds = [0] + [(starts[i] + t + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [n]
        return starts, bounds

    def predict_maps(self, cubes, masks=None):
        """Network output maps for a stack of images.

        Parameters
        ----------
        cubes : `~numpy.ndarray`
            ``(n, n_bands, ny, nx)`` counts (or ``(n, 1, ny, nx)`` summed counts).
        masks : `~numpy.ndarray` of bool, optional
            Same shape; True marks pixels to ignore.

        Returns
        -------
        dict
            ``seg`` ``(n, ny, nx)`` probabilities, and ``offset``,
            ``direction`` ``(n, 2, ny, nx)`` when the model has those heads.
            Pixels masked in every band have probability 0.
        """
        cubes = np.asarray(cubes, dtype=np.float32)
        if cubes.ndim != 4:
            raise ValueError(f"expected (n, n_bands, ny, nx) cubes, got shape {cubes.shape}")
        n_bands = int(self.card.get("n_bands", 5))
        n, _, ny, nx = cubes.shape
        if masks is None:
            masks = ~np.isfinite(cubes)
        t = self.tile_size
        if ny <= t and nx <= t:
            x = np.stack([model_input(c, n_bands, m) for c, m in zip(cubes, masks)])
            maps = self._forward(x)
        else:
            ys, yb = self._tiles(ny)
            xs, xb = self._tiles(nx)
            tiles = []
            for c, m in zip(cubes, masks):
                for y0 in ys:
                    for x0 in xs:
                        sl = (slice(None), slice(y0, y0 + t), slice(x0, x0 + t))
                        tiles.append(model_input(c[sl], n_bands, m[sl]))
            raw = self._forward(np.stack(tiles))
            maps = {}
            for k, v in raw.items():
                full = np.zeros((n, v.shape[1], ny, nx), np.float32)
                i = 0
                for j in range(n):
                    for iy, y0 in enumerate(ys):
                        for ix, x0 in enumerate(xs):
                            a, b = yb[iy], yb[iy + 1]
                            c0, c1 = xb[ix], xb[ix + 1]
                            full[j, :, a:b, c0:c1] = v[i, :, a - y0:b - y0, c0 - x0:c1 - x0]
                            i += 1
                maps[k] = full
        maps["seg"] = maps["seg"][:, 0] * ~np.all(masks, axis=1)
        return maps

    # -- decoding --------------------------------------------------------------
    def decode(self, maps):
        """Candidates of one image from its maps (``seg`` (ny, nx), ...)."""
        raise NotImplementedError

    def _table(self, cand, shape, mask2d, calibration=None):
        ny, nx = shape
        inside = ((cand.x >= -0.5) & (cand.x < nx - 0.5)
                  & (cand.y >= -0.5) & (cand.y < ny - 0.5))
        cand = cand.select(inside)
        if mask2d is not None and len(cand):
            ok = ~mask2d[np.clip(np.rint(cand.y).astype(int), 0, ny - 1),
                         np.clip(np.rint(cand.x).astype(int), 0, nx - 1)]
            cand = cand.select(ok)
        cal = calibration or self._calibration()
        if cal is not None:
            score = cal(cand.raw_score)
        else:
            # no calibration in the card: a monotone squashing, documented as uncalibrated
            score = 1.0 - np.exp(-np.clip(cand.raw_score, 0, None))
        keep = score >= self.min_score
        cand, score = cand.select(keep), score[keep]
        order = np.argsort(-score, kind="stable")
        tab = QTable()
        tab["x_centroid"] = cand.x[order]
        tab["y_centroid"] = cand.y[order]
        tab["score"] = score[order]
        tab["raw_score"] = cand.raw_score[order]
        sig = self.card.get("position_sigma_px", {}).get(self.name)
        if sig is not None:
            tab["x_err"] = np.full(len(tab), float(sig))
            tab["y_err"] = np.full(len(tab), float(sig))
        tab.meta["model"] = {"name": self.card.get("name"), "sha256": self.card.get("sha256"),
                             "calibrated": cal is not None}
        return tab

    def detect_arrays(self, cubes, masks=None):
        """Detect sources in a stack of same-shape counts cubes (fast batch path).

        Parameters
        ----------
        cubes : `~numpy.ndarray`
            ``(n, n_bands, ny, nx)``, or ``(n, ny, nx)`` summed counts.

        Returns
        -------
        list of `~astropy.table.QTable`
            One table per image, as `detect` returns.
        """
        return self._detect_stack(*_as_stack(cubes, masks))

    def _detect_stack(self, cubes, masks, calibration=None):
        """`detect_arrays` on checked ``(n, n_bands, ny, nx)`` cubes, with an optional
        score calibration in place of the card's."""
        maps = self.predict_maps(cubes, masks)
        out = []
        for i in range(len(cubes)):
            one = {k: v[i] for k, v in maps.items()}
            m2 = None if masks is None else np.all(masks[i], axis=0)
            out.append(self._table(self.decode(one), cubes.shape[2:], m2, calibration))
        return out

    def detect(self, image):
        image.check_counts(self.name)
        card = self.card
        n_bands = int(card.get("n_bands", 5))
        if image.n_bands not in (n_bands, 1):
            raise ValueError(
                f"{self.name}: the model was trained on {n_bands} energy bands but the image has "
                f"{image.n_bands}; pass the {n_bands} bands {card.get('energy_edges_gev')} GeV, "
                "or a 2-D image of summed counts")
        edges = card.get("energy_edges_gev")
        if image.n_bands == n_bands and image.energy_edges is not None and edges is not None:
            have = image.energy_edges.to_value("GeV")
            if not np.allclose(have, edges, rtol=0.02):
                warnings.warn(f"{self.name}: the image's energy edges {np.round(have, 3).tolist()} "
                              f"GeV differ from the model's {edges} GeV; results may be biased",
                              ASIDInputWarning)
        scale = card.get("pixel_scale_deg")
        have = pixel_scale_mismatch(image.wcs, scale)
        if have is not None:
            warnings.warn(f"{self.name}: pixel scale {have:.4g} deg differs from the model's "
                          f"{scale:.4g} deg; the PSF in pixels is not what it was trained on",
                          ASIDInputWarning)
        data = image.filled(0.0)[np.newaxis]
        return self.detect_arrays(data, image.mask[np.newaxis])[0]


class ASIDUNetDetector(DeepDetector):
    """U-Net segmentation + Laplacian-of-Gaussian peak finding (ASID-L).

    Parameters
    ----------
    log_sigma : float
        LoG scale in pixels (R/sqrt(2) for the R = 2.5 px training disks).
    peak_threshold : float
        Minimum LoG response of a candidate (before calibration).
    score : {"log", "peak"}
        Raw score of a peak: its LoG response, or the largest source
        probability within 1 px (see `~astro_asid.detection.decoders.log_peaks`).
    refine : {"offset", "centroid", "none"}
        Sub-pixel refinement of the LoG peaks: average of the offset-head
        proposals of the pixels within 1.5 px (default, when the model has an
        offset head), probability-weighted centroid, or the parabolic LoG
        peak only.
    **kwargs
        `DeepDetector` options (``weights``, ``min_score``, ``device``, ...).
    """

    name = "asid-unet"
    description = "U-Net segmentation + Laplacian-of-Gaussian peaks (ASID-L)"

    def __init__(self, weights=None, min_score=0.1, log_sigma=2.5 / np.sqrt(2.0),
                 peak_threshold=0.02, score="log", refine="offset", device=None, tile_size=64,
                 overlap=16,
                 batch_size=64, tta=1):
        super().__init__(weights=weights, min_score=min_score, device=device,
                         tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                         tta=tta)
        if refine not in ("offset", "centroid", "none"):
            raise ValueError(f"refine must be 'offset', 'centroid' or 'none', not {refine!r}")
        if score not in ("log", "peak"):
            raise ValueError(f"score must be 'log' or 'peak', not {score!r}")
        self.log_sigma = float(log_sigma)
        self.peak_threshold = float(peak_threshold)
        self.score = score
        self.refine = refine

    def decode(self, maps):
        cand = log_peaks(maps["seg"], sigma=self.log_sigma, threshold=self.peak_threshold,
                         score=self.score)
        if self.refine == "none" or len(cand) == 0:
            return cand
        offset = maps.get("offset") if self.refine == "offset" else None
        return refine_positions(cand, maps["seg"], offset)


class UNEKDetector(DeepDetector):
    """U-Net segmentation + the penalised k-means of UNEK (Panes et al. 2021, appendix B).

    Parameters
    ----------
    label_threshold, penalty, radius, k_max : float, float, float, int
        ``l_sth`` = 0.2, ``l_sng`` = -10, ``R`` = 5 px and ``range(1, 50)`` of the paper.
    patience : int or None
        Stop the scan over k after this many k without improvement of
        ``S_k``. Default 5; None is the paper's full scan over k = 1..49,
        which gave identical catalogs on 64 simulated patches while taking
        ~4.5x longer (1.9 s instead of 0.42 s per patch on the shared CPU).
    **kwargs
        `DeepDetector` options.
    """

    name = "unek"
    description = "U-Net segmentation + penalised k-means clustering (UNEK)"

    def __init__(self, weights=None, min_score=0.1, label_threshold=0.2, penalty=-10.0,
                 radius=5.0, k_max=50, patience=5, device=None, tile_size=64, overlap=16,
                 batch_size=64, tta=1):
        super().__init__(weights=weights, min_score=min_score, device=device,
                         tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                         tta=tta)
        self.label_threshold = float(label_threshold)
        self.penalty = float(penalty)
        self.radius = float(radius)
        self.k_max = int(k_max)
        self.patience = None if patience is None else int(patience)

    def decode(self, maps):
        return kmeans_penalised(maps["seg"], label_threshold=self.label_threshold,
                                penalty=self.penalty, radius=self.radius, k_max=self.k_max,
                                patience=self.patience)


class CentroidNetDetector(DeepDetector):
    """U-Net offset vectors to the nearest centre + voting (Centroid-Net).

    Parameters
    ----------
    seg_threshold : float
        Pixels with a lower source probability do not vote.
    min_votes : float
        Minimum probability-weighted votes of a centre.
    **kwargs
        `DeepDetector` options.
    """

    name = "centroidnet"
    description = "U-Net offset vectors + majority voting (Centroid-Net)"

    def __init__(self, weights=None, min_score=0.1, seg_threshold=0.1, min_votes=0.5,
                 device=None, tile_size=64, overlap=16, batch_size=64,
                 tta=1):
        super().__init__(weights=weights, min_score=min_score, device=device,
                         tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                         tta=tta)
        self.seg_threshold = float(seg_threshold)
        self.min_votes = float(min_votes)

    def decode(self, maps):
        if "offset" not in maps:
            raise WeightsError(f"{self.name} needs a model with an 'offset' head")
        return centroid_votes(maps["seg"], maps["offset"], seg_threshold=self.seg_threshold,
                              min_votes=self.min_votes)


class CeDiRNetDetector(DeepDetector):
    """U-Net direction (cos, sin) to the nearest centre + convergence kernels (CeDiRNet).

    Parameters
    ----------
    radius : float
        Radius (px) of the hand-made convergence kernels.
    threshold : float
        Minimum convergence of a candidate.
    **kwargs
        `DeepDetector` options.
    """

    name = "cedirnet"
    description = "U-Net centre-direction regression + convergence localisation (CeDiRNet)"

    def __init__(self, weights=None, min_score=0.1, radius=3.0, threshold=0.05, device=None,
                 tile_size=64, overlap=16, batch_size=64,
                 tta=1):
        super().__init__(weights=weights, min_score=min_score, device=device,
                         tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                         tta=tta)
        self.radius = float(radius)
        self.threshold = float(threshold)

    def decode(self, maps):
        if "direction" not in maps:
            raise WeightsError(f"{self.name} needs a model with a 'direction' head")
        return direction_convergence(maps["seg"], maps["direction"], radius=self.radius,
                                     threshold=self.threshold)


class ASIDCTAODetector(ASIDUNetDetector):
    """U-Net + LoG peaks for CTAO Galactic-plane-survey maps (0.02 deg pixels).

    The same decoder as `ASIDUNetDetector`, with a network trained on
    `astro_asid.simulate.ctao.CTAOSkySimulator` patches: three bands
    (0.07-0.788, 0.788-8.88, 8.88-100 TeV), point-like and extended
    (Gaussian, up to 0.5 deg) sources. Images larger than ``tile_size``
    (128 px) are tiled with overlap.

    Sources much wider than the PSF (sigma of 0.2-0.5 deg) spread their counts
    too thinly for the network at 0.02 deg, so the same network also runs on
    copies of the map binned ``f x f`` (`~astro_asid.detection.multiscale`):
    there they have the widths it was trained on. Each binned pass has its
    own score calibration (its precision on simulated survey patches, fitted by
    ``python -m astro_asid.training.ctao_scales``; the map's own detections keep
    the card's calibration, which the characteriser was fitted on), and the
    catalogues are merged: a detection is dropped when one of another binning with a higher
    score lies within ``merge_radius``. The output has a ``scale`` column, the
    binning that found each source.

    The widest, faintest sources (sigma 0.3-0.5 deg at a few 1e-13 cm-2 s-1)
    stay below the network's threshold at every binning, while a likelihood
    test over the whole source sees them when the background is known. So
    when the image carries a background model (``image.background``, e.g.
    from a gammapy `~gammapy.datasets.MapDataset`), `detect` also runs a
    Gaussian-kernel TS scan (`~astro_asid.detection.extended`, source sigma
    0.1-0.5 deg on binned maps) and adds its peaks that no network detection
    of score >= 0.5 explains. Their TS is calibrated into a score like the
    binned passes' (the fraction of such candidates that are real sources on
    simulated survey patches); those scoring below ``extended_min_score`` are
    dropped. The ``found_by`` column says ``"unet"`` or ``"ts-scan"``;
    ``kernel_sigma_deg`` is the test source's sigma (NaN for the network's).

    Parameters
    ----------
    scales : sequence of int, optional
        Binning factors, 1 (the map itself) included. Default: those the
        model card calibrates (``scale_calibration``), else ``(1,)``.
    merge_radius : float
        Radius (unbinned pixels) within which detections of different binnings
        are one source.
    binned_min_score : float
        Detections of the binned maps with a lower calibrated score are
        dropped (``min_score`` applies to the map's own).
    extended_search : bool, optional
        Run the TS scan for wide sources. Default (None): when the model card
        calibrates it and the image has a background. True without a
        calibration in the card is a `WeightsError`; True on an image without
        background warns and skips the scan.
    extended_min_score : float
        TS-scan candidates with a lower calibrated score are dropped.
    **kwargs
        `ASIDUNetDetector` options.
    """

    name = "asid-ctao"
    description = "U-Net + LoG peaks for CTAO survey maps (0.02 deg pixels, 3 bands, multi-scale)"
    instruments = ("ctao",)
    #: `detect_arrays` takes ``backgrounds=`` (for the TS scan)
    accepts_backgrounds = True

    def __init__(self, weights=None, min_score=0.1, log_sigma=2.5 / np.sqrt(2.0),
                 peak_threshold=0.02, score="log", refine="offset", device=None, tile_size=128,
                 overlap=32, batch_size=32, tta=1, scales=None, merge_radius=8.0,
                 binned_min_score=0.5, extended_search=None, extended_min_score=0.5):
        super().__init__(weights=weights, min_score=min_score, log_sigma=log_sigma,
                         peak_threshold=peak_threshold, score=score, refine=refine,
                         device=device, tile_size=tile_size, overlap=overlap,
                         batch_size=batch_size, tta=tta)
        self._scales = None if scales is None else check_scales(scales)
        if not float(merge_radius) > 0:
            raise ValueError(f"merge_radius must be > 0 pixels, got {merge_radius!r}")
        self.merge_radius = float(merge_radius)
        if not 0.0 <= float(binned_min_score) <= 1.0:
            raise ValueError(f"binned_min_score must be within 0..1, got {binned_min_score}")
        self.binned_min_score = float(binned_min_score)
        if extended_search not in (None, True, False):
            raise ValueError(f"extended_search must be None, True or False, "
                             f"got {extended_search!r}")
        self.extended_search = extended_search
        if not 0.0 <= float(extended_min_score) <= 1.0:
            raise ValueError(f"extended_min_score must be within 0..1, got {extended_min_score}")
        self.extended_min_score = float(extended_min_score)

    def _multiscale_card(self):
        return self.card.get("scale_calibration", {}).get(self.name) or {}

    @property
    def scales(self):
        """The binning factors used (see the class docstring)."""
        if self._scales is not None:
            return self._scales
        return check_scales(self._multiscale_card().get("scales", (1,)))

    @property
    def halo_pixels(self):
        """``tile_size`` times the largest binning (a binned tile covers that much)."""
        return self.tile_size * max(self.scales)

    def scale_calibrations(self, scales=None):
        """The `~astro_asid.detection.decoders.ScoreCalibration` of each binning.

        The map itself (binning 1) keeps the card's own calibration (None here).

        Raises
        ------
        WeightsError
            The card has no calibration for one of the binnings.
        """
        scales = self.scales if scales is None else check_scales(scales)
        cals = self._multiscale_card().get("calibration", {})
        missing = [s for s in scales[1:] if str(s) not in cals]
        if missing:
            raise WeightsError(
                f"{self.name}: the model card has no score calibration for binning(s) "
                f"{missing}; fit them with `python -m astro_asid.training.ctao_scales` or "
                "pass scales=(1,)")
        return {1: None, **{s: ScoreCalibration.from_dict(cals[str(s)]) for s in scales[1:]}}

    def detect_at_scale(self, cubes, masks, scale, calibration=None):
        """Detections of the map binned ``scale x scale``, in unbinned pixels.

        Parameters
        ----------
        cubes, masks
            As `detect_arrays` takes them.
        scale : int
            Binning factor (1: the map itself).
        calibration : `~astro_asid.detection.decoders.ScoreCalibration`, optional
            Score calibration of this binning (default: the card's own).

        Returns
        -------
        list of `~astropy.table.QTable`
            One per image, with a ``scale`` column; positions and their errors
            in unbinned pixels.
        """
        cubes, masks = _as_stack(cubes, masks)
        if scale != 1:
            cubes, masks = bin_counts(cubes, masks, scale)
        tabs = self._detect_stack(cubes, masks, calibration)
        for tab in tabs:
            # the centre of binned pixel i is unbinned pixel (i + 0.5) * scale - 0.5
            for c in ("x_centroid", "y_centroid"):
                tab[c] = (tab[c] + 0.5) * scale - 0.5
            for c in ("x_err", "y_err"):
                if c in tab.colnames:
                    tab[c] = tab[c] * scale
            tab["scale"] = np.full(len(tab), int(scale), dtype=np.int16)
        return tabs

    def detect_arrays(self, cubes, masks=None, backgrounds=None, psf_sigma_deg=None,
                      pixel_deg=None):
        """Detect sources in a stack of same-shape counts cubes (fast batch path).

        Parameters
        ----------
        cubes : `~numpy.ndarray`
            ``(n, 3, ny, nx)`` counts.
        masks : `~numpy.ndarray` of bool, optional
            True at pixels to ignore (broadcast to ``cubes``).
        backgrounds : `~numpy.ndarray`, optional
            Expected background counts (broadcast to ``cubes``): with them,
            the TS scan for wide sources runs (see the class docstring).
        psf_sigma_deg : array-like, optional
            PSF sigma per band for the TS scan (default: the card's, the
            simulated survey's).
        pixel_deg : float, optional
            Pixel size (default: the card's, 0.02 deg).

        Returns
        -------
        list of `~astropy.table.QTable`
            One table per image, as `detect` returns.
        """
        scales = self.scales
        cals = self.scale_calibrations(scales)
        per_scale = [self.detect_at_scale(cubes, masks, s, cals[s]) for s in scales]
        for tabs in per_scale[1:]:
            # the binned passes are for sources the map itself misses, not another faint
            # tail: the characteriser was fitted on the map's own candidates
            for i, tab in enumerate(tabs):
                tabs[i] = tab[np.asarray(tab["score"]) >= self.binned_min_score]
        out = []
        for tabs in zip(*per_scale):
            tab = merge_scales(list(tabs), self.merge_radius)
            tab.meta["scales"] = list(scales)
            out.append(tab)
        settings = self.extended_settings()
        if settings is None or backgrounds is None:
            return out
        cubes, masks = _as_stack(cubes, masks)
        try:
            backgrounds = np.broadcast_to(np.asarray(backgrounds, float), cubes.shape)
        except ValueError:
            raise ValueError(f"backgrounds of shape {np.shape(backgrounds)} do not match the "
                             f"counts cubes of shape {cubes.shape}") from None
        pixel_deg = float(pixel_deg or self.card.get("pixel_scale_deg"))
        psf = settings["psf_sigma_deg"] if psf_sigma_deg is None else psf_sigma_deg
        return [self._add_extended(tab, cubes[i], backgrounds[i],
                                   None if masks is None else masks[i], psf, pixel_deg, settings)
                for i, tab in enumerate(out)]

    # -- the TS scan for wide sources ----------------------------------------------------
    def extended_settings(self):
        """The card's TS-scan settings (``scale_calibration["asid-ctao"]["extended_search"]``),
        or None when the scan is off or not calibrated.

        Raises
        ------
        WeightsError
            ``extended_search=True`` and the card has no calibration for it.
        """
        if self.extended_search is False:
            return None
        entry = self._multiscale_card().get("extended_search")
        if entry is None and self.extended_search:
            raise WeightsError(
                f"{self.name}: the model card has no calibration of the extended-source TS "
                "scan; fit it with `python -m astro_asid.training.ctao_scales` or pass "
                "extended_search=False")
        return entry

    def detect(self, image):
        """Find sources in a CTAO counts cube: the network at every binning, merged, plus
        the TS scan for wide sources when ``image.background`` is set (see the class
        docstring).

        Returns
        -------
        `~astropy.table.QTable`
            ``x_centroid``, ``y_centroid``, ``score``, ``raw_score``, ``x_err``,
            ``y_err``, ``scale``; with the TS scan also ``found_by`` and
            ``kernel_sigma_deg``. By decreasing score.
        """
        tab = super().detect(image)
        settings = self.extended_settings()
        if settings is None:
            return tab
        if image.background is None:
            if self.extended_search:
                warnings.warn(f"{self.name}: extended_search needs image.background (the "
                              "expected background counts); the TS scan is skipped",
                              ASIDInputWarning)
            tab.meta["extended_search"] = "skipped: the image has no background model"
            return tab
        from astro_asid.detection.tsmap import checked_background

        pixel_deg = (float(self.card.get("pixel_scale_deg")) if image.wcs is None
                     else pixel_scale_deg(image.wcs))
        psf = settings["psf_sigma_deg"]
        if image.psf and image.psf.get("sigma_pix") is not None:
            psf = np.asarray(image.psf["sigma_pix"], float) * pixel_deg
        return self._add_extended(tab, image.filled(0.0), checked_background(image.background,
                                                                             image),
                                  image.mask, psf, pixel_deg, settings)

    def _add_extended(self, tab, counts, background, mask, psf_deg, pixel_deg, settings):
        """``tab`` plus the calibrated TS-scan candidates of one image it does not explain."""
        from astro_asid.detection.extended import drop_found, extended_candidates

        cand = extended_candidates(counts, background, psf_deg, pixel_deg, mask=mask,
                                   kernels=settings["kernels"], weights=settings["weights"],
                                   ts_min=settings["ts_min"])
        cand = drop_found(cand, tab, pixel_deg, settings["drop_score"])
        raw = np.sqrt(np.asarray(cand["ts"], float))
        score = ScoreCalibration.from_dict(settings["calibration"])(raw)
        keep = score >= self.extended_min_score
        cand, raw, score = cand[keep], raw[keep], score[keep]
        tab["found_by"] = np.full(len(tab), "unet", dtype="<U7")
        tab["kernel_sigma_deg"] = np.full(len(tab), np.nan)
        if len(cand):
            new = QTable()
            new["x_centroid"] = np.asarray(cand["x_centroid"], float)
            new["y_centroid"] = np.asarray(cand["y_centroid"], float)
            new["score"] = score
            new["raw_score"] = raw
            for c in ("x_err", "y_err"):
                if c in tab.colnames:
                    new[c] = np.asarray(cand[c], float)
            sigma = np.asarray(cand["kernel_sigma_deg"], float)
            binning = dict((float(s), int(f)) for s, f in settings["kernels"])
            new["scale"] = np.array([binning[v] for v in sigma], dtype=np.int16)
            new["found_by"] = np.full(len(new), "ts-scan", dtype="<U7")
            new["kernel_sigma_deg"] = sigma
            tab = vstack([tab, new], metadata_conflicts="silent")     # keeps tab's meta
            tab = tab[np.argsort(-np.asarray(tab["score"], float), kind="stable")]
        tab.meta["extended_search"] = f"{len(cand)} TS-scan source(s) added"
        return tab


#: The deep Fermi-LAT detectors (one shared network), for the built-in plugin registration.
DEEP_DETECTORS = [ASIDUNetDetector, UNEKDetector, CentroidNetDetector, CeDiRNetDetector]

#: Deep detectors of other instruments, registered when their weights ship.
OTHER_DEEP_DETECTORS = [ASIDCTAODetector]

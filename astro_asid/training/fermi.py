"""Training the deep detectors on simulated Fermi-LAT patches.

Recipe (`train_detector`)
-------------------------
- Data: a pool of *expected* patches from `astro_asid.simulate.FermiSkySimulator`
  (or the toy generator), partly refreshed from the simulator at every step.
  Every training example is a fresh Poisson draw of
  ``e * (sources + b * background)`` of a random pool patch, with the
  exposure scale ``e`` log-uniform in ``exposure_range`` (0.3..3: ~3 to ~30
  years of LAT data at the challenge's depth) and the background scale ``b``
  log-uniform in ``background_range`` (0.5..2), then a random flip / 90 degree
  rotation. So the network never sees the same counts twice, and its input
  normalisation is exercised across exposures and background levels.
- A fraction (15%) of examples is presented as a 2-D image (summed bands
  only, see `astro_asid.nn.normalize`).
- Targets: disks of R = 2.5 px, offset vectors and directions to the nearest
  centre within 5 px, for the true sources whose matched-filter significance
  ``sqrt(sum_b s_b^2 / (s_b + 4 pi sigma_b^2 beta_b))`` (``s_b`` source counts,
  ``beta_b`` background per pixel, ``sigma_b`` PSF) is at least
  ``min_significance`` (1): sources that are pure noise would only teach the
  network to guess.
- One multi-head U-Net (seg + offset + direction) is trained; its weights
  serve all four decoders, each with its own score calibration (isotonic
  regression on a held-out simulated set at nominal exposure) and metrics in
  the model card.
"""

import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from astro_asid.nn.normalize import model_input_torch
from astro_asid.nn.targets import make_targets
from astro_asid.nn.unet import UNet
from astro_asid.training.loop import Trainer, select_device
from astro_asid.training.metrics import MATCH_RADIUS_PX, match_detections, recall_at_precision
from astro_asid.training.toy import FERMI_PSF_SIGMA_PX, ToySkySimulator

__all__ = ["train_detector", "export_detectors", "PatchPool", "multihead_loss",
           "calibrate_and_evaluate",
           "DETECTOR_NAMES", "FERMI_ENERGY_EDGES_GEV", "PIXEL_SCALE_DEG"]

DETECTOR_NAMES = ("asid-unet", "unek", "centroidnet", "cedirnet")
FERMI_ENERGY_EDGES_GEV = [0.5, 1.0, 2.0, 7.0, 20.0, 200.0]
PIXEL_SCALE_DEG = 10.0 / 64.0

#: CTAO: the detector, training patch size and source density factor of the
#: simulator (denser than the survey so each 128 px patch holds a few sources;
#: the scores are calibrated at the survey's density)
CTAO_DETECTOR_NAMES = ("asid-ctao",)
CTAO_TRAIN_NPIX = 128
CTAO_TRAIN_DENSITY = 3.0


def instrument_spec(instrument):
    """Energy edges (GeV), pixel scale (deg), PSF sigma per band (px), detectors and
    calibration matching radius (px) of an instrument the U-Nets are trained for."""
    if instrument == "fermi-lat":
        return {"energy_edges_gev": FERMI_ENERGY_EDGES_GEV, "pixel_scale_deg": PIXEL_SCALE_DEG,
                "psf_sigma_px": FERMI_PSF_SIGMA_PX, "detectors": DETECTOR_NAMES,
                "match_radius_px": MATCH_RADIUS_PX, "position_goal_deg": 0.15}
    if instrument == "ctao":
        from astro_asid.simulate.ctao import CTAO_ENERGY_EDGES_TEV, CTAO_PIXEL_DEG, CTAOResponse

        return {"energy_edges_gev": [float(e) * 1e3 for e in CTAO_ENERGY_EDGES_TEV],
                "pixel_scale_deg": CTAO_PIXEL_DEG,
                "psf_sigma_px": CTAOResponse().psf_sigma_deg / CTAO_PIXEL_DEG,
                "detectors": CTAO_DETECTOR_NAMES,
                # 0.15 deg: beyond the PSF, within the typical extended-source size
                "match_radius_px": 0.15 / CTAO_PIXEL_DEG, "position_goal_deg": 0.05}
    raise ValueError(f"instrument must be 'fermi-lat' or 'ctao', not {instrument!r}")


def _toy_b1(seed):
    """Toy sources (two-Gaussian LAT PSF, power-law spectra) on a 50/50 mix of smooth random
    backgrounds and the data challenge's B1 background of patches 0-63 (the calibration
    patches; the benchmark uses 64-767)."""
    from astro_asid.evaluate.challenge import load_challenge
    from astro_asid.training.toy import FERMI_PSF_DOUBLE_PX

    templates = load_challenge().background[:64]
    return ToySkySimulator(seed=seed, psf_sigma=FERMI_PSF_DOUBLE_PX[0],
                           psf_tail=FERMI_PSF_DOUBLE_PX[1:], index_range=(1.8, 2.8),
                           mean_sources=14.0, counts_range=(3.0, 2e4), count_slope=1.7,
                           background_templates=templates, template_fraction=0.5)


SIMULATORS = ("auto", "fermi", "toy", "toy-b1")


def make_simulator(instrument="fermi-lat", background="b1", seed=0, simulator="auto",
                   calibration=False):
    """The patch simulator: ``"fermi"`` (astro_asid.simulate), ``"toy"``, ``"toy-b1"``
    (toy sources on the challenge's B1 background of patches 0-63), or ``"auto"``.

    For ``instrument="ctao"`` it is `~astro_asid.simulate.ctao.CTAOSkySimulator` on
    128 px patches, with `CTAO_TRAIN_DENSITY` times the survey's source density, or the
    survey's own density when ``calibration`` is true.
    """
    if instrument == "ctao":
        from astro_asid.simulate.ctao import CTAOSkySimulator

        # score calibration uses the survey's own source density
        density = 1.0 if calibration else CTAO_TRAIN_DENSITY
        return CTAOSkySimulator(seed=seed, npix=CTAO_TRAIN_NPIX, random_centres=True,
                                density=density)
    if instrument != "fermi-lat":
        raise ValueError(f"instrument must be 'fermi-lat' or 'ctao', not {instrument!r}")
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    if simulator == "toy":
        return ToySkySimulator(seed=seed)
    if simulator == "toy-b1":
        return _toy_b1(seed)
    try:
        from astro_asid.simulate import FermiSkySimulator
    except ImportError as exc:
        if simulator == "fermi":
            raise RuntimeError(f"astro_asid.simulate.FermiSkySimulator is unavailable ({exc})")
        import warnings
        warnings.warn(f"FermiSkySimulator unavailable ({exc}); training on the toy generator")
        return ToySkySimulator(seed=seed)
    return FermiSkySimulator(background=background, seed=seed)


def _significance(counts_band, bg_at_src, psf_sigma, ext_sigma=None):
    s = np.asarray(counts_band, float)
    beta = np.asarray(bg_at_src, float)
    sig2 = np.asarray(psf_sigma, float) ** 2
    if ext_sigma is not None:
        # a Gaussian source spreads over the PSF convolved with its own width
        sig2 = sig2 + np.asarray(ext_sigma, float)[:, None] ** 2
    area = 4 * np.pi * sig2
    with np.errstate(invalid="ignore", divide="ignore"):
        z2 = np.where(s > 0, s ** 2 / (s + area * beta), 0.0)
    return np.sqrt(z2.sum(axis=-1))


class PatchPool:
    """Expected-count patches re-drawn as fresh Poisson examples.

    Parameters
    ----------
    simulator : object
        Has ``sample_patches(n)`` returning the batch structure of
        `FermiSkySimulator` (``expected``, ``background``, ``sources``).
    size : int
        Number of patches in the pool.
    exposure_range, background_range : tuple
        Log-uniform ranges of the exposure and background scales.
    sum_only_fraction : float
        Fraction of examples given as summed-band (2-D) images.
    min_significance : float
        Sources below this matched-filter significance get no target.
    psf_sigma : sequence
        Gaussian PSF sigma per band (px), for the significance.
    spectral_tilt : float
        Each example multiplies the source counts of band ``b`` by
        ``exp(t * (b - 2) / 2)`` with ``t`` uniform in ``+-spectral_tilt``:
        robustness to a simulator whose source spectra are somewhat too soft
        or too hard (0 = off).
    data : tuple, optional
        Pre-simulated pool content (`PatchPool.draw`'s output, e.g. from
        `astro_asid.training.parallel.simulate_pool_data`); ``size`` is then
        its length and the simulator is only used by `refresh`.
    """

    def __init__(self, simulator, size=512, exposure_range=(0.3, 3.0),
                 background_range=(0.5, 2.0), sum_only_fraction=0.15, min_significance=1.0,
                 psf_sigma=FERMI_PSF_SIGMA_PX, radius=2.5, vector_radius=5.0, spectral_tilt=0.0,
                 data=None):
        self.sim = simulator
        self.size = int(size) if data is None else len(data[0])
        self.exposure_range = tuple(exposure_range)
        self.background_range = tuple(background_range)
        self.sum_only_fraction = float(sum_only_fraction)
        self.min_significance = float(min_significance)
        self.psf_sigma = np.asarray(psf_sigma, float)
        self.radius = float(radius)
        self.vector_radius = float(vector_radius)
        self.spectral_tilt = float(spectral_tilt)
        self.sim_time = 0.0
        if data is None:
            self._append(self.size)
        else:
            self.src, self.bg, self.xy, self.cb, self.flux, self.ext = data

    def _draw(self, n):
        t = time.time()
        out = self.draw(self.sim, n)
        self.sim_time += time.time() - t
        return out

    @staticmethod
    def draw(simulator, n):
        """Simulate ``n`` patches as pool content: source and background maps,
        positions, band counts and fluxes."""
        b = simulator.sample_patches(n)
        bg = np.asarray(b.background, np.float32)
        src = np.clip(np.asarray(b.expected, np.float32) - bg, 0, None)
        xy = [np.column_stack([np.asarray(s["x"], float), np.asarray(s["y"], float)])
              for s in b.sources]
        cb = [np.asarray(s["counts_band"], float).reshape(len(s), -1) for s in b.sources]
        # brightness for matching (Fermi: flux 1-100 GeV; CTAO: flux above 1 TeV) and
        # the Gaussian width of extended sources in pixels (0: point-like)
        flux = [np.asarray(s["flux_1000"] if "flux_1000" in s.colnames else s["flux_1tev"],
                           float) for s in b.sources]
        scale = getattr(simulator, "cdelt", None)
        ext = [np.asarray(s["sigma_deg"], float) / scale
               if "sigma_deg" in s.colnames and scale else np.zeros(len(s))
               for s in b.sources]
        return src, bg, xy, cb, flux, ext

    def _append(self, n):
        self.src, self.bg, self.xy, self.cb, self.flux, self.ext = self._draw(n)

    def refresh(self, rng, n):
        """Replace ``n`` random pool patches by new simulated ones."""
        if n <= 0:
            return
        src, bg, xy, cb, flux, ext = self._draw(n)
        idx = rng.choice(self.size, size=n, replace=False)
        for j, i in enumerate(idx):
            self.src[i], self.bg[i] = src[j], bg[j]
            self.xy[i], self.cb[i], self.flux[i], self.ext[i] = xy[j], cb[j], flux[j], ext[j]

    @staticmethod
    def _transform(maps, xy, k, flip, shape):
        """Rotate by k*90 deg and flip maps (..., ny, nx) and positions consistently."""
        ny, nx = shape
        x, y = xy[:, 0].copy(), xy[:, 1].copy()
        if flip:
            maps = maps[..., ::-1]
            x = (nx - 1) - x
        for _ in range(k):
            # np.rot90 on the last two axes (counter-clockwise): (y, x) -> (nx-1-x, y)
            maps = np.rot90(maps, 1, axes=(-2, -1))
            x, y = y, (nx - 1) - x
            ny, nx = nx, ny
        return np.ascontiguousarray(maps), np.column_stack([x, y])

    def examples(self, rng, idx, exposure=None, bscale=None, sum_only=None, augment=True):
        """Counts, target positions and source flags for pool entries ``idx``."""
        n = len(idx)
        lo, hi = np.log(self.exposure_range[0]), np.log(self.exposure_range[1])
        e = np.exp(rng.uniform(lo, hi, n)) if exposure is None else np.broadcast_to(exposure, n)
        lo, hi = np.log(self.background_range[0]), np.log(self.background_range[1])
        bs = np.exp(rng.uniform(lo, hi, n)) if bscale is None else np.broadcast_to(bscale, n)
        shape = self.src.shape[2:]
        counts, positions = [], []
        nb = self.src.shape[1]
        for j, i in enumerate(idx):
            bg = self.bg[i] * bs[j]
            tilt = np.ones(nb)
            if self.spectral_tilt > 0 and augment:
                t = rng.uniform(-self.spectral_tilt, self.spectral_tilt)
                tilt = np.exp(t * (np.arange(nb) - (nb - 1) / 2) / 2)
            lam = e[j] * (self.src[i] * tilt[:, None, None].astype(np.float32) + bg)
            xy = self.xy[i]
            if len(xy):
                r = np.clip(np.rint(xy[:, 1]).astype(int), 0, shape[0] - 1)
                c = np.clip(np.rint(xy[:, 0]).astype(int), 0, shape[1] - 1)
                z = _significance(e[j] * self.cb[i] * tilt, e[j] * bg[:, r, c].T, self.psf_sigma,
                                  self.ext[i])
                xy = xy[z >= self.min_significance]
            if augment:
                lam, xy = self._transform(lam, xy, int(rng.integers(4)), bool(rng.integers(2)),
                                          shape)
            counts.append(rng.poisson(lam).astype(np.float32))
            positions.append(xy)
        if sum_only is None:
            sum_only = rng.uniform(size=n) < self.sum_only_fraction
        x = model_input_torch(torch.from_numpy(np.stack(counts)),
                              torch.as_tensor(np.broadcast_to(sum_only, n).copy()))
        t = make_targets(positions, counts[0].shape[1:], self.radius, self.vector_radius)
        return x, t

    def make_batch(self, rng, n):
        """``make_batch(rng, n)`` for `Trainer`: random pool patches, fresh noise."""
        idx = rng.integers(0, self.size, n)
        return self.examples(rng, idx)


def multihead_loss(out, t, w_offset=0.1, w_direction=0.5):
    """Segmentation BCE (per-pixel weights ``t["seg_w"]`` when given) + masked smooth-L1
    offsets + masked MSE directions."""
    seg = F.binary_cross_entropy_with_logits(out["seg"], t["seg"], weight=t.get("seg_w"))
    loss = seg
    parts = {"seg": seg.detach()}
    if "offset" in out:
        w = t["offset_w"]
        off = (F.smooth_l1_loss(out["offset"], t["offset"], reduction="none").sum(1, keepdim=True)
               * w).sum() / w.sum().clamp(min=1.0)
        loss = loss + w_offset * off
        parts["off"] = off.detach()
    if "direction" in out:
        w = t["direction_w"]
        d = (((out["direction"] - t["direction"]) ** 2).sum(1, keepdim=True) * w).sum() \
            / w.sum().clamp(min=1.0)
        loss = loss + w_direction * d
        parts["dir"] = d.detach()
    return loss, parts


def _detector_classes():
    from astro_asid.detection.deep import DEEP_DETECTORS, OTHER_DEEP_DETECTORS
    return {c.name: c for c in DEEP_DETECTORS + OTHER_DEEP_DETECTORS}


def calibrate_and_evaluate(weights, batch, names=DETECTOR_NAMES, log=print,
                           instrument="fermi-lat", **det_options):
    """Fit each decoder's score calibration on a simulated set and measure it.

    Parameters
    ----------
    weights : path
        Model weights (with card) to use.
    batch : object
        ``counts`` (n, n_bands, ny, nx) and ``sources`` tables (``x``, ``y``,
        ``flux_1000``).
    names : sequence of str
        Detectors to calibrate.
    instrument : str
        Sets the matching radius and the position goal (`instrument_spec`).

    Returns
    -------
    calibrations, metrics, sigmas : dict
        Per name: `ScoreCalibration` dicts, metric dicts, and the 1-D
        position sigma (px) of true positives.
    """
    from astro_asid.detection.decoders import ScoreCalibration

    classes = _detector_classes()
    spec = instrument_spec(instrument)
    goal = spec["position_goal_deg"]
    cal, metrics, sigmas = {}, {}, {}
    n_true = sum(len(s) for s in batch.sources)
    for name in names:
        det = classes[name](weights=weights, min_score=0.0, **det_options.get(name, {}))
        t0 = time.time()
        tables = det.detect_arrays(batch.counts)
        dt = time.time() - t0
        raw, tp, dist = [], [], []
        for tab, src in zip(tables, batch.sources):
            is_tp, m = match_detections(tab["x_centroid"], tab["y_centroid"], tab["raw_score"],
                                        src["x"], src["y"], src["flux_1000"],
                                        spec["match_radius_px"])
            raw.append(np.asarray(tab["raw_score"]))
            tp.append(is_tp)
            ok = m >= 0
            dist.append(np.hypot(np.asarray(tab["x_centroid"])[ok] - np.asarray(src["x"])[m[ok]],
                                 np.asarray(tab["y_centroid"])[ok] - np.asarray(src["y"])[m[ok]]))
        raw, tp = np.concatenate(raw), np.concatenate(tp)
        c = ScoreCalibration.fit(raw, tp)
        score = c(raw)
        res = {"n_patches": len(batch.counts), "n_true": int(n_true),
               "n_candidates": int(len(raw)), "time_per_patch_s": dt / len(batch.counts)}
        for p in (0.88, 0.90, 0.95):
            r, thr = recall_at_precision(score, tp, n_true, p)
            res[f"recall_at_precision_{p:.2f}"] = r
            res[f"score_threshold_at_precision_{p:.2f}"] = thr
        # position errors of the true positives kept at precision 0.88
        thr88 = res["score_threshold_at_precision_0.88"]
        d = np.concatenate(dist)
        keep_tp = score[tp] >= thr88
        d88 = d[keep_tp] if keep_tp.any() else d
        if len(d88):
            res["tp_offset_median_px"] = float(np.median(d88))
            res["tp_offset_68_px"] = float(np.quantile(d88, 0.68))
            res[f"tp_fraction_within_{goal}deg"] = float(
                np.mean(d88 <= goal / spec["pixel_scale_deg"]))
            # 2-D Gaussian: r68 = 1.515 sigma
            sigmas[name] = float(np.quantile(d88, 0.68) / 1.515)
        cal[name] = c.to_dict()
        metrics[name] = res
        log(f"  {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in res.items()))
    return cal, metrics, sigmas


def _fixed_batch(pool, rng, n, exposure, bscale):
    """A Poisson draw of ``n`` pool patches at fixed scales, with all in-field truth."""
    from types import SimpleNamespace
    from astropy.table import Table

    counts, sources = [], []
    for i in range(n):
        lam = exposure * (pool.src[i] + bscale * pool.bg[i])
        counts.append(rng.poisson(lam).astype(np.float32))
        xy = pool.xy[i]
        sources.append(Table({"x": xy[:, 0], "y": xy[:, 1], "flux_1000": pool.flux[i]}))
    return SimpleNamespace(counts=np.stack(counts), sources=sources)


def train_detector(name="asid-unet", instrument="fermi-lat", steps=2000, batch_size=32, lr=2e-3,
                   seed=0, out="asid-training", background="b1", device="auto",
                   simulator="auto", base_width=16, depth=3, pool_size=512, refresh_per_step=2,
                   n_val=192, n_calibration=384, export=None, threads=None, log=None,
                   val_every=200, command=None, init_weights=None, spectral_tilt=0.0,
                   workers=0):
    """Train the multi-head U-Net and write weights + model cards.

    Parameters
    ----------
    name : str
        Detector to train (``asid-unet``, ``unek``, ``centroidnet``,
        ``cedirnet``); all four share one multi-head network.
    instrument : str
        Only ``"fermi-lat"``.
    steps, batch_size, lr, seed : int, int, float, int
        Optimisation settings; ``steps=0`` only calibrates and exports
        ``init_weights`` (see `export_detectors`).
    out : str or path
        Output directory: checkpoints, ``history.json``, and ``<name>.safetensors``
        + ``<name>.json`` for every exported detector.
    background : str
        Interstellar-emission model of the simulator (``"b1"``...).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    simulator : str
        ``"auto"`` (the Fermi simulator, else the toy one), ``"fermi"``, ``"toy"`` or
        ``"toy-b1"`` (see `make_simulator`).
    base_width, depth : int
        U-Net size.
    pool_size, refresh_per_step : int
        Patches held in the pool and replaced from the simulator per step.
    n_val, n_calibration : int
        Held-out patches for the validation loss and for score calibration.
    export : sequence of str, optional
        Detector names to write (default: all four).
    threads : int, optional
        ``torch.set_num_threads`` on the CPU.
    command : str, optional
        The command line recorded in the card (default: ``sys.argv``).
    init_weights : str or path, optional
        Start from these weights (fine-tuning) instead of a random initialisation;
        the card must describe the same U-Net configuration.
    spectral_tilt : float
        Spectral-tilt augmentation of the sources (see `PatchPool`).
    workers : int
        0: simulate the pool and make batches in this process, replacing
        ``refresh_per_step`` pool patches per step. N > 0: simulate the pool on
        N processes and make batches on N DataLoader workers (no refresh; use a
        large ``pool_size``), which keeps a GPU fed. Results depend on N.

    Returns
    -------
    dict
        Name -> path of the written card (its weights are named in it).
    """
    known = DETECTOR_NAMES + CTAO_DETECTOR_NAMES
    if name not in known:
        raise ValueError(f"unknown deep detector {name!r}; choose from {known}")
    spec = instrument_spec(instrument)
    if name not in spec["detectors"]:
        raise ValueError(f"{name} is not a detector of instrument {instrument!r} "
                         f"(its detectors: {spec['detectors']})")
    export = tuple(spec["detectors"] if export is None else export)
    log = log or (lambda msg: print(msg, flush=True))
    if int(steps) == 0:
        # no training: calibrate and export existing weights
        if init_weights is None:
            raise ValueError("steps=0 exports existing weights: give init_weights")
        if threads:
            torch.set_num_threads(int(threads))
        return export_detectors(init_weights, out, export, instrument=instrument,
                                background=background, simulator=simulator, seed=seed,
                                n_calibration=n_calibration, log=log)
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    dev = select_device(device)
    sim = make_simulator(instrument, background, seed, simulator)
    sim_kind = type(sim).__name__
    log(f"training {name} ({', '.join(export)}) on {sim_kind}, device {dev}, "
        f"{steps} steps x {batch_size}")
    if workers > 0:
        from astro_asid.training.parallel import BatchStream, simulate_pool_data

        t_sim = time.time()
        data = simulate_pool_data(pool_size, instrument, background, simulator, seed, workers)
        pool = PatchPool(sim, spectral_tilt=spectral_tilt, data=data,
                         psf_sigma=spec["psf_sigma_px"])
        pool.sim_time = time.time() - t_sim
        log(f"simulated a pool of {pool.size} patches on {workers} processes in "
            f"{pool.sim_time:.0f} s")
        refresh_per_step = 0
    else:
        pool = PatchPool(sim, size=pool_size, spectral_tilt=spectral_tilt,
                         psf_sigma=spec["psf_sigma_px"])
    # held-out data from independent simulator seeds
    val_pool = PatchPool(make_simulator(instrument, background, seed + 1_000_003, simulator),
                         size=n_val, psf_sigma=spec["psf_sigma_px"])
    val_rng = np.random.default_rng(seed + 17)
    val_data = val_pool.examples(val_rng, np.arange(n_val), augment=False)
    n_bands = len(spec["energy_edges_gev"]) - 1
    model = UNet(in_channels=n_bands + 2, base_width=base_width,
                 depth=depth)
    log(f"U-Net {model.config} with {model.n_parameters()} parameters")
    if init_weights is not None:
        from astro_asid.nn.io import load_weights

        tensors, init_card = load_weights(init_weights)
        if init_card.get("config") != model.config:
            raise ValueError(f"init_weights {init_weights} hold a U-Net {init_card.get('config')}, "
                             f"not {model.config}")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in tensors.items()})
        log(f"initialised from {init_weights}")

    def make_batch(rng, n):
        pool.refresh(rng, refresh_per_step)
        return pool.make_batch(rng, n)

    if workers > 0:
        make_batch = BatchStream(pool, batch_size, seed=seed, workers=workers)

    if command is None:
        command = " ".join(shlex.quote(a) for a in sys.argv)
    recipe = {
        "simulator": f"{sim_kind} (--simulator {simulator})", "background": background,
        "exposure_scale": {"distribution": "log-uniform", "range": list(pool.exposure_range)},
        "background_scale": {"distribution": "log-uniform", "range": list(pool.background_range)},
        "augmentation": "Poisson re-draw of pooled expected maps, random flips and 90 deg "
                        "rotations",
        "pool_size": pool_size, "refresh_per_step": refresh_per_step, "workers": workers,
        "sum_only_fraction": pool.sum_only_fraction, "spectral_tilt": pool.spectral_tilt,
        "target_min_significance": pool.min_significance,
        "targets": {"seg": "disk R=2.5 px", "offset": "(dx, dy) to nearest centre within 5 px",
                    "direction": "(cos, sin) to nearest centre within 5 px"},
        "loss": "BCE(seg) + 0.1 smoothL1(offset) + 0.5 MSE(direction)",
    }
    base_card = {
        "architecture": "unet", "n_bands": n_bands, "energy_edges_gev": spec["energy_edges_gev"],
        "pixel_scale_deg": spec["pixel_scale_deg"], "instrument": instrument,
        "input": "astro_asid.nn.normalize.model_input: per-band Anscombe minus median, "
                 "+ summed-band channel + bands-available flag",
        "training": {"command": command, "steps": steps, "batch_size": batch_size, "lr": lr,
                     "seed": seed, "device": str(dev), "data": recipe,
                     "init_weights": None if init_weights is None else {
                         "path": str(init_weights), "sha256": init_card.get("sha256"),
                         "training": init_card.get("training")},
                     "torch": torch.__version__, "python": platform.python_version()},
    }
    trainer = Trainer(model, make_batch, multihead_loss, val_data=val_data, lr=lr, seed=seed,
                      device=dev, out=out / "checkpoints", card=base_card, log=log)
    history = trainer.fit(steps, batch_size, val_every=val_every)
    train_time = time.time() - t_start
    log(f"training done in {train_time:.0f} s (simulator {pool.sim_time:.0f} s)")

    best = out / "checkpoints" / "best"
    extra = {"metrics": {"best_val_loss": trainer.best_val,
                         "history_last": history[-1] if history else None},
             "training_time_s": train_time}
    return export_detectors(best, out, export, instrument=instrument, background=background,
                            simulator=simulator, seed=seed, n_calibration=n_calibration,
                            extra_card=extra, log=log)


def export_detectors(weights, out, names=None, instrument="fermi-lat", background="b1",
                     simulator="auto", seed=0, n_calibration=384, extra_card=None, log=None):
    """Calibrate the scores of trained weights and write one model per detector.

    The weights (a checkpoint written by `Trainer`, whose card holds the U-Net
    config and the training record) are evaluated on ``n_calibration``
    independent simulated patches at nominal exposure and background; each
    decoder gets its isotonic score calibration, its position sigma and its
    metrics, plus a robustness check of ``asid-unet`` at exposure x0.3, x3 and
    background x0.5, x2. Writes the weights once, as
    ``out/<instrument>-unet.safetensors`` (float16), and a card
    ``out/<name>.json`` pointing to them for every name.

    Returns
    -------
    dict
        Name -> path of the written card.
    """
    from astro_asid.nn.io import load_weights

    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = instrument_spec(instrument)
    names = tuple(spec["detectors"] if names is None else names)
    tensors, ck_card = load_weights(weights)
    cal_pool = PatchPool(make_simulator(instrument, background, seed + 2_000_029, simulator,
                                        calibration=True),
                         size=n_calibration, psf_sigma=spec["psf_sigma_px"])
    cal_batch = _fixed_batch(cal_pool, np.random.default_rng(seed + 23), n_calibration, 1.0, 1.0)
    log(f"calibrating scores on {n_calibration} held-out patches (exposure 1, background x1)")
    det_opts = {"unek": {"patience": 5}}
    cal, metrics, sigmas = calibrate_and_evaluate(weights, cal_batch, names, log=log,
                                                  instrument=instrument, **det_opts)
    robust = {}
    for e, b in ((0.3, 1.0), (3.0, 1.0), (1.0, 0.5), (1.0, 2.0)):
        rb = _fixed_batch(cal_pool, np.random.default_rng(seed + 31), min(128, n_calibration),
                          e, b)
        log(f"robustness check: exposure x{e}, background x{b}")
        _, m, _ = calibrate_and_evaluate(weights, rb, ("asid-unet",) if "asid-unet" in names
                                         else names[:1], log=log, instrument=instrument)
        robust[f"exposure_{e}_background_{b}"] = {k: {kk: vv for kk, vv in v.items()
                                                      if kk.startswith("recall")}
                                                  for k, v in m.items()}
    # half precision halves the shipped size; inference casts back to float32
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    extra = dict(extra_card or {})
    from safetensors.torch import save_file

    from astro_asid.nn.io import save_card

    # one weights file for all the decoders; each detector gets its own card
    shared = out / f"{instrument}-unet.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(shared))
    written = {}
    for det_name in names:
        card = {k: v for k, v in ck_card.items() if k not in ("sha256", "weights_file")}
        card.update({
            "name": det_name,
            "shared_weights": f"one multi-head U-Net serves {', '.join(names)}; only the "
                              "decoder and its score calibration differ",
            "score_calibration": cal, "position_sigma_px": sigmas,
            "score_calibration_decoder_options": det_opts,
            "calibration": {"simulator": simulator, "background": background, "seed": seed,
                            "n_patches": n_calibration},
            "dtype": "float16",
        })
        card["metrics"] = dict(extra.get("metrics", {}), **{
            "validation_note": "held-out simulated patches from independent simulator seeds at "
                               "exposure 1, background x1; scores calibrated on the same set",
            "simulated_heldout": metrics, "robustness": robust})
        card.update({k: v for k, v in extra.items() if k != "metrics"})
        save_card(out / f"{det_name}.json", card, shared)
        written[det_name] = out / f"{det_name}.json"
        log(f"wrote {written[det_name]} (weights {shared.name})")
    return written

"""Training of ``asid-optical`` on simulated optical fields (one command).

::

    asid train asid-optical --n-fields 3000 --steps 3000 --out DIR

1. `simulate_optical_pool`: `~astro_asid.simulate.optical.OpticalSkySimulator`
   fields turned into the detector's own input (background and noise from
   `~astro_asid.instruments.optical.estimate_background`, as at run time but
   with 32 px boxes on the 128 px fields; with ``remove_trails`` the trails
   found are folded into the background exactly as the detector does at run
   time), with the positions of the sources to find (matched-filter
   S/N >= ``target_snr``); cosmic rays, trails and bleed streaks are in the
   images but not in the targets.
2. Training: the multi-head U-Net (``seg`` disks of 1.5 px + ``offset``)
   on random flips/rotations of pool fields, some with masked borders or
   columns.
3. Score calibration (isotonic, `~astro_asid.detection.decoders.ScoreCalibration`)
   and metrics on independent fields, run through the full detector; the
   card gets both.
"""

import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from astro_asid import __version__

__all__ = ["field_snr", "simulate_optical_pool", "train_optical_detector", "evaluate_optical",
           "OPTICAL_MATCH_RADIUS_PX", "TARGET_SNR",
           "recall_at_precision_counted"]

#: A detection within this distance (px) of a true source is a true positive.
OPTICAL_MATCH_RADIUS_PX = 1.5
#: Sources the network is trained to mark (matched-filter S/N).
TARGET_SNR = 3.0
_DISK = 1.5
_VECTOR = 3.0


def field_snr(image, box_size=32, remove_trails=False):
    """S/N image ``(image - background) / noise`` and the noise map of a simulated field,
    as the training sets use: `ASIDOpticalDetector.snr_maps
    <astro_asid.detection.optical.ASIDOpticalDetector.snr_maps>` with ``box_size``.

    With ``remove_trails``, the satellite trails found are folded into the
    background and noise, so that the network trains on the input it sees at
    run time: trail residuals, not whole trails.
    """
    from astro_asid.detection.optical import ASIDOpticalDetector

    # snr_maps needs no weights: the detector is only its settings here
    detector = ASIDOpticalDetector(box_size=box_size, remove_trails=remove_trails)
    snr, _, _, noise = detector.snr_maps(image)
    return snr, noise


def _pool_chunk(args):
    n, shape, seed, target_snr, keep_fields, remove_trails, sim_options = args
    from astro_asid.simulate.optical import OpticalSkySimulator

    sim = OpticalSkySimulator(shape=shape, seed=seed, **sim_options)
    snr, xy, art, fields = [], [], [], []
    for _ in range(n):
        f = sim.sample()
        snr.append(field_snr(f.image, remove_trails=remove_trails)[0].astype(np.float16))
        art.append(f.artefact_mask.astype(np.uint8))
        keep = f.truth["snr"] >= target_snr
        xy.append(np.column_stack([f.truth["x"][keep], f.truth["y"][keep]]).astype(np.float32))
        if keep_fields:
            fields.append(f)
    return np.stack(snr), xy, np.stack(art), fields


def simulate_optical_pool(n, shape=(128, 128), seed=0, workers=1, target_snr=TARGET_SNR,
                          keep_fields=False, remove_trails=False, **sim_options):
    """Simulated fields as network-ready S/N images with target positions.

    Parameters
    ----------
    remove_trails : bool
        Fold the trails found into the background first (`field_snr`).
    **sim_options
        Passed to `~astro_asid.simulate.optical.OpticalSkySimulator`
        (e.g. ``trail_probability``, ``cosmic_ray_density``, ``fwhm_range``,
        ``psf_variation``, ``bleed``).

    Returns
    -------
    dict
        ``snr`` ``(n, ny, nx)`` float16, ``xy`` list of ``(k, 2)`` target
        positions, ``artefact`` ``(n, ny, nx)`` uint8 (1 cosmic ray, 2 trail,
        3 bleed), and ``fields`` (the `OpticalField` objects) when
        ``keep_fields``.
    """
    workers = max(1, int(workers))
    per = -(-int(n) // workers)
    tasks = [(min(per, n - w * per), tuple(shape), seed * 1000 + w, target_snr, keep_fields,
              bool(remove_trails), sim_options)
             for w in range(workers) if n - w * per > 0]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_pool_chunk, tasks))
    else:
        parts = [_pool_chunk(t) for t in tasks]
    out = {"snr": np.concatenate([p[0] for p in parts]),
           "xy": [a for p in parts for a in p[1]],
           "artefact": np.concatenate([p[2] for p in parts])}
    if keep_fields:
        out["fields"] = [f for p in parts for f in p[3]]
    return out


def _transform(img, xy, k, flip, shape):
    """Rotate by ``k`` quarter turns and flip x; the positions follow."""
    ny, nx = shape
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    if flip:
        img = img[..., ::-1]
        x = nx - 1 - x
    for _ in range(k):
        # np.rot90 (counter-clockwise in array axes): new[i, j] = old[j, n-1-i]
        img = np.rot90(img, 1, axes=(-2, -1))
        x, y = y, (nx - 1) - x
        nx, ny = ny, nx
    return np.ascontiguousarray(img), np.column_stack([x, y])


def _targets(xy, shape):
    """Segmentation disks and offset vectors to the nearest source (KD-tree: fast in
    crowded fields); the same definitions as `astro_asid.nn.targets.make_targets`."""
    from scipy.spatial import cKDTree

    ny, nx = shape
    seg = np.zeros((1, ny, nx), np.float32)
    off = np.zeros((2, ny, nx), np.float32)
    w = np.zeros((1, ny, nx), np.float32)
    if len(xy):
        yy, xx = np.mgrid[:ny, :nx]
        grid = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float64)
        d, k = cKDTree(xy).query(grid, distance_upper_bound=_VECTOR)
        near = np.isfinite(d)
        kk = np.where(near, k, 0)
        seg[0].flat[near & (d <= _DISK)] = 1.0
        w[0].flat[near] = 1.0
        off[0].flat[near] = (xy[kk, 0] - grid[:, 0])[near]
        off[1].flat[near] = (xy[kk, 1] - grid[:, 1])[near]
    return seg, off, w


def make_batch_fn(pool, mask_prob=0.2, artefact_weight=0.0):
    """``make_batch(rng, n)`` for `~astro_asid.training.loop.Trainer`.

    ``artefact_weight`` > 0 adds a per-pixel segmentation weight
    ``1 + artefact_weight`` on artefact pixels (cosmic rays, trails, bleed
    streaks: any non-zero ``artefact`` code; ``t["seg_w"]``): they are rare,
    and a false source on them is what users see first.
    """
    from astro_asid.detection.optical import optical_input

    snr_all, xy_all = pool["snr"], pool["xy"]
    art_all = pool.get("artefact")
    shape = snr_all.shape[1:]

    def make_batch(rng, n):
        xs, pos, arts = [], [], []
        for i in rng.integers(0, len(snr_all), n):
            planes = snr_all[i].astype(np.float32)
            if art_all is not None:
                planes = np.stack([planes, art_all[i].astype(np.float32)])
            planes, xy = _transform(planes, xy_all[i], int(rng.integers(4)),
                                    bool(rng.integers(2)), shape)
            img = planes[0] if art_all is not None else planes
            if art_all is not None:
                arts.append(planes[1] > 0)
            bad = np.zeros(img.shape, bool)
            if rng.uniform() < mask_prob:
                # NaN borders and dead columns as real frames have them
                w = int(rng.integers(1, 24))
                side = int(rng.integers(4))
                if side == 0:
                    bad[:, :w] = True
                elif side == 1:
                    bad[:w] = True
                elif side == 2:
                    bad[:, -w:] = True
                else:
                    bad[:, int(rng.integers(img.shape[1]))] = True
            ix = np.clip(np.rint(xy[:, 0]).astype(int), 0, img.shape[1] - 1)
            iy = np.clip(np.rint(xy[:, 1]).astype(int), 0, img.shape[0] - 1)
            xy = xy[~bad[iy, ix]]
            xs.append(optical_input(img, bad))
            pos.append(xy)
        seg, off, w = zip(*(_targets(p, shape) for p in pos))
        t = {"seg": torch.from_numpy(np.stack(seg)), "offset": torch.from_numpy(np.stack(off)),
             "offset_w": torch.from_numpy(np.stack(w))}
        if artefact_weight > 0 and arts:
            sw = 1.0 + float(artefact_weight) * np.stack(arts)[:, np.newaxis]
            t["seg_w"] = torch.from_numpy(sw.astype(np.float32))
        return torch.from_numpy(np.stack(xs)), t

    return make_batch


def evaluate_optical(detector, fields, match_radius=OPTICAL_MATCH_RADIUS_PX):
    """Run ``detector`` on simulated fields and match to the truth.

    Returns
    -------
    dict
        Per candidate: ``raw_score``, ``score``, ``tp``, ``x``, ``y``,
        ``field``, ``match`` (index in that field's truth) and ``artefact``
        (1 cosmic ray, 2 trail, 3 bleed, 0 none, at the candidate's pixel, for
        false positives); ``n_true`` per S/N threshold.
    """
    from astro_asid.core import SkyImage
    from astro_asid.training.metrics import match_detections

    out = {k: [] for k in ("raw_score", "score", "tp", "x", "y", "field", "match", "artefact")}
    for i, f in enumerate(fields):
        tab = detector.detect(SkyImage(f.image[np.newaxis]))
        x = np.asarray(tab["x_centroid"], float)
        y = np.asarray(tab["y_centroid"], float)
        tp, m = match_detections(x, y, tab["score"], f.truth["x"], f.truth["y"],
                                 f.truth["flux"], radius=match_radius)
        ny, nx = f.image.shape
        ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
        out["artefact"].append(np.where(tp, 0, f.artefact_mask[iy, ix]))
        for k, v in (("raw_score", tab["raw_score"]), ("score", tab["score"]), ("tp", tp),
                     ("x", x), ("y", y), ("field", np.full(len(x), i)), ("match", m)):
            out[k].append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


def recall_at_precision_counted(score, tp, counted, n_true, precision):
    """Largest recall of the ``counted`` true sources (``n_true`` of them) over the
    score cuts whose precision (any true match counts) is at least ``precision``.

    Returns ``(recall, threshold)``; ``(0, inf)`` when no cut reaches it.
    """
    order = np.argsort(-np.asarray(score, float), kind="stable")
    tp = np.asarray(tp, bool)[order]
    counted = np.asarray(counted, bool)[order]
    s = np.asarray(score, float)[order]
    prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    rec = np.cumsum(counted & tp) / max(int(n_true), 1)
    ok = prec >= precision
    if not ok.any():
        return 0.0, float("inf")
    i = int(np.argmax(np.where(ok, rec, -1)))
    return float(rec[i]), float(s[i])


def train_optical_detector(out, n_fields=3000, n_calibration=200, steps=3000, batch_size=16,
                           lr=2e-3, base_width=12, depth=3, shape=(128, 128), seed=1,
                           workers=1, device="auto", threads=None, command=None, log=print,
                           trail_probability=0.3, cosmic_ray_density=(1e-4, 1e-3),
                           artefact_weight=0.0, init_weights=None, fwhm_range=(1.8, 5.0),
                           psf_variation=0.0, bleed_probability=0.0, remove_trails=False):
    """Simulate, train, calibrate and write ``out/asid-optical.{safetensors,json}``.

    ``trail_probability`` and ``cosmic_ray_density`` set the artefacts of the
    *training* fields (more than the simulator's defaults teaches the network
    to reject them); the validation and calibration fields keep the
    defaults, so the calibrated score describes ordinary frames.
    ``fwhm_range``, ``psf_variation`` and ``bleed_probability`` (the
    simulator's ``bleed``: the fraction of fields whose saturated stars
    bleed) describe the frames themselves, so they apply to the training,
    validation and calibration fields alike.
    ``remove_trails`` trains on S/N images whose trails were folded into the
    background, as `~astro_asid.detection.optical.ASIDOpticalDetector` (with
    its default ``remove_trails=True``) prepares them at run time; the
    network then learns to ignore what the removal leaves of a trail.
    ``artefact_weight`` up-weights the loss on artefact pixels
    (`make_batch_fn`). ``init_weights`` starts from an existing
    ``asid-optical`` model (fine-tuning; its architecture is kept).
    """
    from astro_asid.detection.decoders import ScoreCalibration
    from astro_asid.detection.optical import ASIDOpticalDetector
    from astro_asid.nn.io import save_weights
    from astro_asid.nn.unet import build_unet
    from astro_asid.training.loop import Trainer, select_device

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # the look of the frames (defaults: the simulator's, so the fields are unchanged)
    frames = {"fwhm_range": tuple(float(v) for v in fwhm_range),
              "psf_variation": float(psf_variation), "bleed": float(bleed_probability)}
    pool = simulate_optical_pool(n_fields, shape, seed=seed, workers=workers,
                                 trail_probability=float(trail_probability),
                                 cosmic_ray_density=tuple(cosmic_ray_density),
                                 remove_trails=remove_trails, **frames)
    val_pool = simulate_optical_pool(64, shape, seed=seed + 500, remove_trails=remove_trails,
                                     **frames)
    t_sim = time.time() - t0
    log(f"simulated {n_fields} training fields in {t_sim:.0f} s")
    config = {"in_channels": 2, "base_width": int(base_width), "depth": int(depth),
              "heads": {"seg": 1, "offset": 2}}
    if init_weights is not None:
        from astro_asid.detection.deep import load_model

        base, old = load_model(init_weights)
        config = old["config"]
        # the recipe of the starting point, so that the chain stays reproducible
        init_card = {"sha256": old.get("sha256"),
                     "command": old.get("training", {}).get("command"),
                     "init_weights": old.get("training", {}).get("init_weights")}
        model = build_unet(config)  # a copy: the cached network stays untouched
        model.load_state_dict(base.state_dict())
        log(f"fine-tuning {init_weights} ({config})")
    else:
        model, init_card = build_unet(config), None
    from astro_asid.training.fermi import multihead_loss
    vb = make_batch_fn(val_pool, mask_prob=0.0)(np.random.default_rng(seed + 1), 64)
    card = {"name": "asid-optical", "architecture": "unet", "instrument": "optical",
            "n_bands": 1, "input": "asinh(snr / 2) + mask flag",
            "targets": {"disk_radius_px": _DISK, "vector_radius_px": _VECTOR,
                        "min_snr": TARGET_SNR}}
    tr = Trainer(model, make_batch_fn(pool, artefact_weight=artefact_weight), lambda o, t: multihead_loss(o, t, w_offset=0.1),
                 val_data=vb, lr=lr, seed=seed, device=device, out=out / "checkpoints",
                 card=card, log=log)
    t1 = time.time()
    tr.fit(steps, batch_size, val_every=max(100, steps // 10), log_every=50)
    t_train = time.time() - t1
    model = tr.model.to("cpu").eval()
    tensors = {k: v.detach().half() if v.is_floating_point() else v
               for k, v in model.state_dict().items()}
    card.update({
        "config": config,
        "training": {"command": command, "n_fields": n_fields, "shape": list(shape),
                     "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "trail_probability": float(trail_probability),
                     "cosmic_ray_density": list(cosmic_ray_density),
                     "artefact_weight": float(artefact_weight),
                     "fwhm_range": list(frames["fwhm_range"]),
                     "psf_variation": frames["psf_variation"],
                     "bleed_probability": frames["bleed"],
                     "remove_trails": bool(remove_trails),
                     "init_weights": None if init_weights is None else Path(init_weights).name,
                     "init_model": init_card,
                     "device": str(select_device(device)),
                     "seconds_simulation": round(t_sim, 1), "seconds_training": round(t_train, 1),
                     "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "torch_threads": torch.get_num_threads(),
                     "astro_asid_version": __version__},
    })
    path = out / "asid-optical"
    save_weights(tensors, path, card)
    # calibration on independent fields through the whole detector
    from astro_asid.detection.deep import clear_model_cache
    clear_model_cache()
    cal_fields = simulate_optical_pool(n_calibration, (256, 256), seed=seed + 900,
                                       keep_fields=True, **frames)["fields"]
    det = ASIDOpticalDetector(weights=path, min_score=0.0)
    ev = evaluate_optical(det, cal_fields)
    cal = ScoreCalibration.fit(ev["raw_score"], ev["tp"])
    n_true = int(sum((f.truth["snr"] >= 5).sum() for f in cal_fields))
    snr = np.array([cal_fields[f].truth["snr"][m] if m >= 0 else 0.0
                    for f, m in zip(ev["field"], ev["match"])])
    score = cal(ev["raw_score"])
    metrics = {"n_fields": n_calibration, "n_true_snr5": n_true}
    for p in (0.9, 0.95):
        r, thr = recall_at_precision_counted(score, ev["tp"], snr >= 5, n_true, p)
        metrics[f"recall_snr5_at_precision_{p:.2f}"] = r
        metrics[f"score_threshold_at_precision_{p:.2f}"] = thr
    card["score_calibration"] = {"asid-optical": cal.to_dict()}
    card["metrics"] = {"calibration_fields": metrics}
    save_weights(tensors, path, card)
    clear_model_cache()
    log(f"wrote {path}.safetensors: {json.dumps(metrics)}")
    return path

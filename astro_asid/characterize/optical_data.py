"""Labelled ``asid-optical`` candidates on simulated optical fields (ASID-FE, ASID-C).

The optical counterpart of `~astro_asid.characterize.data.simulate_candidates`,
returning the same arrays, with these differences:

- the cutouts are signal-to-noise images ``(data - background) / noise``
  (float16), computed exactly as at run time by the detector's
  `~astro_asid.detection.optical.ASIDOpticalDetector.snr_maps` (its background box,
  and satellite trails folded into the background);
- ``log10_flux`` is log10 of the true flux in units of the local noise
  (the characteriser multiplies by the image's noise, so fluxes come out in
  the image's units);
- ``cls``: 0 star, 1 galaxy, 2 FAKE (cosmic rays, trails, noise, and
  blends counted twice);
- a candidate is real when it lies within 1.5 px of a true source.
"""

import time

import numpy as np

from astro_asid.characterize.cutouts import extract_cutouts

__all__ = ["simulate_optical_candidates"]


def simulate_optical_candidates(n_fields, detector=None, seed=0, shape=(128, 128), spec=None,
                                log=print, **_ignored):
    """Run ``detector`` (default ``asid-optical``) on simulated fields and label
    its candidates; see the module docstring and
    `~astro_asid.characterize.data.simulate_candidates` for the returned arrays."""
    from astro_asid.characterize.data import INSTRUMENTS
    from astro_asid.detection.optical import ASIDOpticalDetector
    from astro_asid.simulate.optical import OpticalSkySimulator
    from astro_asid.training.metrics import match_detections

    spec = spec or INSTRUMENTS["optical"]
    if detector is None or isinstance(detector, str):
        detector = ASIDOpticalDetector(min_score=0.02)
    sim = OpticalSkySimulator(shape=shape, seed=seed)
    out = {}
    t0 = time.time()
    for j in range(int(n_fields)):
        f = sim.sample()
        snr, _, _, noise, trails = detector.snr_maps(f.image, return_trails=True)
        cand = detector.detect_snr(snr, trails=trails)
        x = np.asarray(cand["x_centroid"], float)
        y = np.asarray(cand["y_centroid"], float)
        if len(x) == 0:
            continue
        tr = f.truth
        _, match = match_detections(x, y, cand["score"], tr["x"], tr["y"], tr["flux"],
                                    radius=spec["match_radius_px"])
        real = match >= 0
        mj = np.where(real, match, 0)
        ny, nx = snr.shape
        ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
        nan = np.nan
        rec = {
            "score": np.asarray(cand["score"], float), "real": real,
            "injected": np.zeros(len(x), bool),
            "scalars": np.column_stack([x - np.rint(x), y - np.rint(y)]),
            "tx": np.where(real, tr["x"][mj] - np.rint(x), nan),
            "ty": np.where(real, tr["y"][mj] - np.rint(y), nan),
            "log10_flux": np.where(real, np.log10(tr["flux"][mj] / noise[iy, ix]), nan),
            "snr": np.where(real, tr["snr"][mj], nan),
            "extension": np.where(real, tr["r_eff"][mj], nan),
            "cls": np.where(real, np.where(tr["is_star"][mj], 0, 1), 2),
            "snr_obs": _aperture_snr(snr, x, y),
            "mag": np.where(real, tr["mag"][mj], nan),
            "saturated": np.where(real, tr["saturated"][mj], False),
            "artefact": np.where(real, 0, f.artefact_mask[iy, ix]),
            "exposure": np.ones(len(x)), "bscale": np.ones(len(x)),
            "patch": np.full(len(x), j),
        }
        cuts, vals = [], []
        for sc in spec["cutouts"]:
            cut, val, _ = extract_cutouts(snr[np.newaxis], x, y, sc["size"],
                                          binning=sc.get("binning", 1))
            cuts.append(cut.astype(np.float16))
            vals.append(np.rint(val * 255).astype(np.uint8))
        rec["cutouts"] = np.concatenate(cuts, axis=1)
        rec["valid"] = np.stack(vals, axis=1)
        for k, v in rec.items():
            out.setdefault(k, []).append(np.asarray(v))
        if log and (j + 1) % 200 == 0:
            nc = sum(len(v) for v in out["score"])
            log(f"  simulated {j + 1}/{n_fields} fields, {nc} candidates "
                f"({time.time() - t0:.0f} s)")
    return {k: np.concatenate(v) for k, v in out.items()}


def _aperture_snr(snr, x, y, radius=2.0):
    """Sum of S/N within ``radius`` px divided by sqrt(pixels): the aperture's S/N."""
    ny, nx = snr.shape
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dx ** 2 + dy ** 2 <= radius ** 2
    out = np.empty(len(x))
    for i in range(len(x)):
        cx, cy = int(np.rint(x[i])), int(np.rint(y[i]))
        yy, xx = cy + dy[inside], cx + dx[inside]
        ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        out[i] = snr[yy[ok], xx[ok]].sum() / np.sqrt(max(ok.sum(), 1))
    return out

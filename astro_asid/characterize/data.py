"""Labelled candidate sets: a detector run on simulated skies, matched to the truth.

Every candidate of the detector becomes one example: its cutout, its
sub-pixel position, and the labels the characterisation heads learn:

- ``real``: matched to a true source within the challenge radius (0.3 deg
  for Fermi-LAT), otherwise a FAKE -- so the source/FAKE head learns the
  detector's own false positives (seed 002);
- ``tx``, ``ty``: the matched source's true position minus the candidate's
  nearest pixel (pixels);
- ``log10_flux``: log10 of the source's photon flux in the instrument's flux
  band (Fermi-LAT: 1-100 GeV, the 4FGL ``Flux1000``; CTAO: above 1 TeV) times
  the example's exposure scale (the flux the counts correspond to at the
  nominal exposure);
- ``cls``: 0 AGN, 1 pulsar, 2 FAKE (Fermi-LAT); ``extension`` (deg) for CTAO;
- ``snr``: the matched source's matched-filter significance (NaN for FAKEs)
  and ``snr_obs``: the observed aperture excess significance of every
  candidate (known background), for tables by signal-to-noise.

Each example is a fresh Poisson draw of ``e * (sources + b * background)``,
with ``e`` and ``b`` log-uniform in ``exposure_range`` and
``background_range``, like the detector's own training.
"""

import time

import numpy as np

from astro_asid.characterize.cutouts import extract_cutouts

__all__ = ["simulate_candidates", "INSTRUMENTS"]

#: What the characteriser of each instrument is trained on.
INSTRUMENTS = {
    "fermi-lat": dict(detector="asid-unet", cutouts=[{"size": 17, "binning": 1}],
                      match_radius_px=0.3 / (10 / 64), class_names=["AGN", "PSR", "FAKE"],
                      flux_unit="cm-2 s-1", flux_band="1-100 GeV", flux_energy_range=[1.0, 100.0, "GeV"]),
    "ctao": dict(detector="asid-ctao", cutouts=[{"size": 32, "binning": 2},
                                                {"size": 32, "binning": 4}],
                 input="significance", norm=True,
                 match_radius_px=8.0, class_names=["source", "FAKE"], inject_snr=5.0,
                 ext_class_names=["C0", "C1", "C2"], ext_edges_deg=[0.1, 0.3],
                 flux_unit="cm-2 s-1", flux_band=">1 TeV", flux_energy_range=[1.0, 100.0, "TeV"]),
    "optical": dict(detector="asid-optical", cutouts=[{"size": 19, "binning": 1}], input="snr",
                    match_radius_px=1.5, class_names=["star", "galaxy", "FAKE"],
                    flux_unit="", flux_band="total flux in the image's units",
                    flux_energy_range=None),
}


#: CTAO: simulated patch side (px): 224 px are 2 x 2 tiles of asid-ctao and large
#: enough for the 128 px span of the coarse cutout scale
CTAO_NPIX = 224


def _simulator(instrument, seed, density=None):
    if instrument == "ctao":
        from astro_asid.simulate.ctao import CTAOSkySimulator
        from astro_asid.training.fermi import CTAO_TRAIN_DENSITY
        return CTAOSkySimulator(seed=seed, npix=CTAO_NPIX, random_centres=True,
                                density=CTAO_TRAIN_DENSITY if density is None else density)
    from astro_asid.training.fermi import make_simulator
    return make_simulator(instrument, seed=seed, simulator="fermi")


def _true_flux(table, instrument):
    return np.asarray(table["flux_1000" if instrument == "fermi-lat" else "flux_1tev"], float)


def _aperture_snr(counts, bkg, x, y, radius=2.0):
    """(N - B) / sqrt(B) of the band-summed counts within ``radius`` pixels."""
    c = counts.sum(axis=0)
    b = bkg.sum(axis=0)
    ny, nx = c.shape
    yy, xx = np.mgrid[:ny, :nx]
    out = np.empty(len(x))
    for i in range(len(x)):
        m = (xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= radius ** 2
        bb = b[m].sum()
        out[i] = (c[m].sum() - bb) / np.sqrt(bb) if bb > 0 else np.nan
    return out


def simulate_candidates(n_patches, instrument="fermi-lat", detector=None, seed=0,
                        exposure_range=(0.3, 3.0), background_range=(0.5, 2.0), chunk=200,
                        density=None, inject_snr=None, log=print, on_patch=None):
    """Run a detector on simulated patches and label its candidates.

    Parameters
    ----------
    n_patches : int
        Simulated patches.
    instrument : {"fermi-lat", "ctao", "optical"}
        (optical: see `~astro_asid.characterize.optical_data`)
    detector : str or `~astro_asid.detection.Detector`, optional
        Default: the instrument's deep detector (`INSTRUMENTS`).
    seed : int
        Seeds the simulator and the noise.
    exposure_range, background_range : tuple
        Log-uniform ranges of the exposure and background scales
        (``(1, 1)``: the nominal sky).
    chunk : int
        Patches simulated and detected at a time.
    density : float, optional
        CTAO only: source density relative to the survey's (default: the
        detector's training density, `~astro_asid.training.fermi.CTAO_TRAIN_DENSITY`).
    inject_snr : float, optional
        Also add the true sources with at least this matched-filter significance
        that the detector missed, at their true position plus 1 px of Gaussian
        jitter (``injected`` True, ``score`` NaN): extended sources are rarely
        detected, so this gives the extension head enough examples.
    on_patch : callable, optional
        Called after each patch that has candidates with a dict: ``counts``
        ``(n_bands, ny, nx)`` as the detector saw them, ``background`` (the
        known background, scaled like the counts), ``sources`` (the expected
        counts of all simulated sources, scaled), ``exposure`` (the scale),
        ``truth`` (the patch's true-source table), ``x``, ``y`` (the detector's
        candidates), ``match`` (index into ``truth`` of each, -1 for none) and ``rows`` (their
        indices in the returned arrays, in the detector's order; injected
        candidates follow them). For reference analyses that need the whole
        patch, such as the extension oracle of ``benchmarks/ctao_characterize.py``.

    Returns
    -------
    dict of `~numpy.ndarray`
        ``cutouts`` (uint16 counts, ``(n, n_scales * n_bands, s, s)``),
        ``valid`` (``(n, n_scales, s, s)`` uint8 x 255), ``scalars``
        (sub-pixel offset), ``real``, ``tx``, ``ty``, ``log10_flux``,
        ``cls``, ``extension``, ``snr``, ``snr_obs``, ``score``, ``exposure``,
        ``bscale``, ``patch``, ``injected``.
    """
    if instrument == "optical":
        from astro_asid.characterize.optical_data import simulate_optical_candidates
        return simulate_optical_candidates(n_patches, detector=detector, seed=seed, log=log)
    from astro_asid.plugins.manager import get_registry
    from astro_asid.training.fermi import _significance
    from astro_asid.training.metrics import match_detections

    spec = INSTRUMENTS[instrument]
    if detector is None or isinstance(detector, str):
        detector = get_registry().detectors.get(detector or spec["detector"])()
    sim = _simulator(instrument, seed, density)
    rng = np.random.default_rng(seed + 7919)
    out = {}
    t0 = time.time()
    done = 0
    while done < n_patches:
        n = min(chunk, n_patches - done)
        b = sim.sample_patches(n)
        bg = np.asarray(b.background, np.float32)
        src = np.clip(np.asarray(b.expected, np.float32) - bg, 0, None)
        e = np.exp(rng.uniform(*np.log(exposure_range), n))
        bs = np.exp(rng.uniform(*np.log(background_range), n))
        lam_bg = bg * (e * bs)[:, None, None, None]
        counts = rng.poisson(src * e[:, None, None, None] + lam_bg).astype(np.float32)
        if getattr(detector, "accepts_backgrounds", False):
            # the known background, as a gammapy dataset gives it (asid-ctao's TS scan)
            tabs = detector.detect_arrays(counts, backgrounds=lam_bg,
                                          psf_sigma_deg=b.psf_sigma_deg.to_value("deg"),
                                          pixel_deg=b.cdelt)
        else:
            tabs = detector.detect_arrays(counts)
        psf = _psf_sigma_px(b, instrument)
        for j, cand in enumerate(tabs):
            truth = b.sources[j]
            x = np.asarray(cand["x_centroid"], float)
            y = np.asarray(cand["y_centroid"], float)
            score = np.asarray(cand["score"], float)
            tflux = _true_flux(truth, instrument)
            _, match = match_detections(x, y, score, truth["x"], truth["y"], tflux,
                                        radius=spec["match_radius_px"])
            injected = np.zeros(len(x), bool)
            detected_match = match
            if len(truth):
                cb = np.asarray(truth["counts_band"], float).reshape(len(truth), -1)
                r = np.clip(np.rint(np.asarray(truth["y"], float)).astype(int), 0,
                            counts.shape[2] - 1)
                c = np.clip(np.rint(np.asarray(truth["x"], float)).astype(int), 0,
                            counts.shape[3] - 1)
                ext_px = (np.asarray(truth["sigma_deg"], float) / b.cdelt
                          if "sigma_deg" in truth.colnames else None)
                snr_all = _significance(e[j] * cb, lam_bg[j][:, r, c].T, psf, ext_px)
                if inject_snr is not None:
                    # significant true sources the detector missed, at their true position
                    # plus a pixel of jitter: more (extended) examples for the regression
                    # and extension heads, excluded from the source/FAKE head
                    missed = np.setdiff1d(np.flatnonzero(snr_all >= inject_snr), match)
                    jit = rng.normal(0, 1.0, (2, len(missed)))
                    x = np.concatenate([x, np.asarray(truth["x"], float)[missed] + jit[0]])
                    y = np.concatenate([y, np.asarray(truth["y"], float)[missed] + jit[1]])
                    score = np.concatenate([score, np.full(len(missed), np.nan)])
                    match = np.concatenate([match, missed])
                    injected = np.concatenate([injected, np.ones(len(missed), bool)])
            if len(x) == 0:
                continue
            real = match >= 0
            mj = np.where(real, match, 0)
            rec = {}
            rec["score"] = score
            rec["real"] = real
            rec["injected"] = injected
            rec["scalars"] = np.column_stack([x - np.rint(x), y - np.rint(y)])
            if len(truth):
                tx = np.asarray(truth["x"], float)[mj] - np.rint(x)
                ty = np.asarray(truth["y"], float)[mj] - np.rint(y)
                fl = np.log10(tflux[mj] * e[j])
                snr = snr_all[mj]
                cls = (np.asarray(truth["cls"], int)[mj] if "cls" in truth.colnames
                       else np.zeros(len(x), int))
                ext = (np.asarray(truth["sigma_deg"], float)[mj] if "sigma_deg" in truth.colnames
                       else np.zeros(len(x)))
            else:
                tx = ty = fl = snr = ext = np.full(len(x), np.nan)
                cls = np.zeros(len(x), int)
            nan = np.nan
            rec["tx"] = np.where(real, tx, nan)
            rec["ty"] = np.where(real, ty, nan)
            rec["log10_flux"] = np.where(real, fl, nan)
            rec["snr"] = np.where(real, snr, nan)
            rec["extension"] = np.where(real, ext, nan)
            n_cls = len(spec["class_names"])
            rec["cls"] = np.where(real, cls, n_cls - 1)
            rec["snr_obs"] = _aperture_snr(counts[j], lam_bg[j], x, y)
            rec["exposure"] = np.full(len(x), e[j])
            rec["bscale"] = np.full(len(x), bs[j])
            rec["patch"] = np.full(len(x), done + j)
            cuts, vals = [], []
            for sc in spec["cutouts"]:
                cut, val, _ = extract_cutouts(counts[j], x, y, sc["size"],
                                              binning=sc.get("binning", 1))
                cuts.append(np.clip(np.rint(cut), 0, 65535).astype(np.uint16))
                vals.append(np.rint(val * 255).astype(np.uint8))
            rec["cutouts"] = np.concatenate(cuts, axis=1)
            rec["valid"] = np.stack(vals, axis=1)
            first = sum(len(v) for v in out.get("score", []))
            for k, v in rec.items():
                out.setdefault(k, []).append(np.asarray(v))
            if on_patch is not None:
                nd = len(detected_match)
                on_patch({"counts": counts[j], "background": lam_bg[j],
                          "sources": src[j] * e[j], "exposure": float(e[j]), "truth": truth,
                          "x": x[:nd], "y": y[:nd], "match": np.asarray(detected_match),
                          "rows": first + np.arange(nd)})
        done += n
        if log:
            nc = sum(len(v) for v in out.get("score", []))
            log(f"  simulated {done}/{n_patches} patches, {nc} candidates "
                f"({time.time() - t0:.0f} s)")
    return {k: np.concatenate(v) for k, v in out.items()}


def _psf_sigma_px(batch, instrument):
    if instrument == "fermi-lat":
        from astro_asid.training.toy import FERMI_PSF_SIGMA_PX
        return np.asarray(FERMI_PSF_SIGMA_PX, float)
    sig = batch.psf_sigma_deg
    sig = sig.to_value("deg") if hasattr(sig, "to_value") else np.asarray(sig, float)
    return np.asarray(sig, float) / batch.cdelt

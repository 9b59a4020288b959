"""``asid demo``: simulate an image with known sources, find them, and score the result."""

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter

from astro_asid.catalog import _plain
from astro_asid.core import as_sky_image

__all__ = ["make_demo_image", "match_positions", "run_demo"]


def make_demo_image(seed=1, shape=(128, 128), n_sources=30, pixel_deg=0.1, psf_fwhm_pix=3.0):
    """A simulated gamma-ray-like counts image with known point sources.

    Poisson counts of a smooth background (a Galactic-plane-like latitude
    profile with a longitude gradient and clumpy structure) plus point sources
    with a power-law flux distribution, blurred by a PSF with Gaussian core
    and power-law wings (a King-like profile, as gamma-ray PSFs have).

    Parameters
    ----------
    seed : int
        Random seed.
    shape : tuple
        ``(ny, nx)``.
    n_sources : int
        Number of sources.
    pixel_deg : float
        Pixel size in degrees (GLON-CAR/GLAT-CAR projection).
    psf_fwhm_pix : float
        FWHM of the PSF core in pixels.

    Returns
    -------
    image : `~astro_asid.SkyImage`
        Counts with WCS and the expected background (``image.background``).
    truth : `~astropy.table.QTable`
        ``x``, ``y`` (0-based pixels), ``sky``, ``counts`` (expected source counts).
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.crval = [30.0, 0.0]
    wcs.wcs.cdelt = [-pixel_deg, pixel_deg]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.pixel_shape = (nx, ny)

    yy, xx = np.mgrid[:ny, :nx].astype(float)
    lat = (yy - (ny - 1) / 2) * pixel_deg
    clumps = gaussian_filter(rng.lognormal(0, 1.0, shape), 4)
    background = (2.0 + 8.0 * np.exp(-np.abs(lat) / 1.5) * (1 + 0.5 * xx / nx)) \
        * clumps / clumps.mean()

    x = rng.uniform(4, nx - 5, n_sources)
    y = rng.uniform(4, ny - 5, n_sources)
    counts = 30 * (1 - rng.uniform(0, 1, n_sources)) ** (-1 / 1.2)   # dN/dS ~ S^-2.2
    counts = np.minimum(counts, 3000)
    sigma = psf_fwhm_pix / 2.3548
    # King-like profile: (1 + r^2 / (2 gamma sigma^2))^-gamma, normalised over the image
    gamma = 2.5
    sources = np.zeros(shape)
    for xi, yi, ci in zip(x, y, counts):
        r2 = (xx - xi) ** 2 + (yy - yi) ** 2
        prof = (1 + r2 / (2 * gamma * sigma ** 2)) ** (-gamma)
        sources += ci * prof / prof.sum()
    data = rng.poisson(background + sources).astype(np.float32)

    image = as_sky_image(data, wcs, instrument=None)
    image.background = background[np.newaxis].astype(np.float32)
    image.psf = {"sigma_pix": [sigma]}
    image.unit = u.ct
    truth = QTable({"x": x, "y": y, "counts": counts})
    truth["sky"] = SkyCoord.from_pixel(x, y, wcs, origin=0)
    return image, truth


def match_positions(x_found, y_found, x_true, y_true, radius):
    """Greedy one-to-one matching within ``radius`` pixels, in the order of the found list.

    Returns
    -------
    matched : `~numpy.ndarray` of int
        For each found source, the index of its true source, or -1.
    """
    x_true = np.asarray(x_true, float)
    y_true = np.asarray(y_true, float)
    free = np.ones(len(x_true), bool)
    matched = np.full(len(x_found), -1)
    for i, (xf, yf) in enumerate(zip(x_found, y_found)):
        d = np.hypot(x_true - xf, y_true - yf)
        d[~free] = np.inf
        j = int(np.argmin(d)) if len(d) else -1
        if j >= 0 and d[j] <= radius:
            matched[i] = j
            free[j] = False
    return matched


def _fermi_demo_available(detector):
    """True when the Fermi-LAT simulator and the deep detector's shipped weights are installed."""
    from astro_asid.plugins.manager import get_registry

    if detector not in get_registry().detectors:
        return False
    try:
        from astro_asid.simulate import FermiSkySimulator  # noqa: F401

        from astro_asid.instruments.fermi import _deep_weights_missing

        return not _deep_weights_missing(get_registry().detectors.get(detector))
    except Exception:  # missing data files or weights: fall back to the toy image
        return False


def run_fermi_demo(plot="asid_demo.png", seed=1, detector="asid-unet", lon=120.0, lat=35.0):
    """Simulate a Fermi-LAT data-challenge-like patch, run a deep detector, compare to the truth.

    Returns
    -------
    int
        0 on success.
    """
    from astro_asid.evaluate.challenge import score_catalog
    from astro_asid.find import find_sources
    from astro_asid.visualization import plot_catalog

    from astro_asid.simulate import FermiSkySimulator

    sim = FermiSkySimulator(background="b1", seed=seed)
    batch = sim.sample_patches(1, lon=np.array([lon]), lat=np.array([lat]))
    wcs = batch.wcs(0)
    cat = find_sources(batch.counts[0], wcs, detector=detector, instrument="fermi-lat",
                       energy_edges=sim.energy_edges)
    truth = batch.sources[0]
    inside = ((truth["x"] >= 0) & (truth["x"] < 63.5) & (truth["y"] >= 0)
              & (truth["y"] < 63.5))
    truth = truth[inside]
    print(f"Simulated Fermi-LAT patch (10x10 deg, 5 bands 0.5-200 GeV, ~9.5 yr, background B1) "
          f"centred on (l, b) = ({lon:g}, {lat:g}) deg, seed {seed}: {len(truth)} true sources, "
          f"{int(batch.counts[0].sum())} photons.")
    print(f"Detector {detector!r} found {len(cat)} sources (score >= "
          f"{cat.meta.get('detector_options', {}).get('min_score', '?')}):")
    cols = ["id", "x_centroid", "y_centroid", "sky_centroid", "score"]
    characterized = "characterizer" in cat.meta
    if characterized:
        cols = ["id", "sky_centroid", "sky_centroid_err", "flux", "flux_err", "score",
                "source_prob", "class_label"]
        print(f"Characterised by {cat.meta['characterizer']['name']!r}: flux is "
              f"{cat.meta.get('flux_band')} photon flux; class_prob under equal class priors.")
    cat[cols].pprint(max_lines=-1, max_width=-1)
    preds = {"patch": np.zeros(len(cat), int),
             "lon": cat["sky_centroid"].l.deg, "lat": cat["sky_centroid"].b.deg,
             "score": np.asarray(cat["score"])}
    tr = {"patch": np.zeros(len(truth), int), "lon": np.asarray(truth["lon"]),
          "lat": np.asarray(truth["lat"]), "flux_1000": np.asarray(truth["flux_1000"])}
    from astropy.table import Table

    sc = score_catalog(Table(preds), Table(tr), order="score")
    print(f"\nAgainst the truth (paper's protocol, 0.3 deg): TP={sc.tp} FP={sc.fp} FN={sc.fn}  "
          f"precision={sc.precision:.3f}  recall={sc.recall:.3f}")
    bright = np.asarray(truth["flux_1000"]) > 1e-9
    if bright.any():
        print(f"Recall for sources with flux_1000 > 1e-9 cm-2 s-1: "
              f"{sc.truth_found[bright].mean():.3f} ({bright.sum()} sources); most simulated "
              "sources are far below the detection threshold, as on the real sky.")
    if characterized and sc.tp:
        tp = np.asarray(sc.pred_tp)
        f_true = np.asarray(truth["flux_1000"])[np.asarray(sc.pred_match)[tp]]
        f_cat = _plain(cat["flux"])[tp]
        print(f"Flux 1-100 GeV of the {tp.sum()} true positives: median catalog/true ratio "
              f"{np.nanmedian(f_cat / f_true):.2f}")
    image = as_sky_image(batch.counts[0], wcs)
    if plot:
        plot_catalog(image, cat, truth=SkyCoord(truth["lon"], truth["lat"], unit="deg",
                                                frame="galactic")[bright],
                     filename=plot, title=f"asid demo: {detector} on a simulated Fermi-LAT patch "
                                          f"({sc.tp} TP, {sc.fp} FP; circles: flux_1000 > 1e-9)")
        print(f"Overlay written to {plot}")
    return 0


def run_demo(plot="asid_demo.png", seed=1, detector=None):
    """Simulate, detect, print the catalog and precision/recall, and plot.

    With the deep detectors and the Fermi-LAT simulator installed (the default), the demo
    runs ``asid-unet`` on a simulated Fermi-LAT patch; otherwise (or with a classical
    ``detector``) it runs on a simple simulated counts image.

    Returns
    -------
    int
        0 on success (the command's exit status).
    """
    from astro_asid.find import find_sources
    from astro_asid.visualization import plot_catalog

    deep = detector or "asid-unet"
    if deep in ("asid-unet", "unek", "centroidnet", "cedirnet") and _fermi_demo_available(deep):
        return run_fermi_demo(plot=plot, seed=seed, detector=deep)
    image, truth = make_demo_image(seed=seed)
    detector = detector or "tsmap"
    options = {"background": "estimate"} if detector == "tsmap" else {}
    cat = find_sources(image, detector=detector, **options)
    print(f"Simulated {image.shape[1]}x{image.shape[0]} counts image, {len(truth)} point "
          f"sources (seed {seed}); detector {detector!r} found {len(cat)}.")
    cols = ["id", "x_centroid", "y_centroid", "sky_centroid", "sky_centroid_err", "flux",
            "flux_err", "score"]
    cat[cols].pprint(max_lines=-1, max_width=-1)
    matched = match_positions(np.asarray(cat["x_centroid"]), np.asarray(cat["y_centroid"]),
                              truth["x"], truth["y"], radius=2.0)
    tp = int((matched >= 0).sum())
    precision = tp / max(len(cat), 1)
    recall = tp / len(truth)
    print(f"\nAgainst the truth (match radius 2 px): TP={tp} FP={len(cat) - tp} "
          f"FN={len(truth) - tp}  precision={precision:.3f}  recall={recall:.3f}")
    bright = np.asarray(truth["counts"]) > 100
    if bright.any():
        rec_b = np.isin(np.where(bright)[0], matched).mean()
        print(f"Recall for sources with > 100 expected counts: {rec_b:.3f} ({bright.sum()})")
    if plot:
        plot_catalog(image, cat, truth=truth["sky"], filename=plot,
                     title=f"asid demo: {detector} ({tp}/{len(truth)} found, {len(cat) - tp} FP)")
        print(f"Overlay written to {plot}")
    return 0

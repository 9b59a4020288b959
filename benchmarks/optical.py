"""Benchmark of optical source finders: asid-optical, sep, DAOStarFinder, segmentation.

``asid-optical`` against sep (SExtractor), photutils DAOStarFinder and
photutils image segmentation, on held-out simulated fields and a real image.

Finders (each takes the raw image in ADU, bias and sky included, and does its
own background subtraction; each returns positions and a score whose
threshold traces its precision/recall curve):

* ``asid-optical``: `~astro_asid.detection.optical.ASIDOpticalDetector`
  (``min_score=0``; background from its own
  `~astro_asid.instruments.optical.snr_image`), ranked by its calibrated
  ``score``.
* ``sep``: ``sep.Background`` + ``sep.extract`` with SExtractor's defaults
  (1.5 sigma of the global background rms, minarea 5, the default 3x3
  filter, 32 deblending thresholds, contrast 0.005), ranked by the
  isophotal S/N ``flux / (globalrms * sqrt(npix))``.
* ``dao``: photutils `~photutils.detection.DAOStarFinder` at 2 sigma of the
  local noise (`~astro_asid.instruments.optical.estimate_background`),
  default sharpness/roundness filters, ranked by the amplitude of the
  best-fitting Gaussian in units of the noise (from ``daofind_mag``).
* ``segmentation``: photutils ``detect_sources`` on the image convolved with
  a Gaussian of the seeing FWHM, at 1.5 sigma of the (unconvolved) noise,
  ``n_pixels=5``, then ``deblend_sources`` (32 levels, contrast 0.005),
  ranked by ``segment_flux / segment_flux_err``.

On simulated fields DAO and segmentation are GIVEN the true seeing FWHM of
the field (``meta["fwhm"]``); ``asid-optical`` and sep are not.

Parts (each can be skipped):

1. Recall at fixed precision on held-out
   `~astro_asid.simulate.optical.OpticalSkySimulator` fields (``--n-fields``
   per crowding level sparse / moderate / crowded, ``--size`` pixels square,
   drawn from ``numpy.random.default_rng([10_000 + seed, level])``, streams
   distinct from the integer training seeds). A detection is a true positive
   when it matches any true source (of any S/N) within
   ``OPTICAL_MATCH_RADIUS_PX`` = 1.5 px, greedily by decreasing score
   (`~astro_asid.training.metrics.match_detections`); recall counts only the
   matched sources with matched-filter S/N >= 5
   (`~astro_asid.training.optical.recall_at_precision_counted`). One table:
   R@P0.90 and R@P0.95 per finder and crowding level, and the crowded cut;
   the ratio of ``asid-optical``'s crowded R@P0.95 to the best of sep / dao
   (project target >= 1.15). The simulated frames carry cosmic rays, which
   the classical finders (no artefact rejection) rank among their highest
   S/N detections, so a diagnostic table follows with the false detections
   on cosmic rays and trails ignored (each finder after a perfect artefact
   rejection).
2. Recall versus ``m - m_lim`` (the field's 5-sigma point-source limit), all
   true sources (stars and galaxies) of all crowding levels, at each
   finder's P >= 0.95 cut computed on all levels pooled (and, as a
   diagnostic, at its pooled P >= 0.95 cut with artefacts ignored). Then
   precision versus magnitude at the same cuts: every detection gets a
   measured magnitude from the same aperture photometry for all finders
   (radius 1.5 FWHM on the image minus its photutils background, the field's
   zero point), binned in ``m - m_lim``; precision is the fraction of the
   detections of a bin that match a true source.
3. Artefacts at those two cuts: the fraction of cosmic rays with a false
   detection within 1.5 px of their centroid, the fraction of satellite
   trails with a false detection on their pixels (``artefact_mask == 2``),
   false detections on trails per trail and per 100 px of trail, the fraction
   of the trails' one-FWHM segments holding a false detection, and all false
   detections per field; on the fields of part 1 and on ``--n-trail-fields``
   extra moderate fields that all carry a trail (the part-1 fields have a
   trail in only 30 % of them).
3b. Harder fields (``--n-hard-fields`` per crowding level, held-out seeds
   ``[30_000 + seed, condition, level]``): undersampled PSFs (FWHM 1.0-1.8
   px), a PSF whose FWHM varies by 30 % across the frame (with position-
   dependent ellipticity), and bleed trails from saturated stars. Each
   finder at its two standard pooled P >= 0.95 cuts of part 2 (precision and
   recall there: does the cut still hold?), its R@P0.95 re-optimised on
   these fields, and the fraction of bleed streaks with a false detection.
4. Timing on one ``--timing-size`` square moderate field (4096 by default):
   each finder runs in a fresh process (``multiprocessing`` spawn context)
   that loads the image and imports astro_asid (and so torch); reported: the
   wall time from raw image to catalogue (background included), Mpix/s, the
   resident memory before the run, its peak during the run (``VmHWM``,
   reset through ``/proc/self/clear_refs`` just before; ``ru_maxrss`` where
   that is impossible) and the growth (``asid-optical``'s model load and
   warm-up are timed apart, before). Simulating a 4096x4096 field takes
   about a minute and 2 GB.
5. Real images: astropy's SkyView (DSS, 1 arcsec/px, a photographic plate
   scan, saturated core) 300x300 cutout of the globular cluster M13, and,
   when ``ccdproc`` is installed (``pip install --no-deps ccdproc``, used as a
   data source only), the raw 536x520 CCD frame its tests ship (SAAO 1.0 m,
   150 s, a sparse field with cosmic rays; the pre-scan and overscan columns
   outside its ``TRIMSEC`` are masked by `read_optical`, and so are the eight
   bias-level rows its ``TRIMSEC`` leaves in at the top, found by
   `_flat_edge_strips`; the classical finders get the masked pixels filled with
   the median); or ``--real-image`` with
   ``--real-level``. The seeing is unknown, so the FWHM given to DAO and
   segmentation is estimated (`estimate_fwhm`: Gaussian fits to isolated
   bright sep detections; the same estimator is checked against the truth
   of the simulated fields). ``asid-optical`` is cut at its P >= 0.95 score
   from part 1 for the image's crowding level (M13: crowded, the CCD frame:
   sparse), the classical finders at their P >= 0.95 cut with artefacts
   ignored; ``--real-min-score`` / ``--real-min-snr`` fix them instead
   (defaults without part 1: 0.5 and 5). Reported: detections per finder and
   the agreement matrix, the fraction of the row finder's detections with a
   detection of the column finder within 1.5 px or half the estimated FWHM,
   the larger.

Fluxes are not compared (``asid-optical`` has no flux measurement yet).

Usage::

    python benchmarks/optical.py                       # 20 fields per level, 4k timing
    python benchmarks/optical.py --n-fields 2 --timing-size 512 --weights DIR/asid-optical
    python benchmarks/optical.py --skip-timing --skip-real --finders asid-optical sep
"""

import argparse
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

from astro_asid.instruments.optical import estimate_background
from astro_asid.simulate.optical import OpticalSkySimulator
from astro_asid.training.metrics import match_detections
from astro_asid.training.optical import OPTICAL_MATCH_RADIUS_PX, recall_at_precision_counted

CROWDING = ("sparse", "moderate", "crowded")
FINDERS = ("asid-optical", "sep", "dao", "segmentation")
#: ``asid-optical`` with its trail removal switched off (``--finders`` only; for comparison).
KEEP_TRAILS = "asid-optical-trails-kept"
#: ``asid-optical`` removing trails but keeping every candidate on them (no ``trail_min_snr``).
NO_TRAIL_VETO = "asid-optical-no-trail-veto"
#: The ``asid-optical`` variants: name -> detector options.
ASID_VARIANTS = {"asid-optical": {}, KEEP_TRAILS: {"remove_trails": False},
                 NO_TRAIL_VETO: {"trail_min_snr": None}}
PRECISIONS = (0.90, 0.95)
#: Bins of ``m - m_lim`` (part 2).
MAG_BINS = ((-8, -6), (-6, -4), (-4, -2), (-2, -1), (-1, 0), (0, 1))
#: astropy's test copy of a SkyView cutout of M13.
M13_PATH = os.path.join(os.path.dirname(fits.__file__), "hdu", "compressed", "tests", "data",
                        "m13.fits")


def _ccdproc_frame():
    """The raw CCD frame (SAAO 1.0 m) of ccdproc's test data, or None without ccdproc
    (located, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("ccdproc")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "tests", "data",
                        "a8280271.fits")
    return path if os.path.exists(path) else None


#: Real images of part 5 and the crowding level whose cuts they get.
REAL_IMAGES = {M13_PATH: "crowded", _ccdproc_frame(): "sparse"}
REAL_IMAGES.pop(None, None)  # without ccdproc
SEP_THRESH, SEP_MINAREA, SEP_NTHRESH, SEP_CONT = 1.5, 5, 32, 0.005
DAO_NSIGMA = 2.0
SEG_NSIGMA, SEG_NPIXELS = 1.5, 5

_EMPTY = (np.zeros(0), np.zeros(0), np.zeros(0))


def _fmt(v, spec=".3f"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


# -- finders: raw image (ADU) -> (x, y, score), 0-based pixel centres ------------------
def make_asid_detector(weights=None, **options):
    """``asid-optical`` keeping every candidate (``min_score=0``)."""
    from astro_asid.detection.optical import ASIDOpticalDetector
    return ASIDOpticalDetector(weights=weights, min_score=0.0, **options)


def run_asid(image, fwhm=None, detector=None):
    """``asid-optical`` on a raw 2-D image or a prepared `~astro_asid.SkyImage`."""
    from astro_asid.core import SkyImage

    detector = detector or make_asid_detector()
    if not isinstance(image, SkyImage):
        image = SkyImage(np.asarray(image, np.float32)[np.newaxis])
    tab = detector.detect(image)
    if tab is None or len(tab) == 0:
        return _EMPTY
    return (np.asarray(tab["x_centroid"], float), np.asarray(tab["y_centroid"], float),
            np.asarray(tab["score"], float))


def _sep_extract(data, thresh, **kw):
    import sep

    data = np.ascontiguousarray(data, np.float32)
    bkg = sep.Background(data)
    sub = data - bkg
    # SExtractor's default pixel stack, enlarged only when a crowded image overflows it
    # (sep allocates the whole stack up front); more sub-objects for deblending clusters
    sep.set_sub_object_limit(8192)
    stack = 300_000
    while True:
        sep.set_extract_pixstack(stack)
        try:
            return sep.extract(sub, thresh, err=bkg.globalrms, **kw), bkg.globalrms
        except Exception as exc:  # sep raises plain Exception on buffer overflows
            if "pixel buffer full" not in str(exc) or stack >= data.size:
                warnings.warn(f"sep.extract failed: {exc}")
                return None, bkg.globalrms
            stack = min(10 * stack, data.size)


def run_sep(image, fwhm=None):
    """sep (SExtractor) with its default extraction parameters."""
    obj, rms = _sep_extract(image, SEP_THRESH, minarea=SEP_MINAREA,
                            deblend_nthresh=SEP_NTHRESH, deblend_cont=SEP_CONT)
    if obj is None or len(obj) == 0:
        return _EMPTY
    snr = obj["flux"] / (rms * np.sqrt(np.maximum(obj["npix"], 1)))
    return np.asarray(obj["x"], float), np.asarray(obj["y"], float), np.asarray(snr, float)


def _subtract_background(image):
    image = np.asarray(image, np.float32)
    back, noise = estimate_background(image)
    return image - back, noise


def run_dao(image, fwhm):
    """DAOStarFinder at ``DAO_NSIGMA`` times the local noise."""
    from photutils.detection import DAOStarFinder

    data, noise = _subtract_background(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = DAOStarFinder(threshold=DAO_NSIGMA * noise, fwhm=float(fwhm))(data)
    if tab is None or len(tab) == 0:
        return _EMPTY
    # daofind_mag = -2.5 log10(convolved peak / effective threshold); the threshold is
    # DAO_NSIGMA sigma, so this is the fitted Gaussian amplitude in units of sigma
    snr = DAO_NSIGMA * 10.0 ** (-0.4 * np.asarray(tab["daofind_mag"], float))
    return (np.asarray(tab["x_centroid"], float), np.asarray(tab["y_centroid"], float),
            np.nan_to_num(snr, nan=0.0))


def run_segmentation(image, fwhm):
    """photutils segmentation (Gaussian-smoothed, deblended)."""
    from astropy.convolution import convolve
    from photutils.segmentation import (SourceCatalog, deblend_sources, detect_sources,
                                        make_2dgaussian_kernel)

    data, noise = _subtract_background(image)
    size = 2 * int(np.ceil(1.5 * fwhm)) + 1
    kernel = make_2dgaussian_kernel(float(fwhm), size=max(size, 3))
    conv = convolve(data, kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segm = detect_sources(conv, SEG_NSIGMA * noise, n_pixels=SEG_NPIXELS)
        if segm is None:
            return _EMPTY
        segm = deblend_sources(conv, segm, n_pixels=SEG_NPIXELS, n_levels=32, contrast=0.005,
                               progress_bar=False)
        cat = SourceCatalog(data, segm, convolved_data=conv, error=noise)
        x, y = np.asarray(cat.x_centroid, float), np.asarray(cat.y_centroid, float)
        snr = np.asarray(cat.segment_flux / cat.segment_flux_err, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok], np.nan_to_num(snr[ok], nan=0.0)


def make_runner(name, weights=None):
    """``runner(image, fwhm) -> (x, y, score)`` for a finder name."""
    if name in ASID_VARIANTS:
        return partial(run_asid, detector=make_asid_detector(weights, **ASID_VARIANTS[name]))
    return {"sep": run_sep, "dao": run_dao, "segmentation": run_segmentation}[name]


def estimate_fwhm(image, n_max=50):
    """Seeing FWHM (px): median Gaussian-fit FWHM (`photutils.psf.fit_fwhm`, 7x7
    boxes) of the brightest isolated, unsaturated sep detections at S/N > 20;
    cosmic rays are excluded by ``peak < 0.4 flux`` and fits below 1 px dropped."""
    from photutils.psf import fit_fwhm

    obj, rms = _sep_extract(image, 5.0, minarea=5)
    if obj is None or len(obj) < 3:
        return float("nan")
    xy = np.column_stack([obj["x"], obj["y"]])
    d, _ = cKDTree(xy).query(xy, k=2)
    snr = obj["flux"] / (rms * np.sqrt(obj["npix"]))
    ok = ((obj["flag"] == 0) & (d[:, 1] > 10.0) & (snr > 20.0)
          & (obj["peak"] < 0.5 * obj["peak"].max()) & (obj["peak"] < 0.4 * obj["flux"]))
    if not ok.any():
        return float("nan")
    sel = np.argsort(-np.where(ok, snr, -np.inf))[:min(n_max, int(ok.sum()))]
    data, _ = _subtract_background(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fw = np.asarray(fit_fwhm(data, xypos=xy[sel], fit_shape=7), float)
    fw = fw[np.isfinite(fw) & (fw > 1.0)]
    return float(np.median(fw)) if len(fw) else float("nan")


# -- simulated fields ----------------------------------------------------------------
def simulate(n_fields, size, seed):
    """``{level: [OpticalField, ...]}`` on held-out random streams."""
    fields = {}
    for i, level in enumerate(CROWDING):
        sim = OpticalSkySimulator(shape=(size, size), crowding=level,
                                  seed=np.random.default_rng([10_000 + seed, i]))
        fields[level] = sim.sample_fields(n_fields)
    return fields


def _on_artefact(f, x, y):
    """Detections on a cosmic-ray or trail pixel, or near a cosmic ray's centroid."""
    ny, nx = f.image.shape
    on = f.artefact_mask[np.clip(np.rint(y).astype(int), 0, ny - 1),
                         np.clip(np.rint(x).astype(int), 0, nx - 1)] > 0
    cr = f.cosmic_rays
    if len(cr["x"]) and len(x):
        d, _ = cKDTree(np.column_stack([cr["x"], cr["y"]])).query(np.column_stack([x, y]))
        on |= d <= OPTICAL_MATCH_RADIUS_PX
    return on


def aperture_mags(f, x, y):
    """Magnitudes of detections at ``x, y`` in field ``f``, measured the same way for
    every finder: the sum of image minus background (`estimate_background`, as
    the pipeline's) in a circle of radius 1.5 FWHM, with the field's zero point;
    NaN where that net flux is <= 0."""
    from photutils.aperture import CircularAperture, aperture_photometry

    if not len(x):
        return np.zeros(0)
    if "_net" not in f.meta:  # one background per field, shared by the finders
        f.meta["_net"] = f.image - estimate_background(f.image)[0]
    aper = CircularAperture(np.column_stack([x, y]), r=1.5 * float(f.meta["fwhm"]))
    net = np.asarray(aperture_photometry(f.meta["_net"], aper)["aperture_sum"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(net > 0, f.meta["zeropoint"] - 2.5 * np.log10(net), np.nan)


def run_on_fields(fields, runners):
    """Run every finder on every field and match to the truth.

    Returns ``{finder: {level: dict}}``, the dict holding per detection
    ``score``, ``tp``, ``counted`` (matched a S/N >= 5 source), ``field``,
    ``match``, ``x``, ``y``, ``artefact`` (a false detection on a cosmic-ray or
    trail pixel or within the match radius of a cosmic ray's centroid), ``dm``
    (measured magnitude minus the field's 5-sigma limit, `aperture_mags`), plus
    ``n_true`` (S/N >= 5 sources) and ``seconds``.
    """
    out = {name: {} for name in runners}
    for level, flist in fields.items():
        for name, runner in runners.items():
            acc = {k: [] for k in ("score", "tp", "counted", "field", "match", "x", "y",
                                   "artefact", "dm")}
            n_true, secs = 0, 0.0
            for i, f in enumerate(flist):
                t0 = time.perf_counter()
                x, y, s = runner(f.image, f.meta["fwhm"])
                secs += time.perf_counter() - t0
                t = f.truth
                tp, m = match_detections(x, y, s, t["x"], t["y"], t["flux"],
                                         radius=OPTICAL_MATCH_RADIUS_PX)
                counted = tp & (t["snr"][np.maximum(m, 0)] >= 5.0)
                n_true += int((t["snr"] >= 5.0).sum())
                art = ~tp & _on_artefact(f, x, y)
                dm = aperture_mags(f, x, y) - f.meta["mag_limit_5sigma"]
                for k, v in (("score", s), ("tp", tp), ("counted", counted),
                             ("field", np.full(len(x), i)), ("match", m), ("x", x), ("y", y),
                             ("artefact", art), ("dm", dm)):
                    acc[k].append(np.asarray(v))
            res = {k: np.concatenate(v) for k, v in acc.items()}
            res.update(n_true=n_true, seconds=secs)
            out[name][level] = res
            print(f"# {level:8s} {name:13s} {len(res['score']):6d} detections, "
                  f"{secs / len(flist):.2f} s/field", file=sys.stderr)
    return out


def _pooled(per_level):
    """Concatenate the crowding levels of one finder's results."""
    res = {k: np.concatenate([r[k] for r in per_level.values()])
           for k in ("score", "tp", "counted", "artefact")}
    res["n_true"] = sum(r["n_true"] for r in per_level.values())
    return res


def operating_point(r, precision, drop_artefacts=False):
    """``(recall, score cut)`` at ``precision`` (``(0, inf)`` when out of reach);
    ``drop_artefacts`` ignores false detections on cosmic rays and trails."""
    keep = ~r["artefact"] if drop_artefacts else slice(None)
    return recall_at_precision_counted(r["score"][keep], r["tp"][keep], r["counted"][keep],
                                       r["n_true"], precision)


def operating_points(results, drop_artefacts=False):
    """``{finder: {level: {precision: (recall, cut)}}}``."""
    return {n: {lv: {p: operating_point(r, p, drop_artefacts) for p in PRECISIONS}
                for lv, r in per.items()} for n, per in results.items()}


def _print_recall(ops):
    head = " | ".join(f"{lv} R@P{p:.2f}" for lv in CROWDING for p in PRECISIONS)
    print(f"\n| finder | {head} | crowded cut @P0.95 |")
    print("|---|" + "---|" * (len(CROWDING) * len(PRECISIONS) + 1))
    for n, per in ops.items():
        cells = [f"{per[lv][p][0]:.3f}" if np.isfinite(per[lv][p][1]) else "—"
                 for lv in CROWDING for p in PRECISIONS]
        print(f"| {n} | " + " | ".join(cells) + f" | {_fmt(per['crowded'][0.95][1], '.3g')} |")


def _print_ratio(ops, label=""):
    """asid-optical's crowded R@P0.95 over the best of sep and dao."""
    base = [(ops[n]["crowded"][0.95][0], n) for n in ("sep", "dao") if n in ops]
    if "asid-optical" not in ops or not base:
        return
    best, bname = max(base)
    ours = ops["asid-optical"]["crowded"][0.95][0]
    ratio = ours / best if best > 0 else float("nan")
    print(f"\nCrowded R@P0.95{label}: asid-optical {ours:.3f} / best of sep, dao "
          f"({bname} {best:.3f}) = {_fmt(ratio, '.2f')} (target >= 1.15: "
          f"{'met' if np.isfinite(ratio) and ratio >= 1.15 else 'NOT met'})")


def recall_table(results, n_fields, size):
    """Part 1: recall at fixed precision, as measured and with artefacts ignored.
    Returns the measured ``{finder: {level: {precision: (recall, cut)}}}``."""
    ops = operating_points(results)
    n_true = next(iter(results.values()))
    print(f"\n## Recall of S/N >= 5 sources at fixed precision ({n_fields} held-out "
          f"{size}x{size} fields per level; match radius {OPTICAL_MATCH_RADIUS_PX} px)")
    print("True S/N >= 5 sources: "
          + ", ".join(f"{lv} {n_true[lv]['n_true']}" for lv in CROWDING))
    _print_recall(ops)
    print("\n— : no score cut reaches that precision. DAO and segmentation are given the "
          "true seeing FWHM of each field; asid-optical and sep are not.")
    _print_ratio(ops)
    print("\n### Diagnostic: the same with the false detections on cosmic rays and trails "
          "ignored (each finder after a perfect artefact rejection)")
    clean = operating_points(results, drop_artefacts=True)
    _print_recall(clean)
    _print_ratio(clean, " (artefacts ignored)")
    return ops


def pooled_cuts(results, precision=0.95, drop_artefacts=False):
    """Each finder's ``(recall, score cut)`` at ``precision``, all levels pooled."""
    return {n: operating_point(_pooled(per), precision, drop_artefacts)
            for n, per in results.items()}


def magnitude_table(results, fields, cuts, which="its pooled P >= 0.95 cut"):
    """Part 2: recall of all true sources in bins of ``m - m_lim``."""
    names = list(results)
    dm, found = [], {n: [] for n in names}
    for lv in CROWDING:
        for i, f in enumerate(fields[lv]):
            dm.append(f.truth["mag"] - f.meta["mag_limit_5sigma"])
            for n in names:
                r = results[n][lv]
                keep = (r["field"] == i) & r["tp"] & (r["score"] >= cuts[n][1])
                hit = np.zeros(len(f.truth["x"]), bool)
                hit[r["match"][keep]] = True
                found[n].append(hit)
    dm = np.concatenate(dm)
    found = {n: np.concatenate(v) for n, v in found.items()}
    print("\n## Recall versus magnitude relative to the field's 5-sigma limit "
          f"(all levels, all true sources, each finder at {which})")
    print("\n| m - m_lim | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for lo, hi in MAG_BINS:
        sel = (dm >= lo) & (dm < hi)
        cells = [_fmt(found[n][sel].mean() if sel.any() else np.nan) for n in names]
        print(f"| {lo:+d}..{hi:+d} | {int(sel.sum())} | " + " | ".join(cells) + " |")
    print("| score cut | | " + " | ".join(_fmt(cuts[n][1], ".3g") for n in names) + " |")


def precision_magnitude_table(results, cuts, which="its pooled P >= 0.95 cut"):
    """Part 2b: precision in bins of the detections' measured ``m - m_lim``."""
    names = list(results)
    print("\n## Precision versus measured magnitude relative to the field's 5-sigma limit "
          f"(all levels, each finder at {which}; aperture photometry, see the docstring)")
    print("\n| measured m - m_lim | " + " | ".join(f"{n} (n)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    pooled = {n: {k: np.concatenate([r[k] for r in per.values()])
                  for k in ("score", "tp", "dm")} for n, per in results.items()}
    bins = list(MAG_BINS) + [(MAG_BINS[-1][1], 3)]
    for lo, hi in bins:
        cells = []
        for n in names:
            r = pooled[n]
            sel = (r["score"] >= cuts[n][1]) & (r["dm"] >= lo) & (r["dm"] < hi)
            cells.append(f"{_fmt(r['tp'][sel].mean() if sel.any() else np.nan)} "
                         f"({int(sel.sum())})")
        print(f"| {lo:+d}..{hi:+d} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        r = pooled[n]
        sel = (r["score"] >= cuts[n][1]) & ~np.isfinite(r["dm"])
        cells.append(f"{_fmt(r['tp'][sel].mean() if sel.any() else np.nan)} ({int(sel.sum())})")
    print("| no positive flux | " + " | ".join(cells) + " |")


def _trail_segments(f, x, y):
    """Length (px) of the field's trail inside the image, its number of one-FWHM
    segments, and which segments hold one of the detections ``x, y``."""
    tr = f.trails[0]
    ny, nx = f.image.shape
    p0 = np.array([tr["x0"], tr["y0"]])
    u = np.array([tr["x1"], tr["y1"]]) - p0
    span = np.hypot(*u)
    u = u / span
    t = np.arange(0.0, span, 0.5)
    px, py = p0[0] + t * u[0], p0[1] + t * u[1]
    inside = (px >= -0.5) & (px < nx - 0.5) & (py >= -0.5) & (py < ny - 0.5)
    if not inside.any():
        return 0.0, 0, set()
    t0, t1 = t[inside].min(), t[inside].max()
    step = max(f.meta["fwhm"], 1.0)
    n_seg = int(np.ceil((t1 - t0 + 0.5) / step))
    proj = (np.asarray(x) - p0[0]) * u[0] + (np.asarray(y) - p0[1]) * u[1]
    hit = set(np.clip(((proj - t0) // step).astype(int), 0, n_seg - 1).tolist())
    return t1 - t0 + 0.5, n_seg, hit


def artefact_table(results, fields, cut_sets, title="all levels"):
    """Part 3: cosmic rays and satellite trails reported as sources, at each
    ``{label: cuts}`` of ``cut_sets``.

    Trails are measured three ways: the fraction of trails with at least one
    false detection on their pixels, false detections per trail (and per
    100 px of trail), and the fraction of the trails' one-FWHM segments that
    hold a false detection (the trail counterpart of "the fraction of cosmic
    rays reported"). Two more columns put these in context: the false
    detections per trail expected on the trail's pixels from the field's
    false-detection density alone (what a finder that ignores the trail
    entirely would still have there), and the recall of the S/N >= 5 sources
    that lie on trail pixels."""
    levels = list(fields)
    n_cr = sum(len(f.cosmic_rays["x"]) for lv in levels for f in fields[lv])
    n_tr = sum(len(f.trails) for lv in levels for f in fields[lv])
    n_f = sum(len(fields[lv]) for lv in levels)
    print(f"\n## Artefacts reported as sources ({title}: {n_cr} cosmic rays, {n_tr} "
          f"satellite trails in {n_f} fields)")
    print("\n| finder | cut at | score cut | cosmic rays reported | trails with a false "
          "detection | false detections per trail | per 100 px of trail | trail segments "
          "(1 FWHM) with a false detection | expected per trail from the field density | "
          "recall of S/N >= 5 sources on trails | false detections per field |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in results:
        for label, cuts in cut_sets.items():
            cr_hit = tr_hit = tr_false = n_false = seg_hit = n_seg = 0
            length = expected = 0.0
            rec_hit = rec_n = 0
            for lv in levels:
                r = results[n][lv]
                fp = ~r["tp"] & (r["score"] >= cuts[n][1])
                n_false += int(fp.sum())
                for i, f in enumerate(fields[lv]):
                    sel = fp & (r["field"] == i)
                    x, y = r["x"][sel], r["y"][sel]
                    cr = f.cosmic_rays
                    if len(cr["x"]) and len(x):
                        d, _ = cKDTree(np.column_stack([x, y])).query(
                            np.column_stack([cr["x"], cr["y"]]))
                        cr_hit += int((d <= OPTICAL_MATCH_RADIUS_PX).sum())
                    if f.trails:
                        ny, nx = f.image.shape
                        ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
                        iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
                        on = f.artefact_mask[iy, ix] == 2
                        tr_false += int(on.sum())
                        tr_hit += int(on.any())  # at most one trail per simulated field
                        band = f.artefact_mask == 2
                        expected += len(x) * band.mean()
                        t = f.truth
                        ti = np.clip(np.rint(t["y"]).astype(int), 0, ny - 1)
                        tj = np.clip(np.rint(t["x"]).astype(int), 0, nx - 1)
                        under = np.flatnonzero(band[ti, tj] & (t["snr"] >= 5.0))
                        got = r["match"][r["tp"] & (r["score"] >= cuts[n][1])
                                         & (r["field"] == i)]
                        rec_n += len(under)
                        rec_hit += int(np.isin(under, got).sum())
                        ln, ns, hit = _trail_segments(f, x[on], y[on])
                        length += ln
                        n_seg += ns
                        seg_hit += len(hit)
            print(f"| {n} | {label} | {_fmt(cuts[n][1], '.3g')} | "
                  f"{_fmt(cr_hit / n_cr if n_cr else np.nan)} | "
                  f"{_fmt(tr_hit / n_tr if n_tr else np.nan)} | "
                  f"{_fmt(tr_false / n_tr if n_tr else np.nan, '.2f')} | "
                  f"{_fmt(100 * tr_false / length if length else np.nan, '.2f')} | "
                  f"{_fmt(seg_hit / n_seg if n_seg else np.nan)} | "
                  f"{_fmt(expected / n_tr if n_tr else np.nan, '.2f')} | "
                  f"{_fmt(rec_hit / rec_n if rec_n else np.nan)} ({rec_n}) | "
                  f"{n_false / n_f:.2f} |")


#: The harder fields of part 3b: {condition: simulator options}.
HARD_CONDITIONS = {
    "undersampled (FWHM 1.0-1.8 px)": {"fwhm_range": (1.0, 1.8)},
    "PSF varying 30 % across the frame": {"psf_variation": 0.3},
    "bleed trails": {"bleed": True},
}


def simulate_hard_fields(n_fields, size, seed):
    """``{condition: {level: [OpticalField, ...]}}`` of `HARD_CONDITIONS`, held out."""
    out = {}
    for j, (name, kw) in enumerate(HARD_CONDITIONS.items()):
        out[name] = {}
        for i, level in enumerate(CROWDING):
            sim = OpticalSkySimulator(shape=(size, size), crowding=level,
                                      seed=np.random.default_rng([30_000 + seed, j, i]), **kw)
            out[name][level] = sim.sample_fields(n_fields)
    return out


def _bleed_hits(f, x, y, radius=1.5):
    """Which of the field's bleed streaks have one of the detections ``x, y`` within
    ``radius`` px of their column and rows."""
    b = f.bleeds
    hit = np.zeros(len(b["x"]), bool)
    for k in range(len(b["x"])):
        near = (np.abs(x - b["x"][k]) <= radius) & (y >= b["y0"][k] - radius) \
            & (y <= b["y1"][k] + radius)
        hit[k] = near.any()
    return hit


def hard_fields_table(runners, cut_sets, n_fields, size, seed):
    """Part 3b: the finders on fields the main benchmark does not have, at the score
    cuts of the standard fields (``{label: cuts}``: does the calibrated cut still
    hold?) and at their own P >= 0.95 cut."""
    hard = simulate_hard_fields(n_fields, size, seed)
    print(f"\n## Harder fields ({n_fields} fields per crowding level and condition, "
          f"{size}x{size}; all levels pooled)")
    print("\nPrecision and recall at the pooled P >= 0.95 cuts of the standard fields "
          "(part 2: as measured, and with artefacts ignored), and R@P0.95 re-optimised on "
          "these fields. Bleeds: streaks (one per column and run) with a false detection "
          "within 1.5 px, at each cut.")
    print("\n| condition | finder | cut at | precision | recall | R@P0.95 (own cut) | "
          "bleed streaks with a false detection |")
    print("|---|---|---|---|---|---|---|")
    for cond, fields in hard.items():
        results = run_on_fields(fields, runners)
        n_streak = sum(len(f.bleeds["x"]) for lv in CROWDING for f in fields[lv])
        for n in runners:
            r = _pooled(results[n])
            own = operating_point(r, 0.95)[0]
            for label, cuts in cut_sets.items():
                keep = r["score"] >= cuts[n][1]
                prec = r["tp"][keep].mean() if keep.any() else np.nan
                rec = (r["counted"] & keep).sum() / max(r["n_true"], 1)
                bl = ""
                if n_streak:
                    hit = 0
                    for lv in CROWDING:
                        rr = results[n][lv]
                        fp = ~rr["tp"] & (rr["score"] >= cuts[n][1])
                        for i, f in enumerate(fields[lv]):
                            sel = fp & (rr["field"] == i)
                            hit += int(_bleed_hits(f, rr["x"][sel], rr["y"][sel]).sum())
                    bl = f"{hit / n_streak:.3f} of {n_streak}"
                print(f"| {cond} | {n} | {label} | {_fmt(prec)} | {_fmt(rec)} | {_fmt(own)} "
                      f"| {bl} |")


def simulate_trail_fields(n_fields, size, seed):
    """``{"moderate + trail": [...]}``: held-out moderate fields that all have a
    satellite trail (and the simulator's usual cosmic rays)."""
    sim = OpticalSkySimulator(shape=(size, size), crowding="moderate", trail_probability=1.0,
                              seed=np.random.default_rng([30_000 + seed]))
    return {"moderate + trail": sim.sample_fields(n_fields)}


# -- timing ----------------------------------------------------------------------------
def _rss_mib(field="VmRSS"):
    """Resident memory (MiB) of this process from ``/proc/self/status`` (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _timing_child(name, npy, fwhm, weights, threads):
    """Run one finder in this (fresh) process; wall time and peak memory."""
    import resource

    if threads:
        import torch
        torch.set_num_threads(int(threads))
    image = np.load(npy)
    t0 = time.perf_counter()
    runner = make_runner(name, weights)
    if name in ASID_VARIANTS:  # load the model and warm up outside the timed run
        runner(np.random.default_rng(0).normal(100.0, 10.0, (64, 64)).astype(np.float32))
    t_load = time.perf_counter() - t0
    try:  # reset the peak-RSS mark (Linux >= 4.0) so the peak is the run's own
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    x, _, _ = runner(image, fwhm)
    wall = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: after exec the latter also counts the parent's RSS at fork
    peak = _rss_mib("VmHWM") if reset else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"n": len(x), "wall": wall, "load": t_load, "rss0": rss0, "peak": peak,
            "reset": reset}


def timing_table(names, size, seed, weights, threads):
    """Part 4: one ``size`` x ``size`` moderate field, each finder in a fresh process."""
    import multiprocessing

    t0 = time.perf_counter()
    f = OpticalSkySimulator(shape=(size, size), crowding="moderate",
                            seed=np.random.default_rng([20_000 + seed])).sample()
    t_sim = time.perf_counter() - t0
    fwhm, n_src = f.meta["fwhm"], len(f.truth["x"])
    ctx = multiprocessing.get_context("spawn")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "image.npy")
        np.save(npy, f.image)
        del f
        for n in names:
            with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                try:
                    rows[n] = ex.submit(_timing_child, n, npy, fwhm, weights, threads).result()
                except Exception as exc:
                    rows[n] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"# timing {n}: {rows[n]}", file=sys.stderr)
    mpix = size * size / 1e6
    print(f"\n## Timing: one {size}x{size} moderate field ({n_src} sources, FWHM {fwhm:.2f} px; "
          f"simulated in {t_sim:.1f} s), each finder in a fresh process, "
          f"{os.cpu_count()} CPUs, torch threads {threads or 'default'}")
    print("\n| finder | detections | wall (s) | Mpix/s | RSS before (MiB) | peak RSS (MiB) | "
          "growth (MiB) | model load + warm-up (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        if "error" in r:
            print(f"| {n} | failed: {r['error']} | | | | | | |")
            continue
        load = f"{r['load']:.1f}" if n in ASID_VARIANTS else ""
        print(f"| {n} | {r['n']} | {r['wall']:.2f} | {mpix / r['wall']:.2f} | {r['rss0']:.0f} | "
              f"{r['peak']:.0f} | {r['peak'] - r['rss0']:.0f} | {load} |")
    reset = all(r.get("reset", True) for r in rows.values())
    print("\nWall time: raw image to catalogue, background estimation included. RSS before: "
          "the process with the image loaded and astro_asid (hence torch) imported; peak: "
          + ("the highest RSS during the run (VmHWM, reset just before it)" if reset else
             "ru_maxrss since the process started (the mark could not be reset)")
          + "; growth = peak - before.")


# -- real image ------------------------------------------------------------------------
def _flat_edge_strips(data, mask=None, nsigma=3.0):
    """Rows and columns at the image's edges that sit far off the sky level (bias-level
    overscan that a raw frame's ``TRIMSEC`` leaves in, as in ccdproc's SAAO frame):
    contiguous from an edge, each with a median more than ``nsigma`` pixel noise (robust
    standard deviation of all pixels) away from the median of the row (column) medians."""
    good = np.where(mask, np.nan, data) if mask is not None else data
    pix = good[np.isfinite(good)]
    noise = 1.4826 * np.median(np.abs(pix - np.median(pix))) + 1e-6
    out = np.zeros(data.shape, bool)
    for axis in (0, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(good, axis=1 - axis)  # one value per row (axis 0) or column
        ok = np.isfinite(med)
        if ok.sum() < 10:
            continue
        centre = np.median(med[ok])
        off = ~ok | (np.abs(med - centre) > nsigma * noise)
        for idx in (range(len(med)), range(len(med) - 1, -1, -1)):
            for i in idx:
                if not off[i]:
                    break
                if ok[i]:
                    if axis == 0:
                        out[i, :] = True
                    else:
                        out[:, i] = True
    return out


def real_table(path, runners, cuts, fwhm_check=None):
    """Part 5: every finder on a real image, counts and pairwise agreement."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    from astro_asid.instruments.optical import prepare_optical, read_optical

    data, header, mask = read_optical(path)
    strips = _flat_edge_strips(data, mask)
    if strips.any():
        mask = strips if mask is None else (mask | strips)
    if mask is not None:
        # the classical finders take plain arrays: masked pixels (overscan, bad
        # pixels) become the median of the others
        data = np.where(mask, np.float32(np.median(data[~mask])), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WCS(header)
    scale = (float(np.mean(proj_plane_pixel_scales(w.celestial))) * 3600.0
             if w.has_celestial else float("nan"))
    fwhm = estimate_fwhm(data)
    print(f"\n## Real image: {os.path.basename(path)} ({data.shape[1]}x{data.shape[0]}, "
          f"{_fmt(scale, '.2f')} arcsec/px, {int(mask.sum()) if mask is not None else 0} "
          f"pixels masked ({int(strips.sum())} of them in flat edge strips), seeing "
          f"unknown: estimated FWHM {fwhm:.2f} px by Gaussian fits to isolated sep "
          f"detections, given to dao and segmentation)")
    if fwhm_check is not None:
        print(f"The FWHM estimator on the simulated fields: estimated/true median "
              f"{fwhm_check[0]:.2f}, 16-84 % {fwhm_check[1]:.2f}..{fwhm_check[2]:.2f}")
    cat = {}
    for n, runner in runners.items():
        if n == "asid-optical":
            x, y, s = runner(prepare_optical(path, mask=mask, require_wcs=False))
        else:
            x, y, s = runner(data, fwhm)
        keep = s >= cuts[n][0]
        cat[n] = np.column_stack([x[keep], y[keep]])
    names = list(cat)
    print("\n| finder | cut | cut from | detections |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {n} | {_fmt(cuts[n][0], '.3g')} | {cuts[n][1]} | {len(cat[n])} |")
    # broad stars are located less precisely: half the FWHM when that is more than 1.5 px
    radius = max(OPTICAL_MATCH_RADIUS_PX, 0.5 * fwhm) if np.isfinite(fwhm) \
        else OPTICAL_MATCH_RADIUS_PX
    print(f"\nAgreement: fraction of the row finder's detections with a detection of the "
          f"column finder within {radius:.2f} px (1.5 px or half the FWHM, the larger)")
    print("\n| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for a in names:
        cells = []
        for b in names:
            if len(cat[a]) == 0:
                cells.append("n/a")
            elif len(cat[b]) == 0:
                cells.append("0.000")
            else:
                d, _ = cKDTree(cat[b]).query(cat[a])
                cells.append(f"{(d <= radius).mean():.3f}")
        print(f"| {a} | " + " | ".join(cells) + " |")


def fwhm_check(fields):
    """Estimated/true FWHM on simulated fields: median and 16/84 percentiles."""
    ratio = [estimate_fwhm(f.image) / f.meta["fwhm"] for lv in CROWDING for f in fields[lv]]
    ratio = np.asarray(ratio)[np.isfinite(ratio)]
    return tuple(np.percentile(ratio, [50, 16, 84])) if len(ratio) else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-fields", type=int, default=20, help="fields per crowding level")
    parser.add_argument("--size", type=int, default=256, help="side of a simulated field (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finders", nargs="+", choices=FINDERS + (KEEP_TRAILS, NO_TRAIL_VETO),
                        default=list(FINDERS))
    parser.add_argument("--weights", help="asid-optical weights (default: the shipped model)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--timing-size", type=int, default=4096,
                        help="side of the timing field (px)")
    parser.add_argument("--real-image", default=None,
                        help="FITS image for the real-data part (default: astropy's M13 and, "
                             "with ccdproc installed, its raw SAAO CCD frame)")
    parser.add_argument("--real-level", default="crowded", choices=CROWDING,
                        help="crowding level whose cuts --real-image gets (default crowded)")
    parser.add_argument("--real-min-score", type=float,
                        help="asid-optical score cut on the real image (default: its "
                             "P>=0.95 cut from the simulated fields at the image's crowding "
                             "level, else 0.5)")
    parser.add_argument("--real-min-snr", type=float,
                        help="S/N cut of the classical finders on the real image (default: "
                             "each one's P>=0.95 cut with artefacts ignored at the image's "
                             "crowding level, else 5)")
    parser.add_argument("--n-trail-fields", type=int, default=24,
                        help="extra moderate fields, each with a satellite trail, for part 3")
    parser.add_argument("--skip-recall", action="store_true", help="skip part 1's table")
    parser.add_argument("--skip-magnitude", action="store_true", help="skip part 2")
    parser.add_argument("--skip-artefacts", action="store_true", help="skip part 3")
    parser.add_argument("--skip-timing", action="store_true", help="skip part 4")
    parser.add_argument("--skip-real", action="store_true", help="skip part 5")
    parser.add_argument("--skip-hard", action="store_true", help="skip part 3b")
    parser.add_argument("--n-hard-fields", type=int, default=6,
                        help="fields per crowding level and condition in part 3b")
    args = parser.parse_args(argv)

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    runners = {n: make_runner(n, args.weights) for n in args.finders}
    print(f"# finders: {', '.join(args.finders)}; asid-optical weights: "
          f"{args.weights or 'shipped'}", file=sys.stderr)

    need_sim = not (args.skip_recall and args.skip_magnitude and args.skip_artefacts
                    and args.skip_hard) \
        or (not args.skip_real and (args.real_min_score is None or args.real_min_snr is None))
    ops = ops_clean = fields = check = None
    if need_sim:
        t0 = time.perf_counter()
        fields = simulate(args.n_fields, args.size, args.seed)
        print(f"# simulated {3 * args.n_fields} fields in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        results = run_on_fields(fields, runners)
        ops = (operating_points(results) if args.skip_recall
               else recall_table(results, args.n_fields, args.size))
        ops_clean = operating_points(results, drop_artefacts=True)
        if not (args.skip_magnitude and args.skip_artefacts):
            cut_sets = {"P>=0.95": pooled_cuts(results),
                        "P>=0.95 artefacts ignored": pooled_cuts(results, drop_artefacts=True)}
            if not args.skip_magnitude:
                magnitude_table(results, fields, cut_sets["P>=0.95"])
                precision_magnitude_table(results, cut_sets["P>=0.95"])
                precision_magnitude_table(results, cut_sets["P>=0.95 artefacts ignored"],
                                          "its pooled P >= 0.95 cut with artefacts ignored "
                                          "(diagnostic)")
                magnitude_table(results, fields, cut_sets["P>=0.95 artefacts ignored"],
                                "its pooled P >= 0.95 cut with artefacts ignored (diagnostic)")
            if not args.skip_artefacts:
                artefact_table(results, fields, cut_sets)
                if args.n_trail_fields:
                    tf = simulate_trail_fields(args.n_trail_fields, args.size, args.seed)
                    artefact_table(run_on_fields(tf, runners), tf, cut_sets,
                                   title="extra moderate fields, each with a trail")
        if not args.skip_hard:
            hard_fields_table(runners, {"P>=0.95": pooled_cuts(results),
                                        "P>=0.95 artefacts ignored":
                                            pooled_cuts(results, drop_artefacts=True)},
                              args.n_hard_fields, args.size, args.seed)
        if not args.skip_real:
            check = fwhm_check(fields)

    if not args.skip_timing:
        timing_table(args.finders, args.timing_size, args.seed, args.weights, args.threads)

    if not args.skip_real:
        images = ({args.real_image: args.real_level} if args.real_image else REAL_IMAGES)
        for path, level in images.items():
            real_cuts = {}
            for n in args.finders:
                asid = n == "asid-optical"
                fixed = args.real_min_score if asid else args.real_min_snr
                sim = (ops if asid else ops_clean)
                sim_cut = sim[n][level][0.95][1] if sim is not None else float("inf")
                if fixed is not None:
                    real_cuts[n] = (fixed, "option")
                elif np.isfinite(sim_cut):
                    real_cuts[n] = (sim_cut, f"{level} sim P>=0.95"
                                    + ("" if asid else ", artefacts ignored"))
                else:
                    real_cuts[n] = (0.5 if asid else 5.0, "default")
            real_table(path, runners, real_cuts, check)


if __name__ == "__main__":
    main()

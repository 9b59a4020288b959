"""The TS scan for wide sources (astro_asid.detection.extended) and its use in asid-ctao."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable
from astropy.wcs import WCS

from astro_asid.detection.extended import check_kernels, drop_found, extended_candidates
from astro_asid.utils.exceptions import ASIDInputWarning, WeightsError

PIX = 0.02                                     # deg, the CTAO survey's pixels
PSF = np.array([0.062, 0.030, 0.020])          # deg, the simulator's PSF sigma per band
BACK = np.array([3.0, 0.8, 0.05])              # background counts per pixel and band
SHARE = np.array([0.5, 0.4, 0.1])              # a source's counts per band


def _map(seed, total, sigma_deg=0.3, n=256, x0=128.3, y0=127.6):
    """Counts and background of a flat field with one Gaussian source."""
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    width = np.hypot(sigma_deg, PSF) / PIX
    prof = np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / width[:, None, None] ** 2)
    prof /= prof.sum(axis=(1, 2), keepdims=True)
    back = np.broadcast_to(BACK[:, None, None], (3, n, n)).astype(float)
    counts = np.random.default_rng(seed).poisson(back + total * SHARE[:, None, None] * prof)
    return counts.astype(float), back


def test_extended_candidates_find_a_wide_source():
    counts, back = _map(1, total=1500.0)
    cand = extended_candidates(counts, back, PSF, PIX, weights=SHARE)
    assert len(cand) >= 1
    best = cand[0]
    assert best["ts"] > 100
    assert np.hypot(best["x_centroid"] - 128.3, best["y_centroid"] - 127.6) * PIX < 0.08
    assert best["kernel_sigma_deg"] in (0.2, 0.35)          # the widths nearest 0.3 deg
    assert 0 < best["x_err"] < 10 and 0 < best["y_err"] < 10
    # one source, one candidate: the other widths' peaks are suppressed
    near = np.hypot(cand["x_centroid"] - 128.3, cand["y_centroid"] - 127.6) * PIX < 0.4
    assert near.sum() == 1
    # fitted counts: the total within a few sigma
    assert abs(best["flux"] - 1500.0) < 4 * best["flux_err"] + 300


def test_extended_candidates_on_background_alone():
    for seed in range(3):
        counts, back = _map(seed, total=0.0)
        cand = extended_candidates(counts, back, PSF, PIX, weights=SHARE, ts_min=25.0)
        assert len(cand) == 0
    empty = extended_candidates(np.zeros((3, 64, 64)), np.ones((3, 64, 64)), PSF, PIX)
    assert len(empty) == 0 and "kernel_sigma_deg" in empty.colnames


def test_extended_candidates_masks():
    counts, back = _map(2, total=1500.0)
    mask = np.zeros(counts.shape[1:], bool)
    mask[96:160, 96:160] = True                 # the source's core is masked
    counts[:, mask] = np.nan                    # and NaN there: the mask must cover it
    cand = extended_candidates(counts, back, PSF, PIX, mask=mask, weights=SHARE)
    for row in cand:
        assert not mask[int(np.clip(round(row["y_centroid"]), 0, 255)),
                        int(np.clip(round(row["x_centroid"]), 0, 255))]
    nan_only = extended_candidates(counts, back, PSF, PIX, weights=SHARE)   # mask from NaN
    assert np.all(np.isfinite(nan_only["ts"]))


@pytest.mark.parametrize("bad", [((0.0, 4),), ((0.1, 0),), (), ("a",), ((0.1,),)])
def test_check_kernels_rejects(bad):
    with pytest.raises(ValueError, match="kernels"):
        check_kernels(bad)


def test_drop_found():
    cand = QTable({"x_centroid": [10.0, 100.0, 200.0], "y_centroid": [10.0, 100.0, 200.0],
                   "kernel_sigma_deg": [0.1, 0.5, 0.1]})
    dets = QTable({"x_centroid": [12.0, 120.0, 200.0], "y_centroid": [10.0, 100.0, 200.0],
                   "score": [0.9, 0.9, 0.2]})
    # 2 px = 0.04 deg < 0.2: dropped; 20 px = 0.4 deg < 0.6: dropped; the third's
    # neighbour is too weak to explain it
    kept = drop_found(cand, dets, PIX, min_score=0.5)
    assert kept["x_centroid"].tolist() == [200.0]
    assert len(drop_found(cand, dets[:0], PIX)) == 3


# -- inside asid-ctao ----------------------------------------------------------------------------
def _ctao_weights_or_skip():
    from astro_asid.instruments.fermi import _deep_weights_missing
    from astro_asid.plugins.manager import get_registry

    reg = get_registry().detectors
    if "asid-ctao" not in reg or _deep_weights_missing(reg.get("asid-ctao")):
        pytest.skip("asid-ctao weights not installed")


def _image(counts, back=None, psf=True):
    from astro_asid.core import as_sky_image

    n = counts.shape[-1]
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.cdelt = [-PIX, PIX]
    wcs.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    wcs.wcs.crval = [0.0, 0.0]
    img = as_sky_image(counts.astype(np.float32), wcs,
                       energy_edges=[0.07, 0.788, 8.88, 100] * u.TeV, instrument="ctao")
    img.unit = u.ct
    img.background = back
    if psf:
        img.psf = {"sigma_pix": (PSF / PIX).tolist()}
    return img


def _best_near(tab, radius_deg=0.3):
    near = np.hypot(tab["x_centroid"] - 128.3, tab["y_centroid"] - 127.6) * PIX < radius_deg
    return tab[near][np.argmax(tab["score"][near])] if near.any() else None


def test_ctao_detector_adds_ts_scan_sources():
    """A faint 0.4 deg source that the network misses at most binnings: the scan finds it."""
    _ctao_weights_or_skip()
    from astro_asid.detection.deep import ASIDCTAODetector

    det = ASIDCTAODetector()
    off = ASIDCTAODetector(extended_search=False)
    assert det.extended_settings() is not None             # the shipped card calibrates it
    by_scan, by_network = 0, 0
    for seed in range(3):
        counts, back = _map(seed, total=700.0, sigma_deg=0.4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tab = det.detect(_image(counts, back))
            alone = off.detect(_image(counts, back))
        assert {"found_by", "kernel_sigma_deg"} <= set(tab.colnames)
        assert set(tab["found_by"]) <= {"unet", "ts-scan"}
        assert np.all(np.diff(np.asarray(tab["score"])) <= 0)
        scan = tab[tab["found_by"] == "ts-scan"]
        assert np.all(np.asarray(scan["score"]) >= det.extended_min_score)
        assert np.all(np.isnan(tab["kernel_sigma_deg"][tab["found_by"] == "unet"]))
        assert "TS-scan" in tab.meta["extended_search"]
        # the scan off: the multi-scale network alone, without the new columns
        assert "found_by" not in alone.colnames and "extended_search" not in alone.meta
        best = _best_near(tab)
        assert best is not None and best["score"] >= 0.5
        by_scan += best["found_by"] == "ts-scan"
        best_alone = _best_near(alone)
        by_network += best_alone is not None and best_alone["score"] >= 0.5
    assert by_scan >= 1 and by_network <= 1


def test_ctao_detector_ts_scan_needs_a_background():
    _ctao_weights_or_skip()
    from astro_asid.detection.deep import ASIDCTAODetector

    counts, _ = _map(0, total=700.0, n=128, x0=64, y0=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = ASIDCTAODetector().detect(_image(counts))          # default: skipped quietly
    assert "no background" in tab.meta["extended_search"]
    with pytest.warns(ASIDInputWarning, match="needs image.background"):
        ASIDCTAODetector(extended_search=True).detect(_image(counts))
    with pytest.raises(ValueError, match="background"):
        ASIDCTAODetector().detect(_image(counts, np.ones((2, 128, 128))))
    from astro_asid import find_sources                     # the note reaches the catalog
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = find_sources(_image(counts), detector="asid-ctao")
    assert "no background" in cat.meta["extended_search"] and cat.meta["scales"] == [1, 2, 4]


def test_ctao_detector_ts_scan_options(tmp_path):
    _ctao_weights_or_skip()
    import json
    import shutil

    from astro_asid.detection.deep import ASIDCTAODetector
    from astro_asid.nn.io import read_card, shipped_model_path, weights_path

    with pytest.raises(ValueError, match="extended_search"):
        ASIDCTAODetector(extended_search="yes")
    with pytest.raises(ValueError, match="extended_min_score"):
        ASIDCTAODetector(extended_min_score=2)
    src = shipped_model_path("asid-ctao")
    card = read_card(src)
    shutil.copy(weights_path(src, card), tmp_path / card["weights_file"])
    del card["scale_calibration"]["asid-ctao"]["extended_search"]
    (tmp_path / "asid-ctao.json").write_text(json.dumps(card))
    path = tmp_path / "asid-ctao.json"
    assert ASIDCTAODetector(weights=path).extended_settings() is None
    with pytest.raises(WeightsError, match="extended-source TS scan"):
        ASIDCTAODetector(weights=path, extended_search=True).extended_settings()


def test_ctao_detect_arrays_with_backgrounds_matches_detect():
    """The batch path (used to build the characteriser's training sets) runs the same scan."""
    _ctao_weights_or_skip()
    from astro_asid.detection.deep import ASIDCTAODetector

    det = ASIDCTAODetector()
    counts, back = _map(1, total=700.0, sigma_deg=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = det.detect(_image(counts, back))
        batch = det.detect_arrays(counts[None], backgrounds=back[None], psf_sigma_deg=PSF,
                                  pixel_deg=PIX)[0]
        plain = det.detect_arrays(counts[None])[0]
    assert "found_by" not in plain.colnames                  # no backgrounds: no scan
    np.testing.assert_allclose(batch["x_centroid"], one["x_centroid"], atol=1e-4)
    np.testing.assert_allclose(batch["score"], one["score"], atol=1e-6)
    assert batch["found_by"].tolist() == one["found_by"].tolist()
    with pytest.raises(ValueError, match="backgrounds of shape"):
        det.detect_arrays(counts[None], backgrounds=np.ones((2, 5, 5)))

"""Tests of the deep detectors (asid-unet, unek, centroidnet, cedirnet).

Most tests use tiny random weights written to a temporary directory, so they
check the plumbing (loading, tiling, band handling, schema, errors) without
the shipped models; the tests of the shipped models skip when they are absent.
"""

import json

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.wcs import WCS

from astro_asid.core import as_sky_image
from astro_asid.detection.base import Detector
from astro_asid.detection.deep import (DEEP_DETECTORS, ASIDUNetDetector, CeDiRNetDetector,
                                       UNEKDetector, clear_model_cache, load_model)
from astro_asid.nn.io import save_weights, shipped_model_path, weights_path
from astro_asid.nn.unet import UNet
from astro_asid.training.toy import ToySkySimulator
from astro_asid.utils.exceptions import ASIDInputWarning, WeightsError

torch.set_num_threads(1)
EDGES = [0.5, 1, 2, 7, 20, 200]


def _card(net):
    return {"architecture": "unet", "config": net.config, "n_bands": 5,
            "energy_edges_gev": EDGES, "pixel_scale_deg": 10 / 64, "name": "tiny"}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet(7, base_width=4, depth=2)
    # a positive bias on the seg head makes random weights produce candidates
    with torch.no_grad():
        net.heads["seg"][2].bias.fill_(0.5)
    path = tmp_path_factory.mktemp("w") / "tiny"
    save_weights(net, path, _card(net))
    return path.with_suffix(".safetensors")


def _wcs(n=64, scale=10 / 64):
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    w.wcs.crval = [30.0, 40.0]
    w.wcs.cdelt = [-scale, scale]
    w.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    return w


@pytest.fixture(scope="module")
def toy_batch():
    return ToySkySimulator(seed=11).sample_patches(2)


def test_registry_list():
    names = [c.name for c in DEEP_DETECTORS]
    assert names == ["asid-unet", "unek", "centroidnet", "cedirnet"]
    for cls in DEEP_DETECTORS:
        assert issubclass(cls, Detector) and cls.description and cls.needs_counts
        det = cls(weights="x.safetensors")
        assert "weights" in det.options and repr(det).startswith(cls.__name__)


@pytest.mark.parametrize("cls", DEEP_DETECTORS)
def test_detect_schema_on_challenge_size(cls, tiny_weights, toy_batch):
    det = cls(weights=tiny_weights, min_score=0.0)
    img = as_sky_image(toy_batch.counts[0], _wcs(), energy_edges=EDGES * u.GeV,
                       instrument="fermi-lat")
    tab = det.detect(img)
    assert {"x_centroid", "y_centroid", "score"} <= set(tab.colnames)
    assert len(tab) > 0
    s = np.asarray(tab["score"])
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s) <= 0)
    assert np.all((tab["x_centroid"] >= -0.5) & (tab["x_centroid"] < 63.5))
    assert np.all((tab["y_centroid"] >= -0.5) & (tab["y_centroid"] < 63.5))
    assert tab.meta["model"]["calibrated"] is False  # tiny weights carry no calibration


@pytest.mark.parametrize("shape", [(40, 56), (100, 130)])
def test_other_sizes_and_tiling(shape, tiny_weights):
    rng = np.random.default_rng(1)
    cube = rng.poisson(2.0, (5,) + shape).astype(np.float32)
    det = ASIDUNetDetector(weights=tiny_weights, min_score=0.0)
    maps = det.predict_maps(cube[None])
    assert maps["seg"].shape == (1,) + shape and maps["offset"].shape == (1, 2) + shape
    tab = det.detect(as_sky_image(cube, require_wcs=False))
    assert np.all((tab["x_centroid"] >= -0.5) & (tab["x_centroid"] < shape[1] - 0.5))
    assert np.all((tab["y_centroid"] >= -0.5) & (tab["y_centroid"] < shape[0] - 0.5))


def test_tiles_cover_each_pixel_once():
    det = ASIDUNetDetector(weights="x", tile_size=64, overlap=16)
    for n in (65, 100, 200, 257):
        starts, bounds = det._tiles(n)
        assert bounds[0] == 0 and bounds[-1] == n and np.all(np.diff(bounds) > 0)
        for s, a, b in zip(starts, bounds[:-1], bounds[1:]):
            assert s <= a and b <= s + 64  # each pixel comes from a tile that contains it


def test_tiled_maps_match_single_tile_in_the_centre(tiny_weights):
    rng = np.random.default_rng(2)
    cube = rng.poisson(3.0, (1, 5, 64, 112)).astype(np.float32)
    det = ASIDUNetDetector(weights=tiny_weights, tile_size=64, overlap=16)
    full = det.predict_maps(cube)["seg"][0]
    first = det.predict_maps(cube[..., :64])["seg"][0]
    starts, bounds = det._tiles(112)
    assert np.allclose(full[:, :bounds[1]], first[:, :bounds[1]], atol=1e-5)


def test_2d_image_and_band_mismatch(tiny_weights, toy_batch):
    det = ASIDUNetDetector(weights=tiny_weights, min_score=0.0)
    tab = det.detect(as_sky_image(toy_batch.counts[0].sum(0), _wcs()))
    assert len(tab) > 0
    with pytest.raises(ValueError, match="trained on 5 energy bands but the image has 3"):
        det.detect(as_sky_image(toy_batch.counts[0, :3], _wcs()))


def test_input_warnings_and_errors(tiny_weights, toy_batch):
    det = ASIDUNetDetector(weights=tiny_weights)
    img = as_sky_image(toy_batch.counts[0], _wcs(scale=0.5), energy_edges=EDGES * u.GeV)
    with pytest.warns(ASIDInputWarning, match="pixel scale"):
        det.detect(img)
    img = as_sky_image(toy_batch.counts[0], _wcs(), energy_edges=[1, 2, 4, 8, 16, 32] * u.GeV)
    with pytest.warns(ASIDInputWarning, match="energy edges"):
        det.detect(img)
    with pytest.raises(ValueError, match="needs counts"):
        det.detect(as_sky_image(toy_batch.counts[0] - 100, _wcs()))
    with pytest.raises(ValueError):
        ASIDUNetDetector(min_score=2)


def test_mask_suppresses_detections(tiny_weights, toy_batch):
    det = ASIDUNetDetector(weights=tiny_weights, min_score=0.0)
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    tab = det.detect(as_sky_image(toy_batch.counts[0], _wcs(), mask=mask))
    assert np.all(tab["x_centroid"] >= 31.5)


def test_missing_and_corrupt_weights(tmp_path, tiny_weights):
    with pytest.raises(WeightsError, match="not found"):
        ASIDUNetDetector(weights=tmp_path / "nothing.safetensors").card
    # corrupt: flip a byte of a copy
    data = bytearray(tiny_weights.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    (tmp_path / "bad.json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(WeightsError, match="corrupt"):
        load_model(bad)
    # a card whose config does not fit the tensors
    card = json.loads(tiny_weights.with_suffix(".json").read_text())
    card["config"]["base_width"] = 8
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_weights.read_bytes())
    (tmp_path / "other.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(other)
    card["architecture"] = "resnet"
    (tmp_path / "other.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="U-Net"):
        load_model(other)


def test_model_cache(tiny_weights):
    clear_model_cache()
    m1, _ = load_model(tiny_weights)
    m2, _ = load_model(tiny_weights.with_suffix(""))
    assert m1 is m2
    assert ASIDUNetDetector(weights=tiny_weights)._model()[0] is m1


def test_detect_arrays_batch_equals_single(tiny_weights, toy_batch):
    det = CeDiRNetDetector(weights=tiny_weights, min_score=0.0)
    tabs = det.detect_arrays(toy_batch.counts)
    one = det.detect(as_sky_image(toy_batch.counts[1], _wcs()))
    assert len(tabs) == 2
    assert np.allclose(tabs[1]["x_centroid"], one["x_centroid"])


def test_unek_options(tiny_weights, toy_batch):
    det = UNEKDetector(weights=tiny_weights, min_score=0.0, k_max=8, patience=2)
    assert det.k_max == 8 and det.options["patience"] == 2
    tab = det.detect_arrays(toy_batch.counts[:1])[0]
    assert len(tab) <= 7


# --- the shipped models ---------------------------------------------------------------

def _shipped(name):
    # the shipped models are part of the package: their absence is a failure
    path = weights_path(shipped_model_path(name))
    assert path.exists(), f"shipped weights {path.name} of {name} are missing"
    return path


@pytest.mark.parametrize("cls", DEEP_DETECTORS)
def test_shipped_card(cls):
    _shipped(cls.name)
    card = cls().card
    assert card["name"] == cls.name and len(card["sha256"]) == 64
    assert "command" in card["training"] and card["metrics"]["simulated_heldout"][cls.name]
    assert cls.name in card["score_calibration"]


def _found_fraction(tables, sources, radius=1.92):
    found, total = 0, 0
    for tab, src in zip(tables, sources):
        for x, y in zip(src["x"], src["y"]):
            total += 1
            d = np.hypot(np.asarray(tab["x_centroid"]) - x, np.asarray(tab["y_centroid"]) - y)
            found += bool(len(d)) and d.min() < radius
    return found, total


@pytest.mark.parametrize("cls", DEEP_DETECTORS)
def test_shipped_model_finds_separated_bright_sources(cls):
    _shipped(cls.name)
    from astro_asid.training.toy import FERMI_PSF_DOUBLE_PX

    sim = ToySkySimulator(seed=22, psf_sigma=FERMI_PSF_DOUBLE_PX[0],
                          psf_tail=FERMI_PSF_DOUBLE_PX[1:])
    rng = np.random.default_rng(5)
    # a 3x3 grid, 20 px apart (well separated even for UNEK's R = 5 px), 400 counts each
    gx, gy = np.meshgrid([12.3, 32.6, 51.9], [11.8, 31.4, 52.2])
    x, y = gx.ravel(), gy.ravel()
    bg = sim._background(rng)
    lam = bg + sim._render(x, y, np.outer(np.full(9, 400.0), sim.fraction))
    counts = rng.poisson(lam).astype(np.float32)[None]
    tab = cls(min_score=0.3).detect_arrays(counts)[0]
    found, total = _found_fraction([tab], [{"x": x, "y": y}])
    assert found >= 8
    # positions are sub-pixel: the found ones lie within 0.6 px of the truth on average
    d = [np.min(np.hypot(tab["x_centroid"] - a, tab["y_centroid"] - b)) for a, b in zip(x, y)]
    assert np.median(d) < 0.6


@pytest.mark.parametrize("cls", [c for c in DEEP_DETECTORS if c is not UNEKDetector])
def test_shipped_model_finds_bright_sources(cls):
    _shipped(cls.name)
    sim = ToySkySimulator(seed=21, mean_sources=6, counts_range=(300, 3000))
    b = sim.sample_patches(4)
    det = cls(min_score=0.3)
    tabs = det.detect_arrays(b.counts)
    found, total = _found_fraction(tabs, b.sources)
    assert total > 10 and found / total > 0.85
    # and a source-free patch gives few confident detections
    flat = np.random.default_rng(3).poisson(b.background[0]).astype(np.float32)
    assert np.sum(det.detect_arrays(flat[None])[0]["score"] > 0.5) <= 2


def test_tta_is_mirror_equivariant(tiny_weights):
    rng = np.random.default_rng(4)
    cube = rng.poisson(2.0, (1, 5, 32, 32)).astype(np.float32)
    det = ASIDUNetDetector(weights=tiny_weights, tta=4)
    a = det.predict_maps(cube)
    b = det.predict_maps(cube[..., ::-1].copy())  # mirrored in x
    assert np.allclose(b["seg"], a["seg"][..., ::-1], atol=1e-5)
    assert np.allclose(b["offset"][:, 0], -a["offset"][:, 0, :, ::-1], atol=1e-5)
    assert np.allclose(b["offset"][:, 1], a["offset"][:, 1, :, ::-1], atol=1e-5)
    assert np.allclose(b["direction"][:, 0], -a["direction"][:, 0, :, ::-1], atol=1e-5)
    with pytest.raises(ValueError, match="tta"):
        ASIDUNetDetector(tta=3)


def test_shipped_ctao_detector_finds_bright_sources():
    from astro_asid.detection.deep import ASIDCTAODetector
    from astro_asid.simulate.ctao import CTAOSkySimulator

    _shipped("asid-ctao")
    b = CTAOSkySimulator(seed=11, npix=256, density=6.0).sample_patches(2)
    det = ASIDCTAODetector(min_score=0.3)
    assert det.card["n_bands"] == 3 and det.card["instrument"] == "ctao"
    tabs = det.detect_arrays(b.counts.astype(np.float32))
    found = total = 0
    for tab, src in zip(tabs, b.sources):
        bright = np.asarray(src["flux_1tev"].value if hasattr(src["flux_1tev"], "value")
                            else src["flux_1tev"]) > 2e-13
        for x, y, s in zip(src["x"][bright], src["y"][bright], src["sigma_deg"][bright]):
            total += 1
            d = np.hypot(np.asarray(tab["x_centroid"]) - x, np.asarray(tab["y_centroid"]) - y)
            found += bool(len(d)) and d.min() < max(5.0, float(np.asarray(s)) / 0.02)
    assert total >= 5 and found / total > 0.8
    # the background alone gives few confident detections
    rng = np.random.default_rng(2)
    flat = rng.poisson(b.background[:1]).astype(np.float32)
    assert np.sum(det.detect_arrays(flat)[0]["score"] > 0.5) <= 2


def test_device_option_and_config(tiny_weights, toy_batch):
    """device=None follows astro_asid.conf.device; bad names and unusable CUDA are errors."""
    from astro_asid import conf
    from astro_asid.detection.deep import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        ASIDUNetDetector(weights=tiny_weights, device="gpu")
    with conf.set_temp("device", "tpu"), pytest.raises(ValueError, match="conf.device"):
        resolve_device(None)
    with conf.set_temp("device", "cpu"):
        det = ASIDUNetDetector(weights=tiny_weights)
        assert det.device is None and resolve_device(det.device) == "cpu"
    if not torch.cuda.is_available():
        with conf.set_temp("device", "cuda"), pytest.raises(RuntimeError, match="CUDA"):
            ASIDUNetDetector(weights=tiny_weights).card

"""Tests of the U-Net family, input normalisation, targets, decoders and training loop."""

import numpy as np
import pytest
import torch

from astro_asid.detection.decoders import (Candidates, ScoreCalibration, centroid_votes,
                                           direction_convergence, kmeans_penalised, log_peaks)
from astro_asid.nn.io import load_weights, save_weights
from astro_asid.nn.normalize import anscombe, model_input, model_input_torch, normalize_counts
from astro_asid.nn.targets import (direction_targets, disk_targets, gaussian_heatmap,
                                   make_targets, nearest_centre, offset_targets)
from astro_asid.nn.unet import UNet, build_unet, inference_copy, pad_to_multiple
from astro_asid.training.loop import Trainer, select_device
from astro_asid.training.metrics import match_detections, precision_recall, recall_at_precision
from astro_asid.training.toy import ToySkySimulator

torch.set_num_threads(1)


# --- U-Net ---------------------------------------------------------------------------

@pytest.mark.parametrize("width,depth,size", [(4, 1, (16, 16)), (4, 3, (64, 48)), (8, 2, (8, 24))])
def test_unet_shapes(width, depth, size):
    net = UNet(7, base_width=width, depth=depth, heads={"seg": 1, "offset": 2})
    out = net(torch.zeros((2, 7) + size))
    assert set(out) == {"seg", "offset"}
    assert out["seg"].shape == (2, 1) + size
    assert out["offset"].shape == (2, 2) + size


def test_unet_rejects_bad_sizes_and_config():
    net = UNet(5, base_width=4, depth=3)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 5, 20, 24))
    with pytest.raises(ValueError):
        UNet(0)
    with pytest.raises(ValueError):
        UNet(5, heads={})
    with pytest.raises(ValueError, match="invalid U-Net config"):
        build_unet({"in_channels": 5, "bogus": 1})


def test_pad_to_multiple():
    x = torch.ones(1, 2, 20, 17)
    p, shape = pad_to_multiple(x, 8)
    assert p.shape == (1, 2, 24, 24) and shape == (20, 17)
    assert p[..., :20, :17].eq(1).all() and p[..., 20:, :].eq(0).all()


def test_default_size_is_small():
    # the shipped configuration must stay a few MB (float32)
    net = UNet(7, base_width=16, depth=3)
    assert net.n_parameters() * 4 < 4e6


def test_weights_roundtrip(tmp_path):
    net = UNet(7, base_width=4, depth=2)
    net.eval()
    save_weights(net, tmp_path / "m", {"config": net.config})
    tensors, card = load_weights(tmp_path / "m")
    net2 = build_unet(card["config"])
    net2.load_state_dict(tensors)
    net2.eval()
    x = torch.randn(1, 7, 16, 16)
    assert torch.allclose(net(x)["seg"], net2(x)["seg"])


def test_cards_share_one_weights_file(tmp_path):
    from astro_asid.nn.io import save_card, weights_path
    from astro_asid.utils.exceptions import WeightsError

    net = UNet(7, base_width=4, depth=2)
    save_weights(net, tmp_path / "shared", {"config": net.config})
    for name in ("a", "b"):
        card = save_card(tmp_path / f"{name}.json", {"config": net.config, "name": name},
                         tmp_path / "shared.safetensors")
        assert card["weights_file"] == "shared.safetensors"
        assert weights_path(tmp_path / name) == tmp_path / "shared.safetensors"
        tensors, card = load_weights(tmp_path / name)
        assert card["name"] == name and set(tensors) == set(net.state_dict())
    # a card must sit beside its weights
    other = tmp_path / "sub"
    other.mkdir()
    with pytest.raises(ValueError, match="card's folder"):
        save_card(other / "c.json", {}, tmp_path / "shared.safetensors")
    # corrupting the shared file is caught through every card
    raw = bytearray((tmp_path / "shared.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "shared.safetensors").write_bytes(bytes(raw))
    for name in ("a", "b"):
        with pytest.raises(WeightsError, match="corrupt"):
            load_weights(tmp_path / name)


# --- normalisation ---------------------------------------------------------------------

@pytest.mark.parametrize("level", [2.0, 20.0, 200.0])
def test_normalisation_gives_unit_noise_at_any_level(level):
    rng = np.random.default_rng(1)
    cube = rng.poisson(level, (2, 64, 64)).astype(np.float32)
    out = normalize_counts(cube)
    assert abs(np.median(out)) < 0.1
    assert 0.85 < out.std() < 1.15


def test_normalisation_invariant_to_exposure_for_same_significance():
    # a 5-sigma excess stays ~5 after normalisation at 10x the exposure, while its raw
    # counts change by sqrt(10) (the sqrt compresses small counts a little)
    peaks = []
    for level in (5.0, 50.0):
        cube = np.full((1, 9, 9), level, np.float32)
        cube[0, 4, 4] += 5 * np.sqrt(level)
        peaks.append(normalize_counts(cube)[0, 4, 4])
    assert 3.0 < peaks[0] < 5.5 and 3.0 < peaks[1] < 5.5
    assert peaks[1] / peaks[0] < 1.3


def test_normalisation_mask_and_nan():
    cube = np.full((2, 8, 8), 4.0, np.float32)
    cube[0, 0, 0] = np.nan
    mask = np.zeros((8, 8), bool)
    mask[3, 3] = True
    out = normalize_counts(cube, mask)
    assert np.all(np.isfinite(out))
    assert out[0, 0, 0] == 0 and out[1, 3, 3] == 0
    with pytest.raises(ValueError):
        normalize_counts(np.zeros((8, 8)))
    assert np.allclose(anscombe(np.array([0.0, -1.0])), 2 * np.sqrt(0.375))


def test_model_input_numpy_matches_torch_and_sum_mode():
    rng = np.random.default_rng(2)
    counts = rng.poisson(1.5, (3, 5, 16, 16)).astype(np.float32)
    t = model_input_torch(torch.from_numpy(counts), torch.tensor([False, True, False])).numpy()
    n = np.stack([model_input(counts[0], 5), model_input(counts[1].sum(0), 5),
                  model_input(counts[2], 5)])
    assert t.shape == (3, 7, 16, 16)
    assert np.allclose(t, n, atol=1e-5)
    assert np.all(n[1, :5] == 0) and np.all(n[1, 6] == 0) and np.all(n[0, 6] == 1)
    with pytest.raises(ValueError, match="trained on 5 energy bands but the image has 3"):
        model_input(counts[0, :3], 5)


# --- targets -----------------------------------------------------------------------------

def test_disk_and_heatmap_targets():
    seg = disk_targets([[10.0, 12.0]], (32, 32), radius=2.5)
    assert seg.sum() == 21  # integer points within 2.5 of a lattice point
    assert seg[12, 10] == 1 and seg[12, 13] == 0
    hm = gaussian_heatmap([[10.0, 12.0]], (32, 32), sigma=1.0)
    assert hm[12, 10] == pytest.approx(1.0) and hm[12, 11] == pytest.approx(np.exp(-0.5))
    assert disk_targets(np.zeros((0, 2)), (8, 8)).sum() == 0
    with pytest.raises(ValueError):
        disk_targets([[1.0, np.nan]], (8, 8))
    with pytest.raises(ValueError):
        disk_targets([1.0, 2.0, 3.0], (8, 8))


def test_offset_and_direction_targets_point_to_nearest_centre():
    xy = np.array([[5.3, 6.7], [20.2, 18.9]])
    off, w = offset_targets(xy, (32, 32), max_distance=5)
    yy, xx = np.mgrid[0:32, 0:32]
    tx, ty = xx + off[0], yy + off[1]
    d0 = np.hypot(tx - xy[0, 0], ty - xy[0, 1])
    d1 = np.hypot(tx - xy[1, 0], ty - xy[1, 1])
    assert np.allclose(np.minimum(d0, d1), 0, atol=1e-5)
    assert w[7, 5] == 1 and w[0, 31] == 0
    dirn, wd = direction_targets(xy, (32, 32))
    norm = np.hypot(dirn[0], dirn[1])
    assert np.allclose(norm[wd > 0], 1, atol=1e-5)
    assert np.allclose(dirn[:, 7, 5] * np.hypot(*off[:, 7, 5]), off[:, 7, 5], atol=1e-5)
    _, _, dist = nearest_centre(np.zeros((0, 2)), (4, 4))
    assert np.all(np.isinf(dist))


def test_make_targets_batch():
    t = make_targets([np.array([[3.0, 4.0]]), np.zeros((0, 2))], (16, 16))
    assert t["seg"].shape == (2, 1, 16, 16) and t["offset"].shape == (2, 2, 16, 16)
    assert t["seg"][0].sum() == 21 and t["seg"][1].sum() == 0
    assert t["direction_w"][0, 0, 4, 3] == 0  # undefined on top of the source


# --- decoders ------------------------------------------------------------------------------

def _disk_map(xy, shape=(48, 48), radius=2.5):
    return disk_targets(xy, shape, radius).astype(float)


def test_log_peaks_finds_subpixel_centres():
    xy = np.array([[10.4, 12.0], [30.0, 33.3]])
    yy, xx = np.mgrid[0:48, 0:48]
    seg = sum(np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.5 ** 2) for x, y in xy)
    cand = log_peaks(seg)
    assert len(cand) == 2
    order = np.argsort(cand.x)
    assert np.allclose(cand.x[order], xy[:, 0], atol=0.25)
    assert np.allclose(cand.y[order], xy[:, 1], atol=0.25)
    assert len(log_peaks(np.zeros((16, 16)))) == 0
    with pytest.raises(ValueError):
        log_peaks(np.full((4, 4), np.nan))
    with pytest.raises(ValueError):
        log_peaks(np.zeros((4, 4)), score="bogus")


def test_kmeans_penalised_chooses_the_number_of_sources():
    xy = np.array([[8.0, 9.0], [30.0, 10.0], [20.0, 35.0]])
    cand = kmeans_penalised(_disk_map(xy), k_max=10)
    assert len(cand) == 3
    for x, y in xy:
        assert np.min(np.hypot(cand.x - x, cand.y - y)) < 0.5
    assert len(kmeans_penalised(np.zeros((16, 16)))) == 0
    # early stopping gives the same answer here
    assert len(kmeans_penalised(_disk_map(xy), k_max=10, patience=3)) == 3


def test_centroid_votes_with_exact_offsets():
    xy = np.array([[12.3, 14.6], [33.8, 30.1]])
    off, _ = offset_targets(xy, (48, 48))
    cand = centroid_votes(_disk_map(xy, radius=4), off)
    assert len(cand) == 2
    order = np.argsort(cand.x)
    assert np.allclose(cand.x[order], xy[:, 0], atol=1e-6)
    assert np.allclose(cand.y[order], xy[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="offset must have shape"):
        centroid_votes(np.zeros((8, 8)), np.zeros((2, 8, 9)))


def test_direction_convergence_with_exact_directions():
    xy = np.array([[12.3, 14.6], [33.8, 30.1]])
    dirn, _ = direction_targets(xy, (48, 48))
    cand = direction_convergence(_disk_map(xy, radius=4), dirn)
    assert len(cand) == 2
    order = np.argsort(cand.x)
    assert np.allclose(cand.x[order], xy[:, 0], atol=0.05)
    assert np.allclose(cand.y[order], xy[:, 1], atol=0.05)


def test_score_calibration():
    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 1, 2000)
    is_tp = rng.uniform(size=2000) < raw  # P(TP | raw) = raw
    cal = ScoreCalibration.fit(raw, is_tp)
    s = cal(np.sort(raw))
    assert np.all(np.diff(s) > 0)  # strictly monotone: order kept
    assert s.min() >= 0 and s.max() <= 1
    assert abs(cal(np.array([0.8]))[0] - 0.8) < 0.1
    cal2 = ScoreCalibration.from_dict(cal.to_dict())
    assert np.allclose(cal2(raw), cal(raw))
    with pytest.raises(ValueError):
        ScoreCalibration([0, 1], [0.5, 0.2])
    with pytest.raises(ValueError):
        ScoreCalibration.from_dict({"raw": [0, 1]})
    with pytest.raises(ValueError):
        ScoreCalibration.fit([0.1, 0.2], [1, 0])


def test_candidates_container():
    c = Candidates([1, 2], [3, 4], [0.5, 0.1])
    assert len(c.select(np.array([True, False]))) == 1
    with pytest.raises(ValueError):
        Candidates([1], [2, 3], [0.1])


# --- metrics, toy data, training loop ------------------------------------------------------

def test_match_detections_protocol():
    # two detections near two sources: the brighter source goes to the higher score
    is_tp, m = match_detections([10.0, 10.5, 40.0], [10.0, 10.0, 40.0], [0.9, 0.5, 0.3],
                                [10.2, 10.4], [10.0, 10.1], [1.0, 5.0])
    assert list(is_tp) == [True, True, False]
    assert m[0] == 1 and m[1] == 0
    thr, prec, rec = precision_recall([0.9, 0.5, 0.3], is_tp, 2)
    assert np.allclose(prec, [1, 1, 2 / 3]) and np.allclose(rec, [0.5, 1, 1])
    assert recall_at_precision([0.9, 0.5, 0.3], is_tp, 2, 0.9) == (1.0, 0.5)
    assert recall_at_precision([0.9], [False], 2, 0.9)[0] == 0.0


def test_toy_simulator_batch_structure():
    b = ToySkySimulator(seed=4).sample_patches(3)
    assert b.counts.shape == b.expected.shape == b.background.shape == (3, 5, 64, 64)
    assert np.all(b.expected >= b.background)
    for t in b.sources:
        assert {"x", "y", "flux_1000", "counts_band", "cls"} <= set(t.colnames)
        assert np.all((t["x"] >= -0.5) & (t["x"] < 63.5))
    with pytest.raises(ValueError):
        ToySkySimulator().sample_patches(0)


def test_patch_pool_augmentation_keeps_positions_consistent():
    from astro_asid.training.fermi import PatchPool

    img = np.zeros((1, 16, 16))
    img[0, 3, 11] = 1.0  # pixel (x=11, y=3)
    xy = np.array([[11.0, 3.0]])
    for k in range(4):
        for flip in (False, True):
            m, p = PatchPool._transform(img, xy, k, flip, (16, 16))
            r, c = np.unravel_index(np.argmax(m[0]), m[0].shape)
            assert (c, r) == (int(p[0, 0]), int(p[0, 1]))


def test_trainer_runs_and_checkpoints(tmp_path):
    from astro_asid.training.fermi import PatchPool, multihead_loss

    pool = PatchPool(ToySkySimulator(seed=5), size=8)
    val = pool.examples(np.random.default_rng(0), np.arange(4), augment=False)
    net = UNet(7, base_width=4, depth=2)
    tr = Trainer(net, pool.make_batch, multihead_loss, val_data=val, lr=1e-3, seed=1,
                 device="cpu", out=tmp_path, log=lambda m: None)
    hist = tr.fit(4, batch_size=2, val_every=2, log_every=1)
    assert len(hist) == 2 and np.isfinite(hist[-1]["val_loss"])
    tensors, card = load_weights(tmp_path / "best")
    assert card["config"] == net.config and card["step"] in (2, 4)
    assert (tmp_path / "history.json").exists()
    with pytest.raises(ValueError):
        tr.fit(0, 2)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            select_device("cuda")


def test_toy_simulator_options():
    from astro_asid.training.toy import FERMI_PSF_DOUBLE_PX

    sim = ToySkySimulator(seed=6, psf_sigma=FERMI_PSF_DOUBLE_PX[0], psf_tail=FERMI_PSF_DOUBLE_PX[1:],
                          index_range=(1.8, 2.8))
    # a centred source keeps nearly all of its counts in the 64x64 patch, in every band
    img = sim._render(np.array([31.5]), np.array([31.5]), np.array([[100.0] * 5]))
    assert np.all(img.sum(axis=(1, 2)) > 97) and np.all(img.sum(axis=(1, 2)) <= 100.0001)
    f = sim._powerlaw_fractions(np.array([1.8, 2.8]))
    assert np.allclose(f.sum(axis=1), 1) and f[0, -1] > f[1, -1]  # harder spectrum, more GeV
    templates = np.ones((2, 5, 64, 64), np.float32)
    b = ToySkySimulator(seed=7, background_templates=templates, template_fraction=1.0)
    assert np.all(b.sample_patches(2).background > 0.3)
    with pytest.raises(ValueError, match="background_templates"):
        ToySkySimulator(background_templates=np.ones((2, 5, 8, 8)))
    with pytest.raises(ValueError):
        ToySkySimulator(count_slope=1.0)


def test_train_detector_end_to_end_on_toy(tmp_path):
    """Tiny training run + calibration + export, then the detector loads the result."""
    from astro_asid.detection.deep import ASIDUNetDetector
    from astro_asid.training.fermi import train_detector

    written = train_detector("asid-unet", steps=2, batch_size=2, simulator="toy", out=tmp_path,
                             base_width=4, depth=2, pool_size=8, n_val=4, n_calibration=12,
                             export=["asid-unet"], val_every=1, log=lambda m: None,
                             command="test")
    path = written["asid-unet"]
    _, card = load_weights(path)
    assert card["training"]["command"] == "test" and card["dtype"] == "float16"
    assert "asid-unet" in card["score_calibration"]
    assert set(card["metrics"]["simulated_heldout"]["asid-unet"]) >= {"recall_at_precision_0.88"}
    b = ToySkySimulator(seed=9).sample_patches(1)
    tab = ASIDUNetDetector(weights=path, min_score=0.0).detect_arrays(b.counts)[0]
    assert tab.meta["model"]["calibrated"] is True
    # steps=0 re-exports existing weights
    again = train_detector("asid-unet", steps=0, init_weights=path, simulator="toy",
                           out=tmp_path / "re", n_calibration=12, export=["asid-unet"],
                           log=lambda m: None)
    assert again["asid-unet"].exists()
    with pytest.raises(ValueError, match="init_weights"):
        train_detector("asid-unet", steps=0, simulator="toy", out=tmp_path)
    with pytest.raises(ValueError, match="unknown deep detector"):
        train_detector("bogus", out=tmp_path)


def test_parallel_pool_and_batch_stream_are_deterministic():
    """The GPU-feeding path: pool simulated on processes, batches from DataLoader workers."""
    from astro_asid.training.fermi import PatchPool, make_simulator
    from astro_asid.training.parallel import BatchStream, simulate_pool_data

    one = simulate_pool_data(10, simulator="toy", seed=3, workers=1)
    two = simulate_pool_data(10, simulator="toy", seed=3, workers=2)
    assert one[0].shape[0] == 10 and len(one[2]) == 10
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert all(np.array_equal(a, b) for a, b in zip(one[2], two[2]))
    other = simulate_pool_data(10, simulator="toy", seed=4, workers=1)
    assert not np.array_equal(one[0], other[0])

    pool = PatchPool(make_simulator(simulator="toy"), data=one)
    assert pool.size == 10
    first = [BatchStream(pool, 3, seed=5, workers=w)(None, 3) for w in (0, 2, 2)]
    x, t = first[1]
    assert x.shape == (3, 7, 64, 64) and t["seg"].shape == (3, 1, 64, 64)
    # the same seed and worker count give the same batches
    assert torch.equal(first[1][0], first[2][0])
    with pytest.raises(ValueError, match="batches of 3"):
        BatchStream(pool, 3, workers=0)(None, 4)


def test_inference_copy_matches_the_network():
    torch.manual_seed(0)
    net = build_unet({"in_channels": 2, "base_width": 4, "depth": 2, "heads": {"seg": 1,
                                                                                "offset": 2}})
    # non-trivial batch-norm statistics, as after training
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 2, 32, 32) * 3 + 1)
    net.eval()
    fast = inference_copy(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original kept
    x = torch.randn(2, 2, 48, 64)
    with torch.inference_mode():
        a, b = net(x), fast(x.contiguous(memory_format=torch.channels_last))
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), atol=1e-4, rtol=1e-4)

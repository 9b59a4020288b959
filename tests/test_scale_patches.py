"""Patches of any image as independent tasks (astro_asid.scale.patches)."""

import os

import numpy as np
import pytest
from astropy import units as u

from astro_asid import SkyImage, conf, find_sources
from astro_asid.scale.patches import (Patch, merge_patch_duplicates, merge_radius_for,
                                      patch_image, patch_overlap_for, plan_patches)
from astro_asid.scale.scheduler import CRASH_ENV

from helpers import make_wcs

pytest.importorskip("gammapy")

# every test runs torch with one thread (conftest.one_torch_thread), as dask workers do
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (128, 256)
PSF_SIGMA = np.array([3.0, 2.0, 1.5])  # pixels, per band
# bright sources, several near (or on) the boundaries of the 64 px cores
SOURCES = [(62.3, 30.4), (100.0, 20.0), (129.6, 40.2), (190.5, 63.7), (230.2, 25.5),
           (30.4, 100.1), (66.0, 110.5), (127.5, 95.0), (170.0, 66.2), (225.0, 100.0)]
TSMAP = dict(detector="tsmap", ts_threshold=25)
# 64 px cores: 2 x 4 patches of the 128 x 256 map
SMALL = dict(patch_size=64, patch_pixels=1)


def _values(cat, name):
    col = cat[name]
    col = getattr(col, "unmasked", col)
    return np.asarray(getattr(col, "value", col))


def assert_same_catalog(a, b):
    """Same rows, bit for bit: sky positions and every column (values and masks)."""
    assert len(a) == len(b) and a.colnames == b.colnames
    np.testing.assert_array_equal(a["sky_centroid"].l.deg, b["sky_centroid"].l.deg)
    np.testing.assert_array_equal(a["sky_centroid"].b.deg, b["sky_centroid"].b.deg)
    for name in a.colnames:
        if name != "sky_centroid":
            np.testing.assert_array_equal(_values(a, name), _values(b, name), err_msg=name)
            np.testing.assert_array_equal(np.asarray(getattr(a[name], "mask", False)),
                                          np.asarray(getattr(b[name], "mask", False)),
                                          err_msg=name)


def patched(**items):
    """``conf.set_temp`` for several items at once."""
    import contextlib

    stack = contextlib.ExitStack()
    for k, v in dict(SMALL, **items).items():
        stack.enter_context(conf.set_temp(k, v))
    return stack


@pytest.fixture(scope="module")
def gmap():
    """A CTAO-like gammapy WcsNDMap: 3 bands of Poisson counts (0.02 deg pixels), flat
    background, eight bright Gaussian sources."""
    from gammapy.maps import Map, MapAxis, WcsGeom

    from astro_asid.simulate.ctao import CTAO_ENERGY_EDGES_TEV

    ny, nx = SHAPE
    axis = MapAxis.from_energy_edges(CTAO_ENERGY_EDGES_TEV * u.TeV, name="energy")
    geom = WcsGeom.create(skydir=(15.0, 0.0), frame="galactic", binsz=0.02,
                          width=(nx * 0.02, ny * 0.02), proj="CAR", axes=[axis])
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    model = np.empty((3, ny, nx))
    model[:] = np.array([2.0, 0.5, 0.05])[:, None, None]
    for x, y in SOURCES:
        for band, (share, sig) in enumerate(zip((0.5, 0.35, 0.15), PSF_SIGMA)):
            prof = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sig ** 2)
            model[band] += 600.0 * share * prof / prof.sum()
    counts = np.random.default_rng(3).poisson(model).astype(np.float32)
    return Map.from_geom(geom, data=counts)


@pytest.fixture(scope="module")
def serial_tsmap(gmap):
    with patched():
        cat = find_sources(gmap, **TSMAP)
    assert cat.meta["n_patches"] == 8 and cat.meta["scheduler"] == "serial"
    assert len(cat) >= len(SOURCES)
    return cat


def test_plan_patches_cover_the_image():
    for shape, size, overlap in [((128, 256), 64, 16), ((100, 37), 30, 7), ((5, 9), 64, 3),
                                 ((65, 64), 64, 0)]:
        patches = plan_patches(shape, size, overlap)
        cover = np.zeros(shape, int)
        for i, p in enumerate(patches):
            assert isinstance(p, Patch) and p.index == i
            y0, y1, x0, x1 = p.core
            a0, a1, b0, b1 = p.outer
            assert 0 < y1 - y0 <= size and 0 < x1 - x0 <= size
            assert (a0, a1, b0, b1) == (max(y0 - overlap, 0), min(y1 + overlap, shape[0]),
                                        max(x0 - overlap, 0), min(x1 + overlap, shape[1]))
            assert p.outer_shape == (a1 - a0, b1 - b0)
            cover[y0:y1, x0:x1] += 1
        assert np.all(cover == 1)
    assert len(plan_patches((128, 256), 64, 16)) == 8
    # positions are owned by exactly one core, edges and half pixels included
    patches = plan_patches((100, 37), 30, 7)
    x = np.array([-0.5, 0.0, 9.49, 9.5, 18.5, 36.4999])
    y = np.array([-0.5, 24.5, 25.5, 49.5, 50.5, 99.4999])
    assert np.all(sum(p.owns(x, y).astype(int) for p in patches) == 1)
    for bad in (0, -3, 1.5, True, None):
        with pytest.raises(ValueError, match="patch_size"):
            plan_patches((10, 10), bad, 2)
    for bad in (-1, 2.0, False):
        with pytest.raises(ValueError, match="patch_overlap"):
            plan_patches((10, 10), 5, bad)


def test_patch_image_and_defaults():
    ny, nx = 40, 50
    rng = np.random.default_rng(0)
    wcs = make_wcs((ny, nx))
    data = rng.poisson(3.0, (2, ny, nx)).astype(np.float32)
    sky = SkyImage(data, wcs=wcs, unit=u.ct, instrument="ctao", energy_edges=[1, 2, 4] * u.TeV,
                   background=np.full((2, ny, nx), 3.0), exposure=np.ones((2, ny, nx)) * u.cm ** 2 * u.s,
                   psf={"sigma_pix": [2.0, 1.0]},
                   meta={"saturated": rng.random((ny, nx)) > 0.5, "note": "x"})
    patch = plan_patches((ny, nx), 20, 5)[2]  # 2 x 3 patches
    assert patch.core == (0, 20, 33, 50) and patch.outer == (0, 25, 28, 50)
    sub = patch_image(sky, patch)
    sl = patch.slices
    np.testing.assert_array_equal(sub.data, data[:, sl[0], sl[1]])
    np.testing.assert_array_equal(sub.mask, sky.mask[:, sl[0], sl[1]])
    np.testing.assert_array_equal(sub.background, sky.background[:, sl[0], sl[1]])
    assert sub.exposure.unit == u.cm ** 2 * u.s and sub.exposure.shape == (2, 25, 22)
    np.testing.assert_array_equal(sub.meta["saturated"], sky.meta["saturated"][sl])
    assert sub.meta["note"] == "x" and sub.psf == sky.psf and sub.unit == u.ct
    assert sub.instrument == "ctao" and np.all(sub.energy_edges == sky.energy_edges)
    # the patch's pixel (0, 0) is the image's (x0, y0) = (28, 0) on the sky
    np.testing.assert_allclose(sub.wcs.pixel_to_world_values(0, 0),
                               wcs.pixel_to_world_values(28, 0))
    sub.data[:] = -1  # a copy: the image is unchanged
    assert data.min() >= 0
    # merge radius: twice the widest band's PSF sigma, at least 1.5 px
    assert merge_radius_for(sky) == 4.0
    assert merge_radius_for(sky.copy(psf=None)) == 1.5
    assert merge_radius_for(sky.copy(psf={"fwhm_pix": 1.0})) == 1.5
    assert merge_radius_for(sky, 3) == 3.0
    with pytest.raises(ValueError, match="merge_radius"):
        merge_radius_for(sky, 0)
    # overlap: the detector's halo, else conf.patch_overlap
    from astro_asid import get_detector
    assert patch_overlap_for(get_detector("peaks")) == conf.patch_overlap == 64
    with conf.set_temp("patch_overlap", 12):
        assert patch_overlap_for(get_detector("tsmap")) == 12
    assert patch_overlap_for(get_detector("asid-unet", tile_size=96)) == 96  # its tile_size
    assert patch_overlap_for(get_detector("asid-unet"), 9) == 9


def test_merge_patch_duplicates():
    # 0/1: one source owned by patches 0 and 1 (0.7 px apart): the better is kept.
    # 2/3: two sources 3 px apart on either side of the boundary; patch 0 owns 2 and
    # sees 3 (entry 4), patch 1 owns 3 and sees 2 (entry 5): both are kept.
    # 6/7: close detections of one patch are never merged.
    x = [10.0, 10.7, 30.0, 33.0, 33.1, 29.9, 50.0, 50.5]
    y = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    score = [0.5, 0.9, 0.8, 0.7, 0.0, 0.0, 0.6, 0.6]
    patch = [0, 1, 0, 1, 0, 1, 2, 2]
    owned = [True, True, True, True, False, False, True, True]
    keep = merge_patch_duplicates(x, y, score, patch, owned, radius=4.0)
    assert keep.tolist() == [False, True, True, True, False, False, True, True]
    # without the other patches' views, 2 and 3 are taken for one source
    keep = merge_patch_duplicates(x[:4], y[:4], score[:4], patch[:4], owned[:4], radius=4.0)
    assert keep.tolist() == [False, True, True, False]
    # a source on the boundary x = 9.5 of the cores of patches 0 (x < 9.5) and 1, which
    # each place it in the other's core: one of the two is kept (the better score); a
    # detection outside its patch's core that the owner did not see is dropped
    keep = merge_patch_duplicates([9.7, 9.4, 20.0, 30.0], [5.0] * 4, [0.6, 0.7, 0.9, 0.8],
                                  [0, 1, 0, 0], [False, False, False, True], radius=2.0,
                                  reported=[True, True, True, True])
    assert keep.tolist() == [False, True, False, True]


def test_small_images_keep_the_whole_image_path(gmap, serial_tsmap):
    """At most conf.patch_pixels and no scheduler: one pass, as before."""
    whole = find_sources(gmap, **TSMAP)
    assert "n_patches" not in whole.meta and "scheduler" not in whole.meta
    with patched(patch_pixels=SHAPE[0] * SHAPE[1]):
        assert "n_patches" not in find_sources(gmap, **TSMAP).meta
    # the bright sources are found, within 1 px, by both; no duplicates
    for cat in (whole, serial_tsmap):
        x, y = _values(cat, "x_centroid"), _values(cat, "y_centroid")
        d = np.hypot(x[:, None] - np.array(SOURCES)[:, 0], y[:, None] - np.array(SOURCES)[:, 1])
        assert np.all(d.min(axis=0) < 1.0)
        sep = np.hypot(x[:, None] - x, y[:, None] - y)[np.triu_indices(len(x), 1)]
        assert sep.min() > 2 * PSF_SIGMA.max()
    # the same bright sources, within 0.1 px of each other
    best = np.argsort(-_values(whole, "score"))[:len(SOURCES)]
    xw, yw = _values(whole, "x_centroid")[best], _values(whole, "y_centroid")[best]
    xp, yp = _values(serial_tsmap, "x_centroid"), _values(serial_tsmap, "y_centroid")
    assert np.all(np.hypot(xw[:, None] - xp, yw[:, None] - yp).min(axis=1) < 0.1)


def test_small_overlap_loses_and_doubles_nothing(gmap):
    """With little context the patches disagree near their boundaries: sources found
    twice are merged, sources each patch puts in the other's core are kept once."""
    from astro_asid import get_detector
    from astro_asid.instruments.ctao import map_to_sky_image
    from astro_asid.scale.patches import find_in_patches

    sky = map_to_sky_image(gmap)
    sky.psf = {"sigma_pix": PSF_SIGMA.tolist()}
    det = get_detector("tsmap", ts_threshold=25)
    for overlap in (0, 2):
        tab = find_in_patches(sky, det, characterize=False, size=64, overlap=overlap)
        assert tab.meta["n_patches"] == 8
        x, y = _values(tab, "x_centroid"), _values(tab, "y_centroid")
        d = np.hypot(x[:, None] - np.array(SOURCES)[:, 0], y[:, None] - np.array(SOURCES)[:, 1])
        assert np.all((d < 3).sum(axis=0) == 1), overlap
    assert tab.meta["patch_duplicates"] == 0
    tab = find_in_patches(sky, det, characterize=False, size=64, overlap=0)
    assert tab.meta["patch_duplicates"] > 0


def test_tsmap_distributed_matches_serial(client, gmap, serial_tsmap):
    with patched():
        cat = find_sources(gmap, scheduler=client, progress=True, **TSMAP)
    assert cat.meta["n_patches"] == 8 and cat.meta["scheduler"].startswith("dask client")
    assert_same_catalog(cat, serial_tsmap)
    np.testing.assert_array_equal(cat["id"], np.arange(1, len(cat) + 1))
    # a gamma-ray SkyImage (no adapter) with a scheduler runs in patches too
    from astro_asid.instruments.ctao import map_to_sky_image

    sky = map_to_sky_image(gmap)
    with patched():
        again = find_sources(sky, scheduler=client, **TSMAP)
    assert again.meta["n_patches"] == 8
    for name in ("x_centroid", "y_centroid", "score", "flux"):
        np.testing.assert_array_equal(_values(again, name), _values(serial_tsmap, name))


def test_worker_death_is_retried(client, gmap, serial_tsmap, tmp_path):
    marker = tmp_path / "crashed"
    spec = f"2:{marker}"
    client.run(lambda: os.environ.update({CRASH_ENV: spec}))
    try:
        with patched():
            cat = find_sources(gmap, scheduler=client, **TSMAP)
    finally:
        client.run(lambda: os.environ.pop(CRASH_ENV, None))
    assert marker.exists()  # patch 2 did kill its first worker
    assert_same_catalog(cat, serial_tsmap)


def test_deep_ctao_detector_on_workers(client, gmap):
    """asid-ctao (64 px tiles: a 64 px halo) and the CTAO characteriser on workers,
    bit for bit; the patched catalog finds the bright sources of the whole-map one."""
    from astro_asid.instruments.fermi import _deep_weights_missing
    from astro_asid.plugins.manager import get_registry

    reg = get_registry().detectors
    if "asid-ctao" not in reg or _deep_weights_missing(reg.get("asid-ctao")):
        pytest.skip("asid-ctao weights not installed")
    opts = dict(detector="asid-ctao", tile_size=64, overlap=16)
    whole = find_sources(gmap, **opts)
    with patched():
        ref = find_sources(gmap, **opts)
        cat = find_sources(gmap, scheduler=client, **opts)
    assert ref.meta["n_patches"] == 8
    assert ref.meta["characterizer"]["name"] == "characterize-ctao"
    assert_same_catalog(cat, ref)
    radius = 2 * PSF_SIGMA.max()
    for c in (whole, ref):
        good = _values(c, "score") > 0.5
        x, y = _values(c, "x_centroid")[good], _values(c, "y_centroid")[good]
        d = np.hypot(x[:, None] - np.array(SOURCES)[:, 0], y[:, None] - np.array(SOURCES)[:, 1])
        assert np.all(d.min(axis=0) < 1.0)
    x, y = _values(ref, "x_detector"), _values(ref, "y_detector")
    sep = np.hypot(x[:, None] - x, y[:, None] - y)[np.triu_indices(len(x), 1)]
    assert sep.min() > radius


def test_scheduler_errors(client, gmap, monkeypatch):
    from astro_asid.detection.base import Detector
    from astro_asid.plugins.manager import get_registry

    class Mine(Detector):
        name = "mine"

        def detect(self, image):
            raise AssertionError("not reached")

    # workers rebuild the detector by name: an unregistered instance cannot go there
    with pytest.raises(TypeError, match="not a registered detector"):
        find_sources(gmap, detector=Mine(), scheduler=client)
    with patched(patch_size=0), pytest.raises(ValueError, match="patch_size"):
        find_sources(gmap, **TSMAP)

    # an adapter that does not declare supports_scheduler keeps its input in this process
    class Marker:
        pass

    class Plain:
        name = "plain"

        def accepts(self, obj):
            return isinstance(obj, Marker)

        def find_sources(self, obj, **kwargs):
            raise AssertionError("not reached")

    adapters = get_registry().adapters
    monkeypatch.setattr(adapters, "_entries", dict(adapters._entries))
    adapters.add(Plain())
    with pytest.raises(ValueError, match="'plain' adapter.*supports_scheduler"):
        find_sources(Marker(), scheduler=client)

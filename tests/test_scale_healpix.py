"""Groups of all-sky HEALPix tiles on a dask cluster (astro_asid.scale.healpix)."""

import os
import sys

import numpy as np
import pytest
from astropy import units as u

hp = pytest.importorskip("healpy")

from astro_asid.instruments.fermi import HealpixTiling, find_sources_healpix  # noqa: E402
from astro_asid.scale.scheduler import CRASH_ENV  # noqa: E402

# every test runs torch with one thread (conftest.one_torch_thread), as dask workers do
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# tests that need a cluster skip without dask.distributed (pytest.importorskip in the
# `client` fixture); those of the serial path without dask run anyway

NSIDE = 64
TILES = [300] + sorted(int(t) for t in hp.get_all_neighbours(8, 300)[:5])
EDGES = [0.5, 1, 2, 7, 20, 200] * u.GeV
# tsmap on 1-band tiles, no characteriser: the cheap detector for most tests
TSMAP = dict(nside=NSIDE, tiles=TILES, detector="tsmap", psf_sigma_deg=0.55, ts_threshold=16,
             characterize=False)


def _values(cat, name):
    col = cat[name]
    col = getattr(col, "unmasked", col)
    return np.asarray(getattr(col, "value", col))


def _mask(col):
    return np.asarray(getattr(col, "mask", False))


def assert_same_catalog(a, b):
    """Same rows, bit for bit: positions (deg), scores, fluxes and every other column."""
    assert len(a) == len(b) and a.colnames == b.colnames
    assert {"score", "flux", "flux_err", "tile"} <= set(a.colnames)
    np.testing.assert_array_equal(a["sky_centroid"].l.deg, b["sky_centroid"].l.deg)
    np.testing.assert_array_equal(a["sky_centroid"].b.deg, b["sky_centroid"].b.deg)
    for name in a.colnames:
        if name != "sky_centroid":
            np.testing.assert_array_equal(_values(a, name), _values(b, name), err_msg=name)
            np.testing.assert_array_equal(_mask(a[name]), _mask(b[name]), err_msg=name)


def _sky(bands, seed):
    """Poisson counts: a flat background and Gaussian sources inside the tiles."""
    tiling = HealpixTiling(NSIDE, tiles=TILES)
    rng = np.random.default_rng(seed)
    n = 3 * tiling.n_tiles
    lon, lat = tiling.pixel_to_sky(np.repeat(np.arange(tiling.n_tiles), 3),
                                   rng.uniform(10, 54, n), rng.uniform(10, 54, n))
    vec = np.array(hp.pix2vec(NSIDE, np.arange(hp.nside2npix(NSIDE))))
    model = np.full((bands, vec.shape[1]), 1.0)
    for lo, la in zip(lon, lat):
        d = np.rad2deg(np.arccos(np.clip(hp.ang2vec(lo, la, lonlat=True) @ vec, -1, 1)))
        prof = np.exp(-0.5 * (d / 0.5) ** 2)
        model += rng.uniform(100, 400) * prof / prof.sum() / bands
    return rng.poisson(model).astype(float)


@pytest.fixture(scope="module")
def counts():
    return _sky(1, seed=1)


@pytest.fixture(scope="module")
def serial_cat(counts):
    cat = find_sources_healpix(counts, **TSMAP)
    # one task of every tile by default; sources seen by several tiles are kept once
    assert cat.meta["tiling"]["n_tasks"] == 1 and cat.meta["tiling"]["tiles_per_task"] == 16
    assert len(cat) >= 10 and cat.meta["n_detections_tiles"] > len(cat)
    return cat


def test_grouping_does_not_change_the_serial_catalog(counts, serial_cat):
    cat = find_sources_healpix(counts, tiles_per_task=1, **TSMAP)
    assert cat.meta["tiling"]["n_tasks"] == len(TILES)
    assert_same_catalog(cat, serial_cat)


def test_distributed_matches_serial(client, counts, serial_cat):
    cat = find_sources_healpix(counts, scheduler=client, tiles_per_task=2, progress=True,
                               **TSMAP)
    assert cat.meta["tiling"]["n_tasks"] == 3
    assert_same_catalog(cat, serial_cat)
    np.testing.assert_array_equal(cat["id"], np.arange(1, len(cat) + 1))
    # the one call dispatches there with the same options
    from astro_asid import find_sources
    assert_same_catalog(find_sources(counts, scheduler=client, tiles_per_task=2, **TSMAP),
                        serial_cat)


def test_worker_death_is_retried(client, counts, serial_cat, tmp_path):
    marker = tmp_path / "crashed"
    spec = f"1:{marker}"
    client.run(lambda: os.environ.update({CRASH_ENV: spec}))
    try:
        cat = find_sources_healpix(counts, scheduler=client, tiles_per_task=2, **TSMAP)
    finally:
        client.run(lambda: os.environ.pop(CRASH_ENV, None))
    assert marker.exists()  # group 1 did kill its first worker
    assert_same_catalog(cat, serial_cat)


def test_deep_detector_and_characterizer_on_workers(client):
    """asid-unet's batches and the default characteriser (five bands): the groups are
    whole batches, so the catalog is that of one pass over all tiles."""
    from astro_asid.characterize import shipped_characterizer
    from astro_asid.instruments.fermi import _deep_weights_missing
    from astro_asid.plugins.manager import get_registry

    cls = get_registry().detectors.get("asid-unet")
    if _deep_weights_missing(cls) or shipped_characterizer("fermi-lat") is None:
        pytest.skip("asid-unet weights or the Fermi-LAT characteriser not installed")
    counts = _sky(5, seed=2)
    opts = dict(nside=NSIDE, tiles=TILES, detector="asid-unet", energy_edges=EDGES,
                batch_size=2)
    ref = find_sources_healpix(counts, **opts)
    assert ref.meta["tiling"]["n_tasks"] == 1
    assert ref.meta["characterizer"]["name"] == "characterize-fermi-lat"
    assert len(ref) >= 5 and not np.any(ref["source_prob"].mask)
    # 3 tiles a task, rounded up to whole batches of 2
    cat = find_sources_healpix(counts, scheduler=client, tiles_per_task=3, **opts)
    assert cat.meta["tiling"]["tiles_per_task"] == 4 and cat.meta["tiling"]["n_tasks"] == 2
    assert_same_catalog(cat, ref)
    assert cat.meta["characterizer"] == ref.meta["characterizer"]


def test_scheduler_option_errors(client, counts):
    from astro_asid.characterize import shipped_characterizer
    from astro_asid.plugins.manager import get_registry

    for bad in ("threads", "tcp:/nowhere"):
        with pytest.raises(ValueError, match="unknown scheduler"):
            find_sources_healpix(counts, scheduler=bad, **TSMAP)
    with pytest.raises(ValueError, match="positive"):
        find_sources_healpix(counts, workers=0, **TSMAP)
    with pytest.raises(ValueError, match="workers"):
        find_sources_healpix(counts, scheduler="serial", workers=2, **TSMAP)
    with pytest.raises(ValueError, match="workers"):
        find_sources_healpix(counts, scheduler=client, workers=2, **TSMAP)
    with pytest.raises(TypeError):
        find_sources_healpix(counts, scheduler=42, **TSMAP)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="tiles_per_task"):
            find_sources_healpix(counts, tiles_per_task=bad, **TSMAP)
    # what workers cannot rebuild: a characteriser instance, an unregistered detector class
    model = shipped_characterizer("fermi-lat")
    if model is not None:
        with pytest.raises(TypeError, match="characterize"):
            find_sources_healpix(counts, scheduler=client, **dict(TSMAP, characterize=model))

    class Private(get_registry().detectors.get("tsmap")):
        pass

    opts = {k: v for k, v in TSMAP.items() if k not in ("detector", "ts_threshold")}
    with pytest.raises(TypeError, match="not a registered detector class"):
        find_sources_healpix(counts, detector=Private(), scheduler=client, **opts)


def test_scheduler_without_dask(monkeypatch, counts, serial_cat):
    for name in ("dask", "dask.array", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    for kw in (dict(scheduler="processes"), dict(workers=2),
               dict(scheduler="tcp://127.0.0.1:8786")):
        with pytest.raises(ImportError, match=r"astro-asid\[scale\]"):
            find_sources_healpix(counts, **kw, **TSMAP)
    # the serial path needs no dask
    assert_same_catalog(find_sources_healpix(counts, **TSMAP), serial_cat)

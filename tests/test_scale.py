"""Blocks of optical images on a dask cluster (astro_asid.scale)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from astro_asid import find_sources
from astro_asid.scale import SchedulerError, check_scheduler
from astro_asid.scale.scheduler import CRASH_ENV
from astro_asid.simulate.optical import OpticalSkySimulator, optical_wcs

# every test runs torch with one thread (conftest.one_torch_thread), as dask workers do
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# tests that need a cluster skip without dask.distributed (pytest.importorskip in the
# `client` fixture); those of the serial path without dask run anyway

# small tiles and blocks: a 256 px field is 3 x 3 blocks of 2 x 2 tiles
OPTS = dict(instrument="optical", tile_size=64, overlap=16, block_tiles=2, box_size=32)
COLUMNS = ("x_centroid", "y_centroid", "score", "flux", "flux_err", "source_prob")


def _values(cat, name):
    return np.asarray(getattr(cat[name], "value", cat[name]))


def assert_same_catalog(a, b):
    assert len(a) == len(b)
    for name in COLUMNS:
        np.testing.assert_array_equal(_values(a, name), _values(b, name), err_msg=name)


@pytest.fixture(scope="module")
def field():
    return OpticalSkySimulator(shape=(256, 256), crowding="sparse", seed=5).sample()


@pytest.fixture(scope="module")
def hdu(field):
    return field.to_hdu(optical_wcs(field.image.shape))


@pytest.fixture(scope="module")
def serial_cat(hdu):
    cat = find_sources(hdu, **OPTS)
    assert cat.meta["n_blocks"] == 9 and len(cat) > 20
    return cat


def test_distributed_matches_serial(client, hdu, serial_cat):
    cat = find_sources(hdu, scheduler=client, progress=True, **OPTS)
    assert_same_catalog(cat, serial_cat)
    assert cat.meta["n_blocks"] == 9
    np.testing.assert_array_equal(cat["id"], np.arange(1, len(cat) + 1))


def test_worker_death_is_retried(client, hdu, serial_cat, tmp_path):
    marker = tmp_path / "crashed"
    spec = f"4:{marker}"
    client.run(lambda: os.environ.update({CRASH_ENV: spec}))
    try:
        cat = find_sources(hdu, scheduler=client, **OPTS)
    finally:
        client.run(lambda: os.environ.pop(CRASH_ENV, None))
    assert marker.exists()  # block 4 did kill its first worker
    assert_same_catalog(cat, serial_cat)
    xy = set(zip(_values(cat, "x_centroid"), _values(cat, "y_centroid")))
    assert len(xy) == len(cat)


def test_dask_array_input_is_read_block_by_block(client, field):
    import dask
    import dask.array as da
    import dask.callbacks

    data = np.asarray(field.image, np.float32)
    wcs = optical_wcs(data.shape)
    ref = find_sources(data, wcs, **OPTS)
    biggest = []

    class Sizes(dask.callbacks.Callback):
        def _posttask(self, key, result, dsk, state, id):
            biggest.append(getattr(result, "size", 0))

    with Sizes():
        lazy = find_sources(da.from_array(data, chunks=64), wcs, **OPTS)
    assert_same_catalog(lazy, ref)
    # nothing as large as the image was ever computed: only block regions
    assert 0 < max(biggest) < data.size
    remote = find_sources(da.from_array(data, chunks=(100, 128)), wcs, scheduler=client,
                          **OPTS)
    assert_same_catalog(remote, ref)


@pytest.fixture(scope="module")
def big_fits(field, hdu, tmp_path_factory):
    """The field as a tile-compressed FITS file with SATURATE and a bad-pixel extension."""
    path = tmp_path_factory.mktemp("lazy") / "field.fits"
    header = hdu.header.copy()
    header["SATURATE"] = float(np.percentile(field.image, 99.9))
    bpm = np.zeros(field.image.shape, np.uint8)
    bpm[100:140, 30:60] = 1
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(field.image, header),
                  fits.ImageHDU(bpm, name="BPM")]).writeto(path)
    return path


def test_large_fits_read_section_by_section(client, big_fits, monkeypatch):
    import dask
    import dask.callbacks

    from astro_asid import conf
    from astro_asid.scale.fits_sections import FitsSection, lazy_fits, reads_lazily

    with conf.set_temp("lazy_fits_pixels", 0):
        assert not reads_lazily(big_fits)
        ref = find_sources(big_fits, **OPTS)  # read whole
    data, header, mask = lazy_fits(big_fits, chunks=100)
    assert data.dtype == np.float32 and mask.dtype == bool and "SATURATE" in header
    assert mask[120, 40].compute() and not mask[10, 10].compute()
    with fits.open(big_fits) as h:
        np.testing.assert_array_equal(data[5:105, 7:207].compute(), h[1].data[5:105, 7:207])
    # the graph holds the file's path, never its pixels
    import pickle
    assert len(pickle.dumps(FitsSection(big_fits, 1, (256, 256)))) < 500
    biggest = []

    class Sizes(dask.callbacks.Callback):
        def _posttask(self, key, result, dsk, state, id):
            biggest.append(getattr(result, "size", 0))

    monkeypatch.setattr("astro_asid.scale.fits_sections.LAZY_CHUNK", 64)
    with conf.set_temp("lazy_fits_pixels", 100 * 100):
        assert reads_lazily(big_fits)
        with Sizes():
            lazy = find_sources(big_fits, **OPTS)
        remote = find_sources(big_fits, scheduler=client, **OPTS)
    assert 0 < max(biggest) < 256 * 256
    assert_same_catalog(lazy, ref)
    assert_same_catalog(remote, ref)
    # the bad-pixel extension is honoured on the lazy path
    x, y = _values(lazy, "x_centroid"), _values(lazy, "y_centroid")
    assert not np.any((x > 31) & (x < 58) & (y > 101) & (y < 138))


def test_cli_uses_a_running_scheduler(client, hdu, serial_cat, tmp_path):
    from astro_asid.catalog import read_catalog
    from astro_asid.cli import main

    path = tmp_path / "field.fits"
    fits.HDUList([fits.PrimaryHDU(hdu.data, hdu.header)]).writeto(path)
    opts = [f"-O{k}={v}" for k, v in OPTS.items() if k != "instrument"]
    out = tmp_path / "cat.ecsv"
    assert main(["find", str(path), "-i", "optical", *opts, "-q", "-o", str(out),
                 "--scheduler", client.scheduler.address]) == 0
    cat = read_catalog(out)
    for name in ("x_centroid", "y_centroid", "score"):
        np.testing.assert_array_equal(_values(cat, name), _values(serial_cat, name))
    with pytest.raises(SystemExit, match="workers"):
        main(["find", str(path), "--workers", "2", "--scheduler", client.scheduler.address])


def test_local_cluster_for_one_call(field):
    """workers=N starts a local cluster for the call and closes it."""
    pytest.importorskip("distributed")
    data = np.asarray(field.image, np.float32)[:128, :128]
    wcs = optical_wcs(data.shape)
    opts = dict(OPTS, characterize=False)
    ref = find_sources(data, wcs, **opts)
    cat = find_sources(data, wcs, workers=1, **opts)
    assert_same_catalog(cat, ref)


def test_scheduler_option_errors(client, bright_image):
    for bad in ("threads", "tcp:/nowhere"):
        with pytest.raises(ValueError, match="unknown scheduler"):
            check_scheduler(bad)
    with pytest.raises(ValueError, match="positive"):
        check_scheduler(workers=0)
    with pytest.raises(ValueError, match="workers"):
        check_scheduler("serial", workers=2)
    with pytest.raises(ValueError, match="workers"):
        check_scheduler(client, workers=2)
    with pytest.raises(TypeError):
        check_scheduler(42)
    assert check_scheduler() == ("serial", None)
    assert check_scheduler(workers=3) == ("local", 3)
    # images that are not processed in blocks run in patches (astro_asid.scale.patches)
    data, wcs, _ = bright_image
    cat = find_sources(data, wcs, detector="peaks", scheduler=client)
    assert cat.meta["n_patches"] == 1 and len(cat) >= 5
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            pytest.raises(SchedulerError, match="could not connect"):
        find_sources(np.ones((64, 64), np.float32), optical_wcs((64, 64)),
                     scheduler="tcp://127.0.0.1:9", **OPTS)


def test_scheduler_without_dask(monkeypatch, hdu, serial_cat):
    for name in ("dask", "dask.array", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    for kw in (dict(scheduler="processes"), dict(workers=2),
               dict(scheduler="tcp://127.0.0.1:8786")):
        with pytest.raises(ImportError, match=r"astro-asid\[scale\]"):
            find_sources(hdu, **kw, **OPTS)
    # the serial path needs no dask
    assert_same_catalog(find_sources(hdu, **OPTS), serial_cat)


def test_package_imports_without_dask():
    code = ("import sys; sys.modules['dask'] = sys.modules['distributed'] = None\n"
            "import astro_asid, astro_asid.scale, astro_asid.find, astro_asid.cli\n"
            "assert not [m for m in sys.modules if m.startswith(('dask.', 'distributed.'))]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_large_images_start_a_local_cluster(monkeypatch, field):
    """conf.auto_cluster_pixels: a local cluster by default for large inputs on a
    machine with enough CPUs; serial otherwise, or when told so."""
    pytest.importorskip("distributed")
    from astro_asid import conf
    from astro_asid.scale import scheduler

    data, wcs = field.image[:128, :128], optical_wcs((128, 128))
    monkeypatch.setattr(scheduler, "usable_cpus", lambda: 2)
    with conf.set_temp("auto_cluster_pixels", 100), conf.set_temp("auto_cluster_min_cpus", 2):
        assert scheduler.auto_workers(128 * 128) == 2
        assert scheduler.auto_workers(99) is None
        assert scheduler.auto_workers(128 * 128, device="cuda") is None
        cat = find_sources(data, wcs, **OPTS)
        assert cat.meta["scheduler"] == "local dask cluster (2 workers)"
        ref = find_sources(data, wcs, scheduler="serial", **OPTS)
        assert ref.meta["scheduler"] == "serial"
        assert_same_catalog(cat, ref)
    with conf.set_temp("auto_cluster_pixels", 100):  # 2 CPUs < the default minimum of 4
        assert scheduler.auto_workers(128 * 128) is None
    with conf.set_temp("auto_cluster_pixels", 0):
        assert scheduler.auto_workers(10 ** 12) is None

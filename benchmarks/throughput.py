"""Throughput benchmark: time and memory of `~astro_asid.find_sources` versus image size.

How fast, and in how much memory, `~astro_asid.find_sources` turns an image
into a catalogue: serial, on a local dask cluster, on a lazily built dask-array
mosaic, and on a full-sky Fermi-LAT HEALPix cube.

Every measurement runs in a fresh process (``multiprocessing`` spawn
context) that loads its input from a ``.npy`` file and imports astro_asid
(and so torch) before the clock starts; reported are the wall time of the
one measured call (raw image to catalogue: background estimation, network,
decoding, score calibration, characterisation where enabled), Mpix/s, the
resident memory before the call, its peak during the call (``VmHWM``, reset
through ``/proc/self/clear_refs`` just before; ``ru_maxrss`` where that is
impossible) and the growth. ``asid-optical`` loads its model(s) and warms up
on the 256x256 corner of the image before the clock starts (timed apart,
``load + warm-up``); the classical finders' imports happen then too. With
``--device cuda`` (or ``auto`` on a GPU machine) the peak GPU memory
(``torch.cuda.max_memory_allocated``) is reported as well; the header gives
the torch device and the torch threads of the measured processes.

The optical field: one simulated moderate-crowding
`~astro_asid.simulate.optical.OpticalSkySimulator` field of the largest size
needed, drawn from ``numpy.random.default_rng([20_000 + seed])`` (at 4096
px the very field of ``benchmarks/optical.py``'s timing part); every smaller
size is its lower-left ``size x size`` corner (a moderate field is uniform, so
a crop is a field of that size), with `~astro_asid.simulate.optical.optical_wcs`
(0.5 arcsec/px). Simulating 4096x4096 takes about a minute and 2 GB.

Parts (each can be skipped):

1. Size scaling (``--sizes``, default 512 1024 2048 4096), one fresh process
   per finder and size:

   * ``asid-optical``: ``find_sources(image, wcs, instrument="optical",
     detector="asid-optical", characterize=False)``, serial;
   * ``asid-optical+char``: the same with the default characterisation
     (the shipped ``characterize-optical``);
   * ``sep``: ``benchmarks/optical.py``'s ``run_sep`` (sep background +
     extraction with SExtractor's defaults);
   * ``dao``: ``benchmarks/optical.py``'s ``run_dao`` (photutils
     DAOStarFinder at 2 sigma of the local noise, given the TRUE seeing FWHM).

   Then the exponent ``k`` of ``wall ~ npix**k`` per finder (least squares on
   log wall versus log pixel count over the sizes); fixed costs (a block's
   background margin, a dask or torch start) make it < 1 on small sizes.
2. Distributed (``--dist-size``, default the largest of ``--sizes``;
   ``asid-optical``, ``characterize=False`` unless ``--dist-characterize``),
   each row a fresh process:

   * serial with torch's default threads (speed) and with
     ``torch.set_num_threads(1)`` (the thread count of a block on a dask
     worker, ``astro_asid.scale.block.BLOCK_THREADS``: needed for bit identity);
   * ``workers=N`` (``--workers``, default 2): find_sources starts and closes a
     local cluster inside the call, so the wall time includes the cluster's
     start-up and the workers' imports and model loads;
   * a pre-started cluster (``distributed.LocalCluster(n_workers=N,
     threads_per_worker=1)`` + ``Client``, passed as ``scheduler=``): its
     start-up and the workers' warm-up (a serial find_sources on the 256x256
     corner in each worker, which loads the models there) are timed apart, and
     the workers' own peak RSS is read from them (``client.run``).

   The catalogues are compared with the serial one-thread catalogue: identical
   means the same rows in the same order with ``x_centroid``, ``y_centroid``,
   ``score`` and the sky position equal bit for bit; otherwise the number of
   rows with a counterpart within 0.5 px (0.01 deg for all-sky catalogues) and
   the largest offset and score difference of those pairs are given. Peak RSS of the ``workers=N`` run is the calling
   process's only (the cluster's workers are out of reach).
3. Mosaic (``--mosaic-size``, default 20000): a ``size x size`` float32
   ``dask.array`` built lazily with ``da.block`` from copies of the
   ``--mosaic-tile`` (default 2048) corner of the simulated field, each flipped
   at random along each axis and cyclically shifted (``da.roll``) by a random
   offset (``default_rng([40_000 + seed])``, chunks of 1024 px), so nothing of
   the mosaic is ever in memory whole (the seams are discontinuities, a few
   spurious sources). ``find_sources(mosaic, wcs, instrument="optical",
   detector="asid-optical", characterize=False)`` in a fresh process, serial
   (or ``--mosaic-workers N``): wall time, peak RSS (target < 3 GB), sources.
   With ``--mosaic-source fits`` (default: both) the same pixels are first
   written to a float32 FITS file (chunk by chunk, not timed) and
   ``find_sources(path, instrument="optical", ...)`` reads it section by
   section (`astro_asid.scale.fits_sections`). ``--mosaic-finders sep dao``
   also runs the classical finders on the same mosaic, computed into one
   in-memory array first (they take numpy arrays; the build is not timed);
   their peak RSS includes that array and their image-sized background maps.
   ``--mosaic-source`` with no value runs only those.
4. Full sky: ``benchmarks/fermi_allsky.py``'s simulation (nside
   ``--allsky-nside``, default 256, 5 bands, ``FermiSkySimulator.sample_allsky``
   with seed ``--allsky-seed``; cached in ``--workdir``), then, each in a fresh
   process, ``find_sources(counts, nside=nside)`` with its defaults (the best
   installed Fermi-LAT detector, ``asid-unet``, and the shipped
   characterisation; the 768 tiles of the data challenge, or ``--allsky-tiles
   a:b``) serially (torch's threads, and 1 thread) and with
   ``workers=--allsky-workers`` (default 2; 0 skips it): wall time (model load
   and the cluster's start included; the import of astro_asid and the plugins
   excluded), the pipeline's own breakdown, peak RSS, and the catalogue
   compared bit for bit with the serial one-thread run.
5. Tuning (``--tune-size``, default 2048): ``asid-optical`` serially with
   every torch thread count of ``--tune-threads`` and batch size of
   ``--tune-batch``, each a fresh process: the measurements behind the
   defaults.
6. CTAO mosaic (``--ctao-size NY NX``, default 1024 4096): a 3-band CTAO-like
   counts map (0.02 deg pixels; flat background of a 20 h Galactic-plane-survey
   patch per band, point sources with the CTAO PSF, one per 96 x 96 px on
   average, total counts log-uniform in 30-3000; ``default_rng([50_000 +
   seed])``) as a gammapy ``WcsNDMap``, ``find_sources(map, detector=
   --ctao-detector)`` (default ``asid-ctao``, with the default
   characterisation), each run a fresh process after a warm-up on a 128 x 128
   corner (model loads): in one pass (the default path of a map of at most
   ``conf.patch_pixels`` pixels), in patches serially with one torch thread
   (``conf.patch_pixels = 1``; cores of ``--ctao-patch-size`` px, default
   ``conf.patch_size``), and in patches with ``workers=--ctao-workers``
   (default 2; cluster start-up included): wall time, peak RSS of the calling
   process, the number of patches and whether the catalogues are identical (bit
   for bit, against the serial patched one).

Usage::

    python benchmarks/throughput.py                          # all parts, full sizes
    python benchmarks/throughput.py --sizes 256 512 --mosaic-size 1024 --skip-allsky
    python benchmarks/throughput.py --device cuda --skip-allsky   # on a GPU machine
    python benchmarks/throughput.py --skip-sizes --skip-distributed --skip-allsky \\
        --mosaic-size 20000 --mosaic-workers 2
    python benchmarks/throughput.py --skip-sizes --skip-distributed --skip-mosaic \\
        --skip-tuning --skip-allsky --ctao-size 1024 4096     # part 6 only
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

FINDERS = ("asid-optical", "asid-optical+char", "sep", "dao")
WARM_SIZE = 256  # side of the corner used to warm up asid-optical


def _fmt(v, spec=".2f"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


# -- measurement helpers (run in the fresh processes) --------------------------------------
def _rss_mib(field="VmRSS"):
    """Resident memory (MiB) of this process from ``/proc/self/status`` (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak():
    """Reset the peak-RSS mark (Linux >= 4.0); whether it could be done."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mib(reset):
    """VmHWM after `_reset_peak`, else ``ru_maxrss`` (which, after exec, also counts
    the parent's RSS at fork)."""
    import resource

    if reset:
        return _rss_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup_torch(threads, device):
    """torch threads of this process; returns (threads in use, cuda measured)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    return torch.get_num_threads(), cuda


def _gpu_reset(cuda):
    if cuda:
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak(cuda):
    if not cuda:
        return float("nan")
    import torch
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def _measured(call, cuda=False):
    """``call()`` timed, with this process's resident memory before it and its peak during
    it (and the GPU's peak when ``cuda``): ``(result, dict)``."""
    reset = _reset_peak()
    rss0 = _rss_mib()
    _gpu_reset(cuda)
    t0 = time.perf_counter()
    out = call()
    wall = time.perf_counter() - t0
    return out, {"wall": wall, "rss0": rss0, "peak": _peak_mib(reset), "reset": reset,
                 "gpu_peak": _gpu_peak(cuda)}


def _asid_call(image, wcs, device, characterize, **kw):
    from astro_asid import find_sources

    return find_sources(image, wcs, instrument="optical", detector="asid-optical",
                        characterize=characterize, device=device, **kw)


def _save_catalog(cat, path):
    """x, y, score and sky position of a catalogue, in its order, as float64 (exact)."""
    sc = cat["sky_centroid"]
    lon = np.asarray(sc.spherical.lon.deg, float) if len(cat) else np.zeros(0)
    lat = np.asarray(sc.spherical.lat.deg, float) if len(cat) else np.zeros(0)
    np.savez(path, x=np.asarray(cat["x_centroid"], float), y=np.asarray(cat["y_centroid"], float),
             score=np.asarray(cat["score"], float), lon=lon, lat=lat)


def _char_state(cat):
    if "characterizer" in cat.meta:
        return "yes"
    return "skipped: " + str(cat.meta["characterizer_skipped"]) \
        if "characterizer_skipped" in cat.meta else "no"


def _warm_worker(corner, device, characterize):
    """On a dask worker: build the detector the blocks will use (its spec's cached
    instance) and run it on a small image, so its models are loaded there."""
    from astro_asid import get_detector
    from astro_asid.scale.spec import DetectorSpec, build_detector
    from astro_asid.simulate.optical import optical_wcs

    det = build_detector(DetectorSpec.from_detector(get_detector("asid-optical", device=device)))
    from astro_asid import find_sources
    find_sources(corner, optical_wcs(corner.shape), instrument="optical", detector=det,
                 characterize=characterize)
    return True


def _worker_peak_reset():
    return _reset_peak()


def _worker_peak():
    return _rss_mib("VmHWM")


def _finder_child(name, npy, fwhm, opts):
    """One finder on one image in this (fresh) process; wall time and memory.

    ``opts``: ``threads``, ``device``, ``characterize`` (asid), ``workers`` (local
    cluster made by find_sources), ``prestart`` (a cluster of ``workers`` started
    here first), ``out`` (where to save the catalogue)."""
    threads, cuda = _setup_torch(opts.get("threads"), opts.get("device", "cpu"))
    image = np.load(npy)
    from astro_asid.simulate.optical import optical_wcs

    wcs = optical_wcs(image.shape)
    res = {"threads": threads, "cuda": cuda}
    t0 = time.perf_counter()
    if name.startswith("asid"):
        device, char = opts.get("device", "cpu"), opts.get("characterize", False)
        corner = np.array(image[:WARM_SIZE, :WARM_SIZE])
        _asid_call(corner, optical_wcs(corner.shape), device, char)  # load + warm up
        res["load"] = time.perf_counter() - t0
        client = cluster = None
        kw = {}
        if opts.get("prestart"):
            import distributed

            t0 = time.perf_counter()
            cluster = distributed.LocalCluster(n_workers=opts["workers"], threads_per_worker=1,
                                               processes=True, host="127.0.0.1",
                                               dashboard_address=":0")
            client = distributed.Client(cluster, set_as_default=False)
            client.wait_for_workers(opts["workers"])
            res["cluster"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            client.run(_warm_worker, corner, device, char)
            res["warm"] = time.perf_counter() - t0
            client.run(_worker_peak_reset)
            kw["scheduler"] = client
        elif opts.get("workers"):
            kw["workers"] = opts["workers"]
        kw.update(opts.get("options") or {})
        try:
            cat, m = _measured(lambda: _asid_call(image, wcs, device, char, **kw), cuda)
            res.update(m)
            if client is not None:
                res["worker_peaks"] = sorted(client.run(_worker_peak).values())
        finally:
            if client is not None:
                client.close()
                cluster.close()
        res.update(n=len(cat), char=_char_state(cat), n_blocks=cat.meta.get("n_blocks"))
        if opts.get("out"):
            _save_catalog(cat, opts["out"])
    else:
        import importlib

        import optical as optical_bench  # benchmarks/optical.py

        # the finder's own imports happen outside the timed run
        importlib.import_module("sep" if name == "sep" else "photutils.detection")
        runner = optical_bench.run_sep if name == "sep" else optical_bench.run_dao
        res["load"] = time.perf_counter() - t0
        (x, _, _), m = _measured(lambda: runner(image, fwhm))
        res.update(m, n=len(x))
    return res


def build_mosaic(base, size, seed, chunk=1024):
    """A lazy ``size x size`` float32 dask array: copies of ``base`` placed with
    ``da.block``, each randomly flipped along each axis and cyclically shifted."""
    import dask.array as da

    rng = np.random.default_rng([40_000 + seed])
    ty, tx = base.shape
    src = da.from_array(np.asarray(base, np.float32), chunks=chunk)
    rows = []
    for _ in range(-(-size // ty)):
        row = []
        for _ in range(-(-size // tx)):
            a = src
            if rng.random() < 0.5:
                a = a[::-1]
            if rng.random() < 0.5:
                a = a[:, ::-1]
            a = da.roll(a, (int(rng.integers(ty)), int(rng.integers(tx))), axis=(0, 1))
            row.append(a)
        rows.append(row)
    return da.block(rows)[:size, :size]


def write_fits_mosaic(mosaic, wcs, path):
    """Write a 2-D dask array to a float32 FITS file chunk by chunk (never whole in
    memory); returns ``path``."""
    import dask.array as da
    from astropy.io import fits

    hdr = fits.PrimaryHDU(np.zeros((1, 1), np.float32)).header
    hdr["NAXIS1"], hdr["NAXIS2"] = mosaic.shape[1], mosaic.shape[0]
    hdr.update(wcs.to_header())
    head = hdr.tostring().encode("ascii")
    nbytes = mosaic.size * 4
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + nbytes + (-nbytes) % 2880)  # zero padding to 2880 bytes
    out = np.memmap(path, dtype=">f4", mode="r+", offset=len(head), shape=mosaic.shape)
    da.store(mosaic.astype(">f4"), out, lock=True)
    out.flush()
    del out
    return path


def _mosaic_child(npy, size, seed, opts):
    """find_sources on a lazily built dask mosaic, in this (fresh) process."""
    threads, cuda = _setup_torch(opts.get("threads"), opts.get("device", "cpu"))
    from astro_asid.simulate.optical import optical_wcs

    base = np.load(npy)
    device = opts.get("device", "cpu")
    t0 = time.perf_counter()
    corner = np.array(base[:WARM_SIZE, :WARM_SIZE])
    _asid_call(corner, optical_wcs(corner.shape), device, False)
    t_load = time.perf_counter() - t0
    mosaic = build_mosaic(base, size, seed)
    n_tasks = len(mosaic.__dask_graph__())
    del base  # the graph holds its own reference
    kw = {"workers": opts["workers"]} if opts.get("workers") else {}
    image, wcs = mosaic, optical_wcs((size, size))
    if opts.get("source") == "fits":
        # the same mosaic written to a FITS file (outside the clock), then read by
        # find_sources section by section (astro_asid.scale.fits_sections)
        image = write_fits_mosaic(mosaic, wcs, opts["fits_path"])
        n_tasks = None
        wcs = None
    cat, m = _measured(lambda: _asid_call(image, wcs, device, False, **kw), cuda)
    if opts.get("source") == "fits":
        os.remove(image)
    return dict(m, n=len(cat), load=t_load, threads=threads, cuda=cuda,
                n_blocks=cat.meta.get("n_blocks"), n_tasks=n_tasks)


def _mosaic_finder_child(name, npy, size, seed, fwhm):
    """A classical finder (``sep`` or ``dao``) on the whole mosaic, in this (fresh) process.

    They take an in-memory array: the mosaic is computed into one first (timed
    apart as ``build``), and their own background maps are image-sized too."""
    import importlib

    import optical as optical_bench  # benchmarks/optical.py

    importlib.import_module("sep" if name == "sep" else "photutils.detection")
    runner = optical_bench.run_sep if name == "sep" else optical_bench.run_dao
    t0 = time.perf_counter()
    image = np.ascontiguousarray(build_mosaic(np.load(npy), size, seed).compute(), np.float32)
    t_build = time.perf_counter() - t0
    (x, _, _), m = _measured(lambda: runner(image, fwhm))
    return dict(m, n=len(x), load=t_build, threads=1, cuda=False, n_blocks=None,
                n_tasks=None)


def _allsky_child(npz, tiles, opts):
    """find_sources on a full-sky HEALPix cube, in this (fresh) process."""
    threads, cuda = _setup_torch(opts.get("threads"), opts.get("device", "cpu"))
    t0 = time.perf_counter()
    from astro_asid import find_sources
    from astro_asid.plugins.manager import get_registry

    get_registry()  # plugin loading (torch import) is start-up, not the pipeline
    t_start = time.perf_counter() - t0
    with np.load(npz) as f:
        counts, nside = f["counts"], int(f["nside"])
    kw = {"tiles": tiles} if tiles is not None else {}
    if opts.get("device", "cpu") != "cpu":
        kw["device"] = opts["device"]
    if opts.get("workers"):
        kw["workers"] = opts["workers"]
    cat, m = _measured(lambda: find_sources(counts, nside=nside, **kw), cuda)
    if opts.get("out"):
        sc = cat["sky_centroid"]
        lon, lat = np.asarray(sc.spherical.lon.deg, float), np.asarray(sc.spherical.lat.deg, float)
        np.savez(opts["out"], x=lon, y=lat, lon=lon, lat=lat,
                 score=np.asarray(cat["score"], float))
    return dict(m, n=len(cat), startup=t_start, threads=threads, cuda=cuda,
                detector=cat.meta.get("detector"), char=_char_state(cat),
                timing=cat.meta.get("timing_s", {}),
                n_tiles=(cat.meta.get("tiling") or {}).get("n_tiles"), nside=nside,
                npix=int(counts.shape[-1]), n_bands=int(counts.shape[0]))


def run_fresh(func, *args):
    """``func(*args)`` in a fresh spawned process; a dict (``error`` on failure)."""
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        try:
            out = ex.submit(func, *args).result()
        except Exception as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"# {func.__name__}{args[:1]}: {out}", file=sys.stderr)
    return out


# -- tables --------------------------------------------------------------------------------
def device_line(device, threads):
    """The torch device and threads the measured processes use."""
    import torch

    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        where = "cuda requested but not available (the runs will fail)"
    elif cuda:
        where = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        where = "cpu"
    return (f"torch {torch.__version__}, device {where} (--device {device}), torch threads "
            f"{threads or f'default ({torch.get_num_threads()})'}, {os.cpu_count()} CPUs")


def _row_mem(r):
    gpu = f" | {_fmt(r.get('gpu_peak'), '.0f')}" if r.get("cuda") else ""
    return f"{r['rss0']:.0f} | {r['peak']:.0f} | {r['peak'] - r['rss0']:.0f}{gpu}"


def _gpu_head(cuda):
    return (" | GPU peak (MiB) |", "---|") if cuda else (" |", "")


def scaling_table(sizes, finders, paths, fields, opts, header):
    """Part 1: every finder at every size, each in a fresh process."""
    rows = {}
    for s in sizes:
        for n in finders:
            o = dict(opts, characterize=None if n == "asid-optical+char" else False)
            rows[s, n] = run_fresh(_finder_child, n, paths[s], fields["fwhm"], o)
    cuda = any(r.get("cuda") for r in rows.values())
    gh, gs = _gpu_head(cuda)
    print(f"\n## Part 1: time and memory versus image size ({header})")
    print(f"\nSquare crops of one simulated moderate field (FWHM {fields['fwhm']:.2f} px), "
          "each finder in a fresh process; dao is given the true FWHM.")
    print("\n| size | true sources | finder | detections | wall (s) | Mpix/s | RSS before (MiB) "
          "| peak RSS (MiB) | growth (MiB)" + gh + " load + warm-up (s) | characterised |")
    print("|---|---|---|---|---|---|---|---|---|" + gs + "---|---|")
    for s in sizes:
        for n in finders:
            r = rows[s, n]
            if "error" in r:
                print(f"| {s} | {fields['n_true'][s]} | {n} | failed: {r['error']} |")
                continue
            print(f"| {s} | {fields['n_true'][s]} | {n} | {r['n']} | {r['wall']:.2f} | "
                  f"{s * s / 1e6 / r['wall']:.2f} | {_row_mem(r)} | {r['load']:.1f} | "
                  f"{r.get('char', '')} |")
    if len(sizes) >= 2:
        print("\nExponent k of wall ~ npix**k (log-log least squares over the sizes):")
        print("\n| finder | k | sizes |")
        print("|---|---|---|")
        for n in finders:
            ok = [s for s in sizes if "error" not in rows[s, n] and rows[s, n]["wall"] > 0]
            if len(ok) < 2:
                print(f"| {n} | n/a | {len(ok)} |")
                continue
            k = np.polyfit(np.log([s * s for s in ok]), np.log([rows[s, n]["wall"] for s in ok]),
                           1)[0]
            print(f"| {n} | {k:.3f} | {', '.join(map(str, ok))} |")
    return rows


def _load_cat(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def compare_catalogs(a, b, unit="px"):
    """(identical bit for bit, description); ``unit`` of the ``x``, ``y`` columns."""
    keys = ("x", "y", "score", "lon", "lat")
    if len(a["x"]) == len(b["x"]) and all(
            np.array_equal(np.ascontiguousarray(a[k]).view(np.uint64),
                           np.ascontiguousarray(b[k]).view(np.uint64)) for k in keys):
        return True, f"identical ({len(a['x'])} rows)"
    if not len(a["x"]) or not len(b["x"]):
        return False, f"{len(a['x'])} vs {len(b['x'])} rows"
    from scipy.spatial import cKDTree

    d, j = cKDTree(np.column_stack([b["x"], b["y"]])).query(np.column_stack([a["x"], a["y"]]))
    ds = np.abs(a["score"] - b["score"][j])
    # a row without counterpart (one catalogue's extra source) would dominate the maxima
    tol = 0.5 if unit == "px" else 0.01
    near = d <= tol
    text = (f"{len(a['x'])} vs {len(b['x'])} rows; {near.sum()} with a counterpart within "
            f"{tol:g} {unit}")
    if near.any():
        text += (f" (max offset {d[near].max():.2e} {unit}, max |score diff| "
                 f"{ds[near].max():.2e})")
    return False, text


def distributed_table(size, path, fields, opts, workers, characterize, tmp, header):
    """Part 2: serial (default and 1 thread) vs a local dask cluster."""
    char = None if characterize else False
    base = dict(opts, characterize=char)
    runs = {
        f"serial, torch threads {opts.get('threads') or 'default'}": dict(base),
        "serial, 1 thread": dict(base, threads=1),
        f"workers={workers} (cluster started by find_sources)": dict(base, workers=workers),
        f"pre-started cluster of {workers}": dict(base, workers=workers, prestart=True),
    }
    rows = {}
    for i, (label, o) in enumerate(runs.items()):
        o["out"] = os.path.join(tmp, f"dist_{i}.npz")
        rows[label] = run_fresh(_finder_child, "asid-optical", path, fields["fwhm"], o)
    ref_label = "serial, 1 thread"
    ref = _load_cat(runs[ref_label]["out"]) if "error" not in rows[ref_label] else None
    cuda = any(r.get("cuda") for r in rows.values())
    gh, gs = _gpu_head(cuda)
    print(f"\n## Part 2: serial versus distributed, one {size}x{size} field ({header})")
    print(f"\nasid-optical, characterize={'default' if characterize else 'False'}; "
          f"{fields['n_true'][size]} true sources; each row a fresh process. Identity: "
          "compared with the serial one-thread catalogue, bit for bit (x, y, score, sky "
          "position, row order).")
    print("\n| run | torch threads (calling process) | detections | wall (s) | Mpix/s | "
          "cluster start-up (s) | worker warm-up (s) | RSS before (MiB) | peak RSS (MiB) | "
          "growth (MiB)" + gh + " workers' peak RSS (MiB) | vs serial 1 thread |")
    print("|---|---|---|---|---|---|---|---|---|---|" + gs + "---|---|")
    summary = {}
    for label, r in rows.items():
        if "error" in r:
            print(f"| {label} | failed: {r['error']} |")
            continue
        if ref is None:
            same, desc = None, "n/a"
        elif label == ref_label:
            same, desc = True, "(reference)"
        else:
            same, desc = compare_catalogs(_load_cat(runs[label]["out"]), ref)
        summary[label] = same
        wp = " + ".join(f"{p:.0f}" for p in r["worker_peaks"]) if "worker_peaks" in r else \
            ("not measured" if "workers" in runs[label] else "")
        threads = f"{r['threads']}" + (" (blocks: 1 per worker)" if "workers" in runs[label]
                                       else "")
        print(f"| {label} | {threads} | {r['n']} | {r['wall']:.2f} | "
              f"{size * size / 1e6 / r['wall']:.2f} | {_fmt(r.get('cluster'), '.1f')} | "
              f"{_fmt(r.get('warm'), '.1f')} | {_row_mem(r)} | {wp} | {desc} |")
    dist = [lb for lb in summary if lb.startswith(("workers", "pre-started"))]
    if ref is not None and dist:
        ok = all(summary[lb] for lb in dist)
        print(f"\nDistributed and serial (1 thread) catalogues identical, positions and scores "
              f"bit for bit: {'YES' if ok else 'NO'}")
    return rows


def mosaic_table(size, tile, npy, seed, opts, workers, header, sources, tmp, finders=(),
                 fwhm=None):
    """Part 3: a lazily built dask-array mosaic, the same mosaic as a FITS file, and
    the classical ``finders`` on it in memory."""
    rows = {}
    for src in sources:
        o = dict(opts, workers=workers, source=src,
                 fits_path=os.path.join(tmp, "mosaic.fits"))
        rows[src] = run_fresh(_mosaic_child, npy, size, seed, o)
    for name in finders:
        rows[f"{name} (in memory)"] = run_fresh(_mosaic_finder_child, name, npy, size, seed,
                                                fwhm)
    print(f"\n## Part 3: a {size}x{size} mosaic ({header})")
    print(f"\nCopies of a {tile}x{tile} simulated moderate field, randomly flipped and "
          "shifted, float32; asid-optical, characterize=False, "
          + (f"workers={workers}" if workers else "serial") + ", each a fresh process. "
          "dask: a lazy dask array (chunks <= 1024 px); fits: the same pixels written to a "
          f"{size * size * 4 / 2 ** 30:.1f} GiB FITS file first (not timed), then "
          "find_sources(path, instrument='optical'), which reads it section by section."
          + (" Classical finders: the mosaic computed into memory first (not timed; "
             "'load' in the row), then benchmarks/optical.py's run_sep / run_dao "
             "(DAOStarFinder given the true FWHM) on the whole array."
             if finders else ""))
    cuda = any(r.get("cuda") for r in rows.values())
    gh, gs = _gpu_head(cuda)
    print("\n| input | pixels | blocks | dask tasks | detections | wall (s) | Mpix/s | "
          "RSS before (MiB) | peak RSS (MiB) | growth (MiB)" + gh + " peak < 3 GB |")
    print("|---|---|---|---|---|---|---|---|---|---|" + gs + "---|")
    for src, r in rows.items():
        if "error" in r:
            print(f"| {src} | failed: {r['error']} |")
            continue
        blocks = r["n_blocks"] if r.get("n_blocks") is not None else "n/a"
        print(f"| {src} | {size * size / 1e6:.1f} M | {blocks} | "
              f"{_fmt(r['n_tasks'], 'd') if r['n_tasks'] is not None else 'n/a'} | {r['n']} | "
              f"{r['wall']:.1f} | {size * size / 1e6 / r['wall']:.2f} | {_row_mem(r)} | "
              f"{'yes' if r['peak'] < 3 * 1024 else 'NO'} |")
    if workers:
        print(f"\nPeak RSS is the calling process's; the {workers} workers' is not measured.")
    return rows


def tuning_table(size, path, threads, batches, repeats, opts, header):
    """Part 5: torch threads x batch size of asid-optical, serial, one field; the
    configurations interleaved over ``repeats`` rounds (so that a slow spell of the
    machine does not fall on one configuration), median and spread of the walls."""
    runs = {(t, b): [] for t in threads for b in batches}
    for _ in range(repeats):
        for (t, b), got in runs.items():
            o = dict(opts, threads=t, characterize=False, options={"batch_size": b})
            got.append(run_fresh(_finder_child, "asid-optical", path, 0.0, o))
    print(f"\n## Part 5: torch threads and batch size, one {size}x{size} field ({header})")
    print(f"\nasid-optical, characterize=False, serial; each run a fresh process, "
          f"{repeats} rounds over the configurations; wall: median (min-max).")
    print("\n| torch threads | batch size (tiles) | wall (s) | Mpix/s (median) | peak RSS (MiB) | "
          "growth (MiB) |")
    print("|---|---|---|---|---|---|")
    for (t, b), got in runs.items():
        ok = [r for r in got if "error" not in r]
        if not ok:
            print(f"| {t} | {b} | failed: {got[0]['error']} |")
            continue
        w = np.array([r["wall"] for r in ok])
        r = ok[0]
        print(f"| {r['threads']} | {b} | {np.median(w):.2f} ({w.min():.2f}-{w.max():.2f}) | "
              f"{size * size / 1e6 / np.median(w):.2f} | {max(q['peak'] for q in ok):.0f} | "
              f"{max(q['peak'] - q['rss0'] for q in ok):.0f} |")
    return runs


def allsky_table(nside, seed, workdir, tiles, opts, header, workers, tmp):
    """Part 4: a full-sky Fermi-LAT HEALPix cube (benchmarks/fermi_allsky.py's simulation):
    serial (torch's threads and 1 thread) and on a local cluster of ``workers``."""
    import fermi_allsky  # benchmarks/fermi_allsky.py

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        path, _, how = fermi_allsky.simulate(nside, seed, workdir)
    t_sim = time.perf_counter() - t0
    sel = fermi_allsky._tiles(tiles)
    runs = {"serial": dict(opts), "serial, 1 thread": dict(opts, threads=1)}
    if workers:
        runs[f"workers={workers} (cluster started by find_sources)"] = dict(opts,
                                                                           workers=workers)
    rows = {}
    for i, (label, o) in enumerate(runs.items()):
        o["out"] = os.path.join(tmp, f"allsky_{i}.npz")
        rows[label] = run_fresh(_allsky_child, str(path), sel, o)
    print(f"\n## Part 4: full-sky Fermi-LAT HEALPix cube ({header})")
    sim = "cached" if how == "cached" else f"{how}, {t_sim:.0f} s"
    print(f"\nnside {nside}, seed {seed} ({sim}: {path}); find_sources(counts, nside=nside"
          + (f", tiles={tiles}" if tiles else "") + ") with its defaults, each run a fresh "
          "process; wall includes model loads (and a cluster's start), not the "
          "astro_asid/plugin import. Identity: against the serial one-thread catalogue "
          "(sky positions and scores, bit for bit).")
    ref_label = "serial, 1 thread"
    ref = _load_cat(runs[ref_label]["out"]) if "error" not in rows[ref_label] else None
    cuda = any(r.get("cuda") for r in rows.values())
    gh, gs = _gpu_head(cuda)
    print("\n| run | detector | characterised | tiles | sources | wall (s) | import (s) | "
          "RSS before (MiB) | peak RSS (MiB) | growth (MiB)" + gh + " breakdown (s) | "
          "vs serial 1 thread |")
    print("|---|---|---|---|---|---|---|---|---|---|" + gs + "---|---|")
    for label, r in rows.items():
        if "error" in r:
            print(f"| {label} | failed: {r['error']} |")
            continue
        tm = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in r["timing"].items())
        desc = "(reference)" if label == ref_label else (
            "n/a" if ref is None else compare_catalogs(_load_cat(runs[label]["out"]), ref, "deg")[1])
        print(f"| {label} | {r['detector']} | {r['char']} | {r['n_tiles']} | {r['n']} | "
              f"{r['wall']:.1f} | {r['startup']:.1f} | {_row_mem(r)} | {tm} | {desc} |")
    if workers:
        print(f"\nPeak RSS of the workers run is the calling process's; the {workers} "
              "workers' is not measured.")
    return rows


def simulate_ctao_map(ny, nx, seed):
    """A 3-band CTAO-like counts cube ``(3, ny, nx)`` (float32) and its number of sources."""
    from astro_asid.simulate.ctao import CTAOSkySimulator, render_gaussian_sources

    rng = np.random.default_rng([50_000 + seed])
    sim = CTAOSkySimulator(npix=64, seed=0)
    back = sim.sample_patches(1).background[0].mean(axis=(1, 2)).astype(float)
    sigma = np.asarray(sim.psf_sigma_deg.to_value("deg"), float) / 0.02
    n = max(1, int(round(ny * nx / 96 ** 2)))
    x, y = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    total = 10 ** rng.uniform(np.log10(30), np.log10(3000), n)
    model = back[:, None, None] + render_gaussian_sources(
        (ny, nx), x, y, total[:, None] * np.array([0.6, 0.3, 0.1]),
        np.broadcast_to(sigma, (n, 3)))
    return rng.poisson(model).astype(np.float32), n


def _ctao_map(counts):
    """A gammapy WcsNDMap of a CTAO-like counts cube (0.02 deg CAR pixels at l = 15 deg)."""
    from astropy import units as u
    from gammapy.maps import Map, MapAxis, WcsGeom

    from astro_asid.simulate.ctao import CTAO_ENERGY_EDGES_TEV

    ny, nx = counts.shape[1:]
    axis = MapAxis.from_energy_edges(CTAO_ENERGY_EDGES_TEV * u.TeV, name="energy")
    geom = WcsGeom.create(skydir=(15.0, 0.0), frame="galactic", binsz=0.02,
                          width=(nx * 0.02, ny * 0.02), proj="CAR", axes=[axis])
    return Map.from_geom(geom, data=counts)


def _ctao_child(npy, opts):
    """find_sources on a CTAO-like gammapy map, in this (fresh) process."""
    threads, cuda = _setup_torch(opts.get("threads"), opts.get("device", "cpu"))
    from astro_asid import conf, find_sources

    counts = np.load(npy)
    kw = {"detector": opts["detector"]}
    if opts["detector"].startswith("asid-") and opts.get("device", "cpu") != "cpu":
        kw["device"] = opts["device"]
    t0 = time.perf_counter()
    find_sources(_ctao_map(np.ascontiguousarray(counts[:, :128, :128])), **kw)
    t_load = time.perf_counter() - t0
    gmap = _ctao_map(counts)
    if opts.get("workers"):
        kw["workers"] = opts["workers"]
    with contextlib.ExitStack() as stack:
        if opts.get("patched"):
            stack.enter_context(conf.set_temp("patch_pixels", 1))
        if opts.get("patch_size"):
            stack.enter_context(conf.set_temp("patch_size", opts["patch_size"]))
        cat, m = _measured(lambda: find_sources(gmap, **kw), cuda)
    if opts.get("out"):
        _save_catalog(cat, opts["out"])
    return dict(m, n=len(cat), load=t_load, threads=threads, cuda=cuda, char=_char_state(cat),
                n_patches=cat.meta.get("n_patches"),
                duplicates=cat.meta.get("patch_duplicates"))


def ctao_table(shape, seed, detector, patch_size, workers, opts, header, tmp):
    """Part 6: a CTAO-like map in one pass, in patches serially, and on a local cluster."""
    ny, nx = shape
    t0 = time.perf_counter()
    counts, n_src = simulate_ctao_map(ny, nx, seed)
    t_sim = time.perf_counter() - t0
    npy = os.path.join(tmp, "ctao.npy")
    np.save(npy, counts)
    del counts
    base = dict(opts, detector=detector, patch_size=patch_size)
    runs = {f"one pass, torch threads {opts.get('threads') or 'default'}": dict(base),
            "patches, serial, 1 thread": dict(base, threads=1, patched=True)}
    if workers:
        runs[f"patches, workers={workers} (cluster started by find_sources)"] = dict(
            base, workers=workers)
    rows = {}
    for i, (label, o) in enumerate(runs.items()):
        o["out"] = os.path.join(tmp, f"ctao_{i}.npz")
        rows[label] = run_fresh(_ctao_child, npy, o)
    print(f"\n## Part 6: a {ny}x{nx} CTAO-like map ({header})")
    print(f"\n3 bands, {n_src} point sources (simulated in {t_sim:.1f} s), a gammapy WcsNDMap; "
          f"find_sources(map, detector={detector!r}) with the default characterisation, "
          f"patch cores of {patch_size or 'conf.patch_size'} px; each run a fresh process, "
          "warmed up on a 128x128 corner (load + warm-up, not in the wall time). Identity: "
          "against the serial patched one-thread catalogue (x, y, score, sky position, row "
          "order, bit for bit).")
    ref_label = "patches, serial, 1 thread"
    ref = _load_cat(runs[ref_label]["out"]) if "error" not in rows[ref_label] else None
    cuda = any(r.get("cuda") for r in rows.values())
    gh, gs = _gpu_head(cuda)
    print("\n| run | torch threads | characterised | patches | duplicates merged | sources | "
          "load + warm-up (s) | wall (s) | RSS before (MiB) | peak RSS (MiB) | growth (MiB)"
          + gh + " vs serial patches |")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + gs + "---|")
    for label, r in rows.items():
        if "error" in r:
            print(f"| {label} | failed: {r['error']} |")
            continue
        desc = "(reference)" if label == ref_label else (
            "n/a" if ref is None else compare_catalogs(_load_cat(runs[label]["out"]), ref)[1])
        threads = f"{r['threads']}" + (" (patches: 1 per worker)" if "workers" in runs[label]
                                       else "")
        print(f"| {label} | {threads} | {r['char']} | {r['n_patches'] or 'none'} | "
              f"{_fmt(r['duplicates'], 'd') if r['duplicates'] is not None else 'n/a'} | "
              f"{r['n']} | {r['load']:.1f} | {r['wall']:.1f} | {_row_mem(r)} | {desc} |")
    if workers:
        print(f"\nPeak RSS of the workers run is the calling process's; the {workers} "
              "workers' is not measured.")
    return rows


# -- main ----------------------------------------------------------------------------------
def simulate_field(size, seed):
    """One moderate ``size x size`` field: (image, truth x, truth y, FWHM, seconds)."""
    from astro_asid.simulate.optical import OpticalSkySimulator

    t0 = time.perf_counter()
    f = OpticalSkySimulator(shape=(size, size), crowding="moderate",
                            seed=np.random.default_rng([20_000 + seed])).sample()
    return (f.image, np.asarray(f.truth["x"]), np.asarray(f.truth["y"]), float(f.meta["fwhm"]),
            time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096],
                        help="sides of the square fields of part 1 (px)")
    parser.add_argument("--finders", nargs="+", choices=FINDERS, default=list(FINDERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="torch device of asid-optical (and of the Fermi detector)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of the measured processes (default: torch's own)")
    parser.add_argument("--dist-size", type=int,
                        help="side of the field of part 2 (default: the largest of --sizes)")
    parser.add_argument("--workers", type=int, default=2, help="dask workers of part 2")
    parser.add_argument("--dist-characterize", action="store_true",
                        help="part 2 with the default characterisation (default: without)")
    parser.add_argument("--mosaic-size", type=int, default=20000, help="side of the mosaic (px)")
    parser.add_argument("--mosaic-tile", type=int, default=2048,
                        help="side of the simulated field tiled into the mosaic (px; at most "
                             "the simulated size)")
    parser.add_argument("--mosaic-workers", type=int,
                        help="run the mosaic on a local cluster of this many workers")
    parser.add_argument("--mosaic-finders", nargs="*", choices=("sep", "dao"), default=[],
                        help="also run these classical finders on the mosaic, in memory")
    parser.add_argument("--mosaic-source", nargs="*", choices=("dask", "fits"),
                        default=["dask", "fits"], help="mosaic inputs of part 3")
    parser.add_argument("--tune-size", type=int, default=2048,
                        help="side of the field of part 5 (px)")
    parser.add_argument("--tune-threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads tried in part 5")
    parser.add_argument("--tune-batch", type=int, nargs="+", default=[2, 4, 8, 16, 32],
                        help="asid-optical batch sizes (tiles per forward pass) of part 5")
    parser.add_argument("--tune-repeats", type=int, default=3,
                        help="rounds over the configurations of part 5")
    parser.add_argument("--allsky-nside", type=int, default=256)
    parser.add_argument("--allsky-seed", type=int, default=1)
    parser.add_argument("--allsky-workers", type=int, default=2,
                        help="workers of the local cluster of part 4 (0: serial runs only)")
    parser.add_argument("--allsky-tiles", default="",
                        help="subset of the all-sky tiles, 'a:b' or 'i,j,k' (default: all)")
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"),
                        help="where the all-sky simulation is cached")
    parser.add_argument("--skip-sizes", action="store_true", help="skip part 1")
    parser.add_argument("--skip-distributed", action="store_true", help="skip part 2")
    parser.add_argument("--skip-mosaic", action="store_true", help="skip part 3")
    parser.add_argument("--skip-allsky", action="store_true", help="skip part 4")
    parser.add_argument("--skip-tuning", action="store_true", help="skip part 5")
    parser.add_argument("--ctao-size", type=int, nargs=2, default=[1024, 4096],
                        metavar=("NY", "NX"), help="shape of the CTAO-like map of part 6")
    parser.add_argument("--ctao-detector", default="asid-ctao",
                        help="detector of part 6 (default asid-ctao)")
    parser.add_argument("--ctao-patch-size", type=int,
                        help="patch cores of part 6 (px; default conf.patch_size)")
    parser.add_argument("--ctao-workers", type=int, default=2,
                        help="workers of the local cluster of part 6 (0: serial runs only)")
    parser.add_argument("--skip-ctao", action="store_true", help="skip part 6")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    header = device_line(args.device, args.threads)
    print(f"# {header}")
    opts = {"threads": args.threads, "device": args.device}
    sizes = sorted(set(args.sizes))
    dist_size = args.dist_size or max(sizes)
    need = []
    if not args.skip_sizes:
        need += sizes
    if not args.skip_distributed:
        need.append(dist_size)
    optical_max = max(need) if need else 0
    tile = min(args.mosaic_tile, optical_max or args.mosaic_tile, args.mosaic_size)
    if not args.skip_mosaic:
        need.append(tile)
    if not args.skip_tuning:
        need.append(args.tune_size)

    with tempfile.TemporaryDirectory() as tmp:
        paths, fields = {}, {"n_true": {}}
        if need:
            big = max(need)
            image, tx, ty, fields["fwhm"], t_sim = simulate_field(big, args.seed)
            print(f"\nOne {big}x{big} moderate field simulated in {t_sim:.1f} s "
                  f"(FWHM {fields['fwhm']:.2f} px, {len(tx)} sources); smaller sizes are "
                  "its corners.")
            for s in set(need):
                paths[s] = os.path.join(tmp, f"field_{s}.npy")
                np.save(paths[s], np.ascontiguousarray(image[:s, :s]))
                fields["n_true"][s] = int(((tx < s - 0.5) & (ty < s - 0.5)).sum())
            del image
        if not args.skip_sizes:
            scaling_table(sizes, args.finders, paths, fields, opts, header)
        if not args.skip_distributed:
            distributed_table(dist_size, paths[dist_size], fields, opts, args.workers,
                              args.dist_characterize, tmp, header)
        if not args.skip_mosaic:
            mosaic_table(args.mosaic_size, tile, paths[tile], args.seed, opts,
                         args.mosaic_workers, header, args.mosaic_source, tmp,
                         args.mosaic_finders, fields["fwhm"])
        if not args.skip_tuning:
            tuning_table(args.tune_size, paths[args.tune_size], args.tune_threads,
                         args.tune_batch, args.tune_repeats, opts, header)
    if args.skip_allsky:
        print("\n## Part 4: full-sky Fermi-LAT map skipped (--skip-allsky)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            allsky_table(args.allsky_nside, args.allsky_seed, args.workdir, args.allsky_tiles,
                         opts, header, args.allsky_workers, tmp)
    if args.skip_ctao:
        print("\n## Part 6: CTAO mosaic skipped (--skip-ctao)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ctao_table(args.ctao_size, args.seed, args.ctao_detector, args.ctao_patch_size,
                       args.ctao_workers, opts, header, tmp)
    print(f"\n# total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

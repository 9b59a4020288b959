"""Write simulated Fermi-LAT patches and their truth tables to disk, and read them back.

A data set is a directory with

* ``patches.npz``: ``counts`` ``(n, 5, 64, 64)`` (uint16 when every count
  fits, else int32), ``lon``, ``lat`` (patch centres, deg), ``energy_edges_gev``,
  and, with ``save_expected=True``, ``expected`` and ``background`` (float32);
* ``truth.ecsv``: one row per source inside a patch, with a ``patch`` column
  and the columns of `~astro_asid.simulate.PatchBatch.sources`;
* ``meta.json``: the simulator's settings and the package version.
"""

import json
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

__all__ = ["write_dataset", "read_dataset"]


def write_dataset(path, n, background="b1", exposure_scale=1.0, luminosity="flat", seed=0,
                  background_scale=1.0, batch_size=256, save_expected=False, overwrite=False,
                  progress=False, **kwargs):
    """Simulate ``n`` patches and write them to the directory ``path``.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Output directory (created).
    n : int
        Number of patches.
    background, exposure_scale, luminosity, seed, background_scale
        As in `~astro_asid.simulate.FermiSkySimulator`; other keyword
        arguments are passed to it too.
    batch_size : int, optional
        Patches simulated at once (memory).
    save_expected : bool, optional
        Also store the expected counts and background (4x larger files).
    overwrite : bool, optional
        Replace an existing data set.
    progress : bool, optional
        Show a tqdm progress bar.

    Returns
    -------
    `~pathlib.Path`
        The directory.
    """
    from astro_asid.simulate.fermi import FermiSkySimulator
    n = int(n)
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    path = Path(path)
    if (path / "patches.npz").exists() and not overwrite:
        raise FileExistsError(f"{path / 'patches.npz'} exists; pass overwrite=True to replace it")
    path.mkdir(parents=True, exist_ok=True)
    sim = FermiSkySimulator(background=background, exposure_scale=exposure_scale,
                            luminosity=luminosity, seed=seed, background_scale=background_scale,
                            **kwargs)
    counts, expected, bkg, lon, lat, truths = [], [], [], [], [], []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="simulating", unit="batch")
    for s0 in starts:
        m = min(batch_size, n - s0)
        b = sim.sample_patches(m)
        counts.append(b.counts)
        if save_expected:
            expected.append(b.expected)
            bkg.append(b.background)
        lon.append(b.lon)
        lat.append(b.lat)
        t = b.truth()
        if len(t):
            t["patch"] += s0
        truths.append(t)
    counts = np.concatenate(counts)
    dtype = np.uint16 if counts.max() < 65536 else np.int32
    arrays = dict(counts=counts.astype(dtype), lon=np.concatenate(lon), lat=np.concatenate(lat),
                  energy_edges_gev=sim.energy_edges.to_value("GeV"))
    if save_expected:
        arrays.update(expected=np.concatenate(expected), background=np.concatenate(bkg))
    np.savez(path / "patches.npz", **arrays)
    truth = vstack([t for t in truths if len(t)]) if any(len(t) for t in truths) else Table()
    truth.write(path / "truth.ecsv", overwrite=True)
    from astro_asid import __version__
    meta = dict(n=n, background=sim.background, exposure_scale=sim.exposure_scale,
                luminosity=luminosity, seed=seed, background_scale=background_scale,
                npix=sim.npix, cdelt_deg=sim.cdelt, crpix=32.75 * sim.npix / 64,
                projection="GLON-CAR/GLAT-CAR centred on (lon, lat)",
                astro_asid_version=__version__, extra=kwargs)
    (path / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def read_dataset(path):
    """Read a data set written by `write_dataset`.

    Returns
    -------
    arrays : dict
        The arrays of ``patches.npz`` (``counts`` as float32).
    truth : `~astropy.table.Table`
    meta : dict
    """
    path = Path(path)
    if not (path / "patches.npz").is_file():
        raise FileNotFoundError(f"no simulated data set in {path} (patches.npz missing)")
    with np.load(path / "patches.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["counts"] = arrays["counts"].astype(np.float32)
    truth = Table.read(path / "truth.ecsv")
    meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
    return arrays, truth, meta

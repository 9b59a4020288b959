"""Rebuild the shipped background templates from the data challenge.

Run ``python -m astro_asid.simulate.build_templates [--challenge-dir DIR]
[--out DIR]``. It writes

* ``fermi_b1_hpx128.npz``: the challenge's ``background`` patches (B1) as a
  HEALPix nside-128 map of counts per deg^2, stored as natural log in float16;
* ``fermi_b3_params.npz``: the parameters of the analytic B3 large-scale model,
  fitted per band to B1 smoothed over 2 deg.

Only the ``background`` array of the challenge is read (allowed by the
challenge rules: it is the B1 interstellar model); never ``agn``, ``psr`` or
the truth list.

The B1 map is the least-squares solution (relative errors) of "bilinear
HEALPix interpolation at every pixel centre of the 768 patches = the patch
value / pixel area", started from point samples of the most central patch
and solved with LSQR, so that the simulator re-samples the challenge patches
as closely as nside 128 allows.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .background import B1_FILE, B3_FILE, B3_PARAM_NAMES, b3_large_scale
from .healpix import PATCH_CDELT, HealpixTemplate, patch_pixel_grid, patch_sky_to_pixel

__all__ = ["build_b1", "fit_b3", "main"]

NSIDE_B1 = 128


def _initial_b1(background, lon_c, lat_c, nside):
    """Point samples: each HEALPix centre from the patch in which it is most central."""
    import healpy as hp
    from scipy.ndimage import map_coordinates
    npix = hp.nside2npix(nside)
    lon, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    p0 = hp.ang2pix(8, lon, lat, lonlat=True)
    cands = np.vstack([p0[None], hp.get_all_neighbours(8, p0)])
    best = np.full(npix, np.inf)
    patch = p0.copy()
    for c in cands:
        ok = c >= 0
        x, y = patch_sky_to_pixel(lon_c[c], lat_c[c], lon, lat)
        d = np.maximum(np.abs(x - 31.75), np.abs(y - 31.75))
        better = ok & (d < best)
        best[better] = d[better]
        patch[better] = c[better]
    x, y = patch_sky_to_pixel(lon_c[patch], lat_c[patch], lon, lat)
    out = np.empty((background.shape[1], npix))
    for p in np.unique(patch):
        m = patch == p
        for b in range(background.shape[1]):
            out[b, m] = map_coordinates(background[p, b].astype(float), [y[m], x[m]], order=1,
                                        mode="nearest")
    return out / PATCH_CDELT ** 2


def build_b1(background, lon_c, lat_c, nside=NSIDE_B1, iter_lim=150, verbose=True):
    """Fit the HEALPix B1 density map to the challenge background patches.

    Parameters
    ----------
    background : `~numpy.ndarray`
        ``(768, 5, 64, 64)`` expected background counts per patch pixel.
    lon_c, lat_c : `~numpy.ndarray`
        Patch centres, deg.

    Returns
    -------
    maps : `~numpy.ndarray`
        ``(5, 12 nside^2)`` counts deg^-2.
    stats : dict
        Median and 99th-percentile relative error of the re-sampled patches per band.
    """
    import healpy as hp
    import scipy.sparse as sp
    from scipy.sparse.linalg import lsqr
    x0 = _initial_b1(background, lon_c, lat_c, nside)
    npix = hp.nside2npix(nside)
    lon, lat = patch_pixel_grid(lon_c, lat_c)
    pix, w = hp.get_interp_weights(nside, lon.ravel(), lat.ravel(), lonlat=True)
    n = lon.size
    rows = np.repeat(np.arange(n)[None], 4, axis=0)
    a = sp.csr_matrix((w.ravel(), (rows.ravel(), pix.ravel())), shape=(n, npix))
    out = np.empty((background.shape[1], npix), np.float32)
    stats = {"median": [], "p99": []}
    for b in range(background.shape[1]):
        t0 = time.time()
        d = (background[:, b] / PATCH_CDELT ** 2).ravel().astype(float)
        if np.any(d <= 0):
            raise ValueError("background patches must be > 0 everywhere")
        aw = (sp.diags(1.0 / d) @ a).tocsr()
        sol = lsqr(aw, np.ones(n) - aw @ x0[b], iter_lim=iter_lim, atol=1e-7, btol=1e-7)[0]
        x = np.clip(x0[b] + sol, 1e-3 * d.min(), None)
        rel = np.abs(a @ x / d - 1)
        stats["median"].append(float(np.median(rel)))
        stats["p99"].append(float(np.percentile(rel, 99)))
        out[b] = x
        if verbose:
            print(f"B1 band {b}: median |rel err| {stats['median'][-1]:.4f}, "
                  f"p99 {stats['p99'][-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    return out, stats


def fit_b3(b1_maps, nside_fit=64, smooth_deg=2.0):
    """Fit the analytic B3 large-scale model per band to smoothed B1 (log least squares)."""
    import healpy as hp
    from scipy.optimize import least_squares
    from .background import _smooth_log
    low = np.exp(_smooth_log(b1_maps, smooth_deg))
    low = np.array([hp.ud_grade(m, nside_fit) for m in low])
    lon, lat = hp.pix2ang(nside_fit, np.arange(hp.nside2npix(nside_fit)), lonlat=True)
    params = []
    for m in low:
        iso = np.percentile(m, 5)
        p0 = [np.log(iso), np.log(m.max() * 0.5), 40.0, 2.0, np.log(iso), 15.0,
              np.log(iso), 20.0]
        res = least_squares(lambda p: np.log(b3_large_scale(p, lon, lat)) - np.log(m), p0,
                            method="lm", max_nfev=4000)
        params.append(res.x)
    return np.array(params)


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    from astro_asid.evaluate.challenge import find_challenge_dir
    ap = argparse.ArgumentParser(prog="python -m astro_asid.simulate.build_templates",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--challenge-dir", default=None, help="data-challenge directory")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data"),
                    help="output directory (default: the package's data/)")
    ap.add_argument("--iter-lim", type=int, default=150, help="LSQR iterations per band")
    args = ap.parse_args(argv)
    d = find_challenge_dir(args.challenge_dir)
    with np.load(d / "patches_catalog400.npz") as f:
        bkg = np.moveaxis(f["background"], -1, 1)
        lon_c, lat_c = f["patch_lon"], f["patch_lat"]
    maps, stats = build_b1(bkg, lon_c, lat_c, iter_lim=args.iter_lim)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / B1_FILE, log_density=np.log(maps).astype(np.float16),
                        nside=NSIDE_B1, energy_edges_gev=[0.5, 1, 2, 7, 20, 200],
                        median_rel_err=stats["median"], p99_rel_err=stats["p99"],
                        unit="counts deg-2 (data-challenge exposure, ~9.5 yr)")
    # B3 is fitted to the float16-rounded map that is shipped.
    shipped = np.exp(np.log(maps).astype(np.float16).astype(np.float32))
    params = fit_b3(shipped)
    np.savez_compressed(out / B3_FILE, params=params, names=np.array(B3_PARAM_NAMES))
    print("B3 parameters per band:", *B3_PARAM_NAMES)
    for p in params:
        print("  ", np.array2string(p, precision=3))
    # Check the shipped file reproduces the challenge patches.
    t = HealpixTemplate(shipped)
    lon, lat = patch_pixel_grid(lon_c, lat_c)
    rec = np.moveaxis(t(lon, lat), 0, 1) * PATCH_CDELT ** 2
    rel = np.abs(rec / bkg - 1)
    print("shipped map vs challenge patches, median |rel err| per band:",
          np.round(np.median(rel, axis=(0, 2, 3)), 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())

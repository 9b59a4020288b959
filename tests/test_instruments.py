"""Tests of the instrument adapters: HEALPix all-sky tiling (Fermi-LAT) and gammapy (CTAO)."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs.utils import pixel_to_skycoord

hp = pytest.importorskip("healpy")

from astro_asid.catalog import validate_catalog  # noqa: E402
from astro_asid.instruments import merge  # noqa: E402
from astro_asid.instruments.fermi import (FermiHealpixAdapter, HealpixCube,  # noqa: E402
                                          HealpixTiling, fermi_psf_sigma_deg,
                                          find_sources_healpix, read_healpix_cube)
from astro_asid.utils.exceptions import ASIDInputWarning, ASIDWarning  # noqa: E402

EDGES = [0.5, 1, 2, 7, 20, 200] * u.GeV


# -- merging -------------------------------------------------------------------------------
def test_merge_keeps_best_score_across_tiles():
    keep, into, n = merge.merge_duplicates([10.0, 10.05, 20.0], [5.0, 5.02, 5.0],
                                           [0.4, 0.8, 0.5], [1, 2, 1], radius=0.2)
    assert keep.tolist() == [False, True, True]
    assert into.tolist() == [1, 1, 2]
    assert n.tolist() == [0, 2, 1]


def test_merge_never_merges_within_one_tile():
    keep, _, _ = merge.merge_duplicates([10.0, 10.05], [5.0, 5.0], [0.4, 0.8], [3, 3],
                                        radius=0.2)
    assert keep.all()


def test_merge_close_real_pair_seen_in_two_tiles():
    # two real sources 0.15 deg apart, both found in tiles 0 and 1: one each must survive
    lon = [30.0, 30.15, 30.005, 30.152]
    keep, into, n = merge.merge_duplicates(lon, [0.0] * 4, [0.9, 0.5, 0.8, 0.6], [0, 0, 1, 1],
                                           radius=0.3)
    assert keep.sum() == 2
    kept = np.asarray(lon)[keep]
    assert np.isclose(kept.min(), 30.0, atol=0.01) and np.isclose(kept.max(), 30.15, atol=0.01)
    assert n[keep].tolist() == [2, 2]


def test_merge_min_separation_floor():
    lon, lat = [10.0, 10.1, 10.5], [0.0, 0.0, 0.0]
    keep, into, n = merge.merge_duplicates(lon, lat, [0.5, 0.6, 0.4], [2, 2, 2], radius=0.3)
    assert keep.all()
    keep, into, n = merge.merge_duplicates(lon, lat, [0.5, 0.6, 0.4], [2, 2, 2], radius=0.3,
                                           min_separation=0.2 * u.deg)
    assert keep.tolist() == [False, True, True] and into.tolist() == [1, 1, 2]
    assert n.tolist() == [0, 2, 1]


def test_merge_wraps_longitude_and_checks_input():
    keep, _, _ = merge.merge_duplicates([359.98, 0.03], [0.0, 0.0], [0.2, 0.3], [0, 1], 0.1)
    assert keep.tolist() == [False, True]
    with pytest.raises(ValueError, match="same length"):
        merge.merge_duplicates([1.0], [1.0, 2.0], [1.0], [0])
    with pytest.raises(ValueError, match="radius"):
        merge.merge_duplicates([1.0], [1.0], [1.0], [0], radius=-1)
    pairs, sep = merge.close_pairs([0.0, 0.1, 5.0], [0.0, 0.0, 0.0], 0.2 * u.deg)
    assert pairs.tolist() == [[0, 1]] and np.allclose(sep, 0.1)


# -- tiling geometry -----------------------------------------------------------------------
@pytest.mark.parametrize("tile", [0, 100, 383, 600, 767])
def test_tiling_matches_astropy_wcs(tile):
    tiling = HealpixTiling(64)
    rng = np.random.default_rng(tile)
    x, y = rng.uniform(-0.5, 63.5, (2, 40))
    lon, lat = tiling.pixel_to_sky(np.full(40, tile), x, y)
    ref = pixel_to_skycoord(x, y, tiling.wcs(tile), origin=0)
    assert ref.separation(SkyCoord(lon, lat, unit="deg", frame="galactic")).deg.max() < 1e-9
    x2, y2 = tiling.sky_to_pixel(np.full(40, tile), lon, lat)
    assert np.allclose(x2, x, atol=1e-8) and np.allclose(y2, y, atol=1e-8)


def test_tiling_challenge_geometry_and_central_excess():
    tiling = HealpixTiling(256)
    assert tiling.n_tiles == 768 and tiling.crpix == 32.75
    w = tiling.wcs(5)
    assert list(w.wcs.cdelt) == [-10 / 64, 10 / 64] and list(w.wcs.ctype) == ["GLON-CAR",
                                                                               "GLAT-CAR"]
    lon0, lat0 = hp.pix2ang(8, np.arange(768), lonlat=True)
    assert np.allclose(tiling.lon0, lon0) and np.allclose(tiling.lat0, lat0)
    # a tile centre is owned by its tile; seen from a neighbour tile, it is off-centre by
    # the neighbour's Chebyshev distance to it
    ex = tiling.central_excess(np.array([300]), [tiling.lon0[300]], [tiling.lat0[300]])
    assert ex[0] == 0
    nb = hp.get_all_neighbours(8, 300)[0]
    x, y = tiling.sky_to_pixel(np.array([nb]), [tiling.lon0[300]], [tiling.lat0[300]])
    ex = tiling.central_excess(np.array([nb]), [tiling.lon0[300]], [tiling.lat0[300]])
    assert np.isclose(ex[0], max(abs(x[0] - 31.75), abs(y[0] - 31.75))) and ex[0] > 20


@pytest.mark.parametrize("nest", [False, True])
def test_overlap_table_symmetry_matches_direct_computation(nest):
    # the table is built for tiles at lon < 90 deg and rotated by quarter turns
    tiling = HealpixTiling(32, nest=nest, tiles=[4, 6, 300, 330, 767], supersample=3)
    w = tiling.weights
    direct = tiling._tile_tables(tiling.rot)
    for i, tab in enumerate(direct):
        sel = w["row"] // tiling.tile_npix ** 2 == i
        got = sorted(zip(w["row"][sel] % tiling.tile_npix ** 2, w["col"][sel],
                         np.round(w["prob"][sel], 6)))
        want = sorted(zip(tab["pix"], tab["col"], np.round(tab["prob"], 6)))
        assert got == want


def test_pixel_errors_projected_on_lon_lat():
    from astro_asid.instruments.fermi import _errors_lonlat

    tiling = HealpixTiling(64)
    cd = tiling.tile_cdelt
    # at the centre of an equatorial tile, x is -longitude and y is latitude
    err, _ = _errors_lonlat(tiling, np.array([383]), np.array([31.75]), np.array([31.75]),
                            np.array([2.0]), np.array([0.0]), "galactic")
    assert np.allclose(err, [[2 * cd, 0.0]], atol=1e-9)
    # off-centre in a polar tile the axes are rotated, but a circular error stays circular
    err, _ = _errors_lonlat(tiling, np.array([0, 0]), np.array([5.0, 60.0]),
                            np.array([50.0, 10.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]),
                            "galactic")
    theta = np.deg2rad(cd * (np.array([50.0, 10.0]) + 1 - tiling.crpix))
    assert np.allclose(err[:, 1], cd, rtol=0.01) and np.allclose(err[:, 0], cd, rtol=0.01)
    err, _ = _errors_lonlat(tiling, np.array([0]), np.array([5.0]), np.array([50.0]),
                            np.array([1.0]), np.array([0.0]), "galactic")
    assert err[0, 1] > 0.1 * cd  # the x axis is not along longitude there
    assert np.isclose(np.hypot(*err[0]), cd * np.cos(theta[0]), rtol=1e-6)


def _uniform_tiles(method, mu=40.0, seed=1):
    nside = 128
    tiling = HealpixTiling(nside, tiles=[300, 301])
    counts = np.random.default_rng(seed).poisson(mu, (1, hp.nside2npix(nside))).astype(float)
    return tiling, counts, tiling.resample(counts, method, rng=seed)


def test_split_resampling_gives_poisson_pixels():
    tiling, counts, tiles = _uniform_tiles("split")
    inner = tiles[:, 0, 8:56, 8:56]
    assert np.all(inner == np.round(inner))
    expected = 40.0 * tiling.tile_cdelt ** 2 / (4 * np.pi * (180 / np.pi) ** 2 / counts.size)
    assert abs(inner.mean() / expected - 1) < 0.02
    # independent Poisson pixels: variance equals the mean (index of dispersion ~1)
    assert abs(inner.var() / inner.mean() - 1) < 0.1


def test_area_resampling_is_smooth_and_under_dispersed():
    _, _, tiles = _uniform_tiles("area")
    inner = tiles[:, 0, 8:56, 8:56]
    assert inner.var() / inner.mean() < 0.7
    assert np.any(inner != np.round(inner))


@pytest.mark.parametrize("method", ["split", "area"])
def test_resampling_conserves_counts_of_interior_pixels(method):
    nside = 256
    tiling = HealpixTiling(nside, tiles=[400])
    counts = np.zeros((2, hp.nside2npix(nside)))
    pix = hp.ang2pix(nside, tiling.lon0[0] + 1.0, tiling.lat0[0] - 0.5, lonlat=True)
    counts[0, pix] = 1234
    counts[1, hp.get_all_neighbours(nside, pix)] = 7
    tiles = tiling.resample(counts, method, rng=3)
    assert np.isclose(tiles[0, 0].sum(), 1234, rtol=1e-6)
    assert np.isclose(tiles[0, 1].sum(), 8 * 7, rtol=1e-6)
    # the counts land where the HEALPix pixel is
    iy, ix = np.unravel_index(np.argmax(tiles[0, 0]), tiles.shape[2:])
    x, y = tiling.sky_to_pixel(np.array([0]), *hp.pix2ang(nside, pix, lonlat=True))
    assert abs(ix - x[0]) <= 1.5 and abs(iy - y[0]) <= 1.5


def test_split_rejects_non_integer_counts():
    tiling = HealpixTiling(64, tiles=[0])
    with pytest.raises(ValueError, match="integer"):
        tiling.resample(np.full((1, hp.nside2npix(64)), 0.5), "split")
    with pytest.raises(ValueError, match="resample"):
        tiling.resample(np.zeros((1, hp.nside2npix(64))), "bilinear")


def test_psf_default_widths():
    sig = fermi_psf_sigma_deg()
    assert sig.shape == (5,) and np.all(np.diff(sig) < 0)
    assert np.allclose(sig[0], 0.96 / 1.5096, rtol=0.03)
    # coarser HEALPix pixels blur more
    assert np.all(fermi_psf_sigma_deg(nside=64) > sig)
    with pytest.raises(ValueError, match="energy_edges"):
        fermi_psf_sigma_deg(n_bands=3)


# -- inputs --------------------------------------------------------------------------------
def test_healpix_cube_validation():
    npix = hp.nside2npix(16)
    with pytest.raises(ValueError, match="shape"):
        HealpixCube(np.zeros((2, npix + 1)), nside=16)
    with pytest.raises(ValueError, match="nside"):
        HealpixCube(np.zeros((1, npix)), nside=12, nest=True)
    with pytest.raises(ValueError, match="frame"):
        HealpixCube(np.zeros((1, npix)), nside=16, frame="ecliptic")
    with pytest.raises(ValueError, match="energy edges"):
        HealpixCube(np.zeros((2, npix)), nside=16, energy_edges=[1, 2] * u.GeV)
    with pytest.raises(ValueError, match="masked"):
        HealpixCube(np.full((1, npix), np.nan), nside=16)
    cube = HealpixCube(np.ones((2, npix)), nside=16, exposure=[1e11, 2e11, 3e11] * u.m ** 2 * u.s)
    # exposure given at the 3 edges of 2 bands: geometric means, in cm2 s
    assert np.allclose(cube.exposure[:, 0], np.sqrt([2.0, 6.0]) * 1e15)


def _write_healpy(path, data, nest, edges):
    hp.write_map(str(path), data, nest=nest, coord="G", overwrite=True, dtype=np.float64)
    cols = [fits.Column("CHANNEL", "J", array=np.arange(1, len(edges))),
            fits.Column("E_MIN", "D", unit="keV", array=edges[:-1].to_value("keV")),
            fits.Column("E_MAX", "D", unit="keV", array=edges[1:].to_value("keV"))]
    with fits.open(path, mode="append") as hdul:
        hdul.append(fits.BinTableHDU.from_columns(cols, name="EBOUNDS"))


@pytest.mark.parametrize("layout", ["fgst-ccube", "gadf", "healpy"])
@pytest.mark.parametrize("nest", [False, True])
def test_read_fits_layouts(tmp_path, layout, nest):
    from gammapy.maps import HpxGeom, Map, MapAxis

    edges = [1, 3, 10] * u.GeV
    rng = np.random.default_rng(0)
    data = rng.poisson(3, (2, hp.nside2npix(8))).astype(float)
    path = tmp_path / f"map_{layout}.fits"
    if layout == "healpy":
        _write_healpy(path, data, nest, edges)
    else:
        axis = MapAxis.from_energy_edges(edges, name="energy")
        m = Map.from_geom(HpxGeom.create(nside=8, nest=nest, frame="galactic", axes=[axis]))
        m.data = data
        m.write(path, format=layout)
    cube = read_healpix_cube(path)
    assert cube.nside == 8 and cube.nest == nest and cube.frame == "galactic"
    assert np.allclose(cube.data, data)
    assert np.allclose(cube.energy_edges.to_value(u.GeV), edges.value)
    assert FermiHealpixAdapter().accepts(str(path))


def test_partial_sky_hpx_map_is_masked_outside():
    from gammapy.maps import HpxGeom, Map

    geom = HpxGeom.create(nside=16, frame="galactic", region="DISK(30,10,20)")
    m = Map.from_geom(geom)
    m.data += 2.0
    cube = HealpixCube.from_map(m)
    assert cube.n_bands == 1 and cube.npix == hp.nside2npix(16)
    inside = cube.data[0] == 2
    assert 0 < inside.sum() < cube.npix and np.all(cube.mask[0] == ~inside)


def test_adapter_accepts():
    from gammapy.maps import HpxGeom, Map, WcsGeom

    adapter = FermiHealpixAdapter()
    npix = hp.nside2npix(4)
    assert adapter.accepts(HealpixCube(np.ones(npix), nside=4))
    assert adapter.accepts({"counts": np.ones(npix), "nside": 4})
    assert adapter.accepts(Map.from_geom(HpxGeom.create(nside=4)))
    assert not adapter.accepts(Map.from_geom(WcsGeom.create(npix=10)))
    assert not adapter.accepts(np.ones((5, npix)))
    assert not adapter.accepts("no_such_file.fits")
    with pytest.raises(ValueError, match="wcs"):
        adapter.find_sources(HealpixCube(np.ones(npix), nside=4), wcs=object())


# -- end to end on a small all-sky map ------------------------------------------------------
NSIDE = 128
TILES = [300] + sorted(int(t) for t in hp.get_all_neighbours(8, 300)[[0, 2, 4]])
def _sky(sources, sigma_deg=0.3, background=1.0, seed=0, bands=1):
    """Poisson HEALPix map: flat background + Gaussian point sources (counts per band)."""
    npix = hp.nside2npix(NSIDE)
    vec = np.array(hp.pix2vec(NSIDE, np.arange(npix)))
    model = np.full((bands, npix), background)
    for lon, lat, c in sources:
        d = np.arccos(np.clip(hp.ang2vec(lon, lat, lonlat=True) @ vec, -1, 1))
        prof = np.exp(-0.5 * (np.rad2deg(d) / sigma_deg) ** 2)
        model += c * prof / prof.sum()
    return np.random.default_rng(seed).poisson(model).astype(float)


@pytest.fixture(scope="module")
def overlap_sources():
    """Two positions each well inside (>6 px from the edge) two or more of the tiles, and
    the centre of the first tile."""
    tiling = HealpixTiling(NSIDE, tiles=TILES)
    yy, xx = np.mgrid[4:60:2, 4:60:2].reshape(2, -1).astype(float)
    first = int(np.flatnonzero(tiling.grid_index == TILES[0])[0])
    lon, lat = tiling.pixel_to_sky(np.full(xx.size, first), xx, yy)
    inside = np.zeros(xx.size, int)
    for t in range(tiling.n_tiles):
        x, y = tiling.sky_to_pixel(np.full(xx.size, t), lon, lat)
        inside += np.maximum(np.abs(x - 31.75), np.abs(y - 31.75)) < 25
    cand = np.flatnonzero(inside >= 2)
    picks = [cand[0]]
    for i in cand[1:]:
        if merge.angular_separation_deg(lon[i], lat[i], lon[picks[0]], lat[picks[0]]) > 3:
            picks.append(i)
            break
    assert len(picks) == 2
    centre = (float(tiling.lon0[first]), float(tiling.lat0[first]))
    return [(float(lon[i]), float(lat[i])) for i in picks] + [centre]


def test_find_sources_healpix_merges_overlaps(overlap_sources):
    counts = _sky([(lo, la, 400.0) for lo, la in overlap_sources])
    cat = find_sources_healpix(counts, nside=NSIDE, tiles=TILES, detector="tsmap",
                               psf_sigma_deg=0.3, ts_threshold=25)
    validate_catalog(cat)
    assert cat["sky_centroid"].frame.name == "galactic"
    assert np.all(cat["x_centroid"].mask) and np.all(cat["y_centroid"].mask)
    assert cat.meta["n_duplicates_merged"] >= 1
    truth = SkyCoord([s[0] for s in overlap_sources], [s[1] for s in overlap_sources],
                     unit="deg", frame="galactic")
    idx, sep, _ = truth.match_to_catalog_sky(cat["sky_centroid"])
    assert np.all(sep.deg < 0.1)
    # exactly one catalog entry per injected source: no duplicates within 0.5 deg
    near = [np.sum(cat["sky_centroid"].separation(t).deg < 0.5) for t in truth]
    assert near == [1, 1, 1]
    err = np.asarray(cat["sky_centroid_err"][idx].unmasked.to_value(u.deg))
    assert np.all((err > 0.005) & (err < 0.1))
    assert set(np.asarray(cat["tile"])) <= set(TILES)
    assert cat.meta["tiling"]["resample"] == "split"


def test_find_sources_dispatch_and_flux(overlap_sources):
    from astro_asid import find_sources
    from astro_asid.plugins.manager import get_registry

    reg = get_registry().adapters
    if "fermi-healpix" not in reg:  # until the built-in hook registers it
        reg.add(FermiHealpixAdapter())
    counts = _sky([(lo, la, 300.0) for lo, la in overlap_sources], bands=2, seed=5)
    exposure = np.array([2e10, 1e10])  # cm2 s per band
    cube = HealpixCube(counts, nside=NSIDE, energy_edges=[1, 3, 10] * u.GeV,
                       exposure=exposure)
    cat = find_sources(cube, detector="tsmap", tiles=TILES, psf_sigma_deg=0.3)
    validate_catalog(cat)
    assert len(cat) >= 3
    assert cat["flux"].unit == u.Unit("cm-2 s-1") and cat["counts"].unit == u.ct
    # F = C / sum_b f_b E_b for a power law of index 2.3
    e = np.array([1.0, 3.0, 10.0])
    f = (e[:-1] ** -1.3 - e[1:] ** -1.3)
    f /= f.sum()
    c = np.asarray(cat["counts"].unmasked.value)
    assert np.allclose(cat["flux"].unmasked.value, c / (f * exposure).sum(), rtol=1e-6)
    assert cat.meta["flux_band"] == "1-10 GeV"


def test_healpix_input_errors():
    npix = hp.nside2npix(NSIDE)
    with pytest.raises(TypeError, match="nside"):
        find_sources_healpix(np.zeros((1, npix)))
    neg = np.zeros((1, npix))
    neg[0, 5] = -1
    with pytest.raises(ValueError, match="negative"):
        find_sources_healpix(neg, nside=NSIDE, detector="tsmap", tiles=[0])
    with pytest.raises(ValueError, match="resample"):
        find_sources_healpix(np.zeros((1, npix)), nside=NSIDE, resample="cubic", tiles=[0])


def test_no_detection_gives_empty_catalog(overlap_sources):
    counts = _sky([overlap_sources[2] + (50.0,)], seed=4)
    cat = find_sources_healpix(counts, nside=NSIDE, tiles=TILES[:2], detector="tsmap",
                               psf_sigma_deg=0.3, ts_threshold=1e6)
    validate_catalog(cat)
    assert len(cat) == 0 and cat.meta["tiling"]["all_tiles"] is False
    assert cat["sky_centroid"].frame.name == "galactic"


def test_non_integer_map_falls_back_to_area(overlap_sources):
    counts = _sky([overlap_sources[2] + (500.0,)], seed=2) * 1.0 + 0.25
    with pytest.warns(ASIDInputWarning, match="area"):
        cat = find_sources_healpix(counts, nside=NSIDE, tiles=TILES[:1], detector="tsmap",
                                   psf_sigma_deg=0.3)
    assert cat.meta["tiling"]["resample"] == "area"
    assert len(cat) >= 1


# -- gammapy / CTAO ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_dataset():
    pytest.importorskip("gammapy")
    from gammapy.datasets import MapDataset
    from gammapy.irf import EDispKernelMap, PSFMap
    from gammapy.maps import MapAxis, WcsGeom
    from gammapy.modeling.models import (FoVBackgroundModel, PointSpatialModel,
                                         PowerLawSpectralModel, SkyModel)

    energy = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=2, name="energy")
    energy_true = MapAxis.from_energy_bounds("0.5 TeV", "20 TeV", nbin=3, name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), width=1.6,
                          binsz=0.04, frame="galactic", axes=[energy])
    ds = MapDataset.create(geom, energy_axis_true=energy_true, binsz_irf=0.5 * u.deg,
                           name="toy")
    ds.mask_safe.data[...] = True
    ds.exposure.quantity = np.full(ds.exposure.data.shape, 1e14) * u.Unit("cm2 s")
    ds.background.data[...] = 1.0
    ds.psf = PSFMap.from_gauss(energy_axis_true=energy_true, sigma=0.07 * u.deg,
                               geom=ds.psf.psf_map.geom.to_image())
    ds.edisp = EDispKernelMap.from_diagonal_response(
        energy_axis_true=energy_true, energy_axis=energy, geom=ds.edisp.edisp_map.geom.to_image())
    truth = [(0.35, 0.25, 1e-12), (-0.4, -0.15, 6e-13)]
    models = [SkyModel(PowerLawSpectralModel(index=2.2, amplitude=a * u.Unit("cm-2 s-1 TeV-1")),
                       PointSpatialModel(lon_0=lo * u.deg, lat_0=la * u.deg, frame="galactic"),
                       name=f"true-{i}") for i, (lo, la, a) in enumerate(truth)]
    ds.models = models + [FoVBackgroundModel(dataset_name="toy")]
    ds.fake(random_state=7)
    true_flux = [m.spectral_model.integral(1 * u.TeV, 10 * u.TeV).to_value("cm-2 s-1")
                 for m in models]
    ds.models = [FoVBackgroundModel(dataset_name="toy")]
    return ds, truth, true_flux


def test_dataset_to_sky_image_uses_irfs(toy_dataset):
    from astro_asid.instruments.ctao import dataset_to_sky_image

    ds, _, _ = toy_dataset
    image = dataset_to_sky_image(ds)
    assert image.n_bands == 2 and image.unit == u.ct
    assert np.allclose(image.background, ds.npred().data)
    assert np.allclose(image.psf["sigma_pix"], 0.07 / 0.04, rtol=0.02)
    assert np.allclose(image.exposure, 1e14, rtol=1e-6)
    assert np.allclose(image.energy_edges.to_value(u.TeV), [1, 10 ** 0.5, 10])


def test_estimator_and_models(toy_dataset):
    from gammapy.modeling.models import PointSpatialModel

    from astro_asid.instruments.ctao import (ASIDSourceEstimator, GammapyMapAdapter,
                                             find_sources_gammapy, to_gammapy_models)

    ds, truth, true_flux = toy_dataset
    est = ASIDSourceEstimator(detector="tsmap", ts_threshold=25)
    assert "ts_threshold=25" in repr(est)
    cat = est.run(ds)
    validate_catalog(cat)
    assert len(cat) == 2
    assert GammapyMapAdapter().accepts(ds) and not GammapyMapAdapter().accepts(cat)
    again = find_sources_gammapy(ds, detector="tsmap", ts_threshold=25)
    assert np.allclose(again["score"], cat["score"])
    pos = SkyCoord([t[0] for t in truth], [t[1] for t in truth], unit="deg", frame="galactic")
    idx, sep, _ = pos.match_to_catalog_sky(cat["sky_centroid"])
    assert np.all(sep.deg < 0.05)
    assert cat["flux"].unit == u.Unit("cm-2 s-1")
    flux = cat["flux"].unmasked.value[idx]
    err = cat["flux_err"].unmasked.value[idx]
    assert np.all(np.abs(flux - true_flux) < 4 * err)

    models = to_gammapy_models(cat)
    assert len(models) == 2 and models.names == ["asid-1", "asid-2"]
    m = models[0]
    assert isinstance(m.spatial_model, PointSpatialModel)
    assert np.isclose(m.spatial_model.lon_0.value, cat["sky_centroid"][0].l.wrap_at("360d").deg)
    # the power law integrates to the catalog flux over the catalog's band
    integral = m.spectral_model.integral(1 * u.TeV, 10 * u.TeV).to_value("cm-2 s-1")
    assert np.isclose(integral, cat["flux"][0].unmasked.value, rtol=1e-6)
    assert m.spatial_model.lat_0.error > 0


def test_models_extension_and_counts_warning(toy_dataset):
    from gammapy.modeling.models import GaussianSpatialModel, PointSpatialModel

    from astro_asid.instruments.ctao import find_sources_gammapy, to_gammapy_models

    ds, _, _ = toy_dataset
    cat = find_sources_gammapy(ds.counts, detector="tsmap", psf_sigma_deg=0.07)
    assert cat["flux"].unit == u.ct and "counts" not in cat.colnames
    cat["extension"] = [0.2] + [0.0] * (len(cat) - 1)
    with pytest.warns(ASIDWarning, match="photon flux"):
        models = to_gammapy_models(cat, spectral_index=2.5)
    assert isinstance(models[0].spatial_model, GaussianSpatialModel)
    assert np.isclose(models[0].spatial_model.sigma.value, 0.2)
    assert all(isinstance(m.spatial_model, PointSpatialModel) for m in list(models)[1:])
    assert models[0].spectral_model.index.value == 2.5


def test_gammapy_input_errors(toy_dataset):
    from astro_asid.instruments.ctao import find_sources_gammapy

    ds, _, _ = toy_dataset
    with pytest.raises(TypeError, match="MapDataset"):
        find_sources_gammapy(np.zeros((10, 10)))
    with pytest.raises(TypeError, match="dataset"):
        find_sources_gammapy(ds, exposure=ds.exposure)
    bad = ds.copy(name="bad")
    bad.mask_safe.data[...] = False
    with pytest.raises(ValueError, match="mask"):
        find_sources_gammapy(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(find_sources_gammapy(ds, detector="tsmap", ts_threshold=1e6)) == 0
    # a map that is not counts does not default to the counts-only tsmap
    flux_map = ds.counts.copy(unit="cm-2 s-1 sr-1")
    cat = find_sources_gammapy(flux_map, psf_sigma_deg=0.07)
    assert cat.meta["detector"] != "tsmap"
    assert find_sources_gammapy(ds.counts, psf_sigma_deg=0.07).meta["detector"] == "tsmap"


def test_find_sources_healpix_characterizes_five_band_tiles(overlap_sources):
    from astro_asid.characterize import shipped_characterizer
    if shipped_characterizer("fermi-lat") is None:
        pytest.skip("no Fermi-LAT characteriser shipped")
    counts = _sky([(lo, la, 400.0) for lo, la in overlap_sources], bands=5, seed=3)
    edges = [0.5, 1, 2, 7, 20, 200] * u.GeV
    cat = find_sources_healpix(counts, nside=NSIDE, tiles=TILES[:2], detector="tsmap",
                               psf_sigma_deg=0.3, ts_threshold=25, energy_edges=edges)
    assert len(cat) >= 1
    assert cat.meta["characterizer"]["name"] == "characterize-fermi-lat"
    # tsmap's candidates: the cutout classifier alone gives source_prob
    assert cat.meta["characterizer"]["source_prob"] == "cutout only"
    assert not np.any(cat["source_prob"].mask) and cat["flux"].unit == u.Unit("cm-2 s-1")
    assert np.asarray(cat["class_prob"]).shape == (len(cat), 3)
    assert "characterize" in cat.meta["timing_s"]
    plain = find_sources_healpix(counts, nside=NSIDE, tiles=TILES[:2], detector="tsmap",
                                 psf_sigma_deg=0.3, ts_threshold=25, energy_edges=edges,
                                 characterize=False)
    assert np.all(plain["source_prob"].mask)

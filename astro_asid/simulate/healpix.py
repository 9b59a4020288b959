"""Geometry helpers: the challenge's CAR patches and HEALPix templates.

The patch projection is the challenge's (``GLON-CAR``/``GLAT-CAR``,
``CRVAL`` = centre, ``CDELT = (-10/64, 10/64)`` deg, ``CRPIX = 32.75``),
implemented here as a vectorised spherical rotation so that thousands of
patches can be projected at once; `tests/test_simulate.py` checks it against
`astropy.wcs` to 1e-8 deg.
"""

import numpy as np

__all__ = ["PATCH_NPIX", "PATCH_CDELT", "PATCH_CRPIX", "patch_pixel_to_sky",
           "patch_sky_to_pixel", "patch_pixel_grid", "HealpixTemplate", "pixel_solid_angle_deg2"]

PATCH_NPIX = 64
PATCH_CDELT = 10.0 / 64.0
PATCH_CRPIX = 32.75   # FITS, 1-based


def _rot(lon0, lat0):
    l0 = np.deg2rad(np.asarray(lon0, float))
    b0 = np.deg2rad(np.asarray(lat0, float))
    return np.cos(l0), np.sin(l0), np.cos(b0), np.sin(b0)


def patch_pixel_to_sky(lon0, lat0, x, y, cdelt=PATCH_CDELT, crpix=PATCH_CRPIX):
    """Galactic (lon, lat) deg of 0-based pixels of CAR patches centred on (lon0, lat0).

    All arguments broadcast together. In the native frame of an oblique CAR
    projection the map's ``y`` axis points to the celestial pole at the
    reference point for either sign of ``lat0`` (astropy's default LONPOLE),
    so the transformation is a rotation by ``lat0`` about the native ``y``
    axis followed by a rotation by ``lon0`` about the pole.
    """
    phi = np.deg2rad(-cdelt * (np.asarray(x, float) + 1 - crpix))
    theta = np.deg2rad(cdelt * (np.asarray(y, float) + 1 - crpix))
    ct = np.cos(theta)
    nx, ny, nz = ct * np.cos(phi), ct * np.sin(phi), np.sin(theta)
    cl, sl, cb, sb = _rot(lon0, lat0)
    x1 = nx * cb - nz * sb
    z1 = nx * sb + nz * cb
    x2 = x1 * cl - ny * sl
    y2 = x1 * sl + ny * cl
    lon = np.rad2deg(np.arctan2(y2, x2)) % 360.0
    lat = np.rad2deg(np.arcsin(np.clip(z1, -1, 1)))
    return lon, lat


def patch_sky_to_pixel(lon0, lat0, lon, lat, cdelt=PATCH_CDELT, crpix=PATCH_CRPIX):
    """0-based pixel (x, y) of Galactic positions in CAR patches.

    The inverse of `patch_pixel_to_sky`.
    """
    lon = np.deg2rad(np.asarray(lon, float))
    lat = np.deg2rad(np.asarray(lat, float))
    cl, sl, cb, sb = _rot(lon0, lat0)
    cz = np.cos(lat)
    vx, vy, vz = cz * np.cos(lon), cz * np.sin(lon), np.sin(lat)
    x1 = vx * cl + vy * sl
    y1 = -vx * sl + vy * cl
    nx = x1 * cb + vz * sb
    nz = -x1 * sb + vz * cb
    phi = np.rad2deg(np.arctan2(y1, nx))
    theta = np.rad2deg(np.arcsin(np.clip(nz, -1, 1)))
    return -phi / cdelt + crpix - 1, theta / cdelt + crpix - 1


def patch_pixel_grid(lon0, lat0, npix=PATCH_NPIX, cdelt=PATCH_CDELT, crpix=None):
    """Sky positions of every pixel of ``n`` patches: two ``(n, npix, npix)`` arrays (deg)."""
    if crpix is None:
        crpix = PATCH_CRPIX * npix / PATCH_NPIX
    lon0 = np.atleast_1d(np.asarray(lon0, float))[:, None, None]
    lat0 = np.atleast_1d(np.asarray(lat0, float))[:, None, None]
    yy, xx = np.mgrid[0:npix, 0:npix]
    return patch_pixel_to_sky(lon0, lat0, xx[None], yy[None], cdelt=cdelt, crpix=crpix)


def pixel_solid_angle_deg2(cdelt=PATCH_CDELT):
    """Solid angle of a patch pixel at the patch centre, deg^2 (the templates' unit area)."""
    return cdelt * cdelt


class HealpixTemplate:
    """Multi-band HEALPix map (RING, Galactic) of a surface density, interpolated bilinearly.

    Parameters
    ----------
    maps : `~numpy.ndarray`
        ``(n_bands, 12 nside^2)`` values per unit solid angle (deg^-2).
    """

    def __init__(self, maps):
        import healpy as hp
        maps = np.asarray(maps, np.float32)
        if maps.ndim != 2:
            raise ValueError(f"maps must be (n_bands, npix), got shape {maps.shape}")
        self.nside = hp.npix2nside(maps.shape[1])
        self.maps = maps

    def __call__(self, lon, lat):
        """Density at Galactic positions (deg): ``(n_bands,) + lon.shape``."""
        import healpy as hp
        lon = np.asarray(lon, float)
        shape = lon.shape
        pix, w = hp.get_interp_weights(self.nside, lon.ravel(), np.asarray(lat, float).ravel(),
                                       lonlat=True)
        out = np.einsum("bkn,kn->bn", self.maps[:, pix], w.astype(np.float32))
        return out.reshape((self.maps.shape[0],) + shape)

    def at_pixels(self, nside):
        """Density at the centres of the pixels of another nside (RING)."""
        import healpy as hp
        if nside == self.nside:
            return self.maps.copy()
        lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), lonlat=True)
        return self(lon, lat)

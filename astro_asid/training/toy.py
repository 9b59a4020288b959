"""A tiny stand-in for the Fermi-LAT simulator, for tests and quick experiments.

`ToySkySimulator` draws Gaussian-PSF point sources with a power-law number
count on a smooth, structured background, and returns batches with the same
structure as `astro_asid.simulate.FermiSkySimulator.sample_patches`:
``counts``, ``expected``, ``background`` ``(n, n_bands, ny, nx)`` float32 and
``sources`` (one astropy Table per patch with ``x``, ``y``, ``lon``, ``lat``,
``flux_1000``, ``flux_band``, ``counts_band``, ``cls``). It is *not* a model
of the gamma-ray sky: only a fast, dependency-free generator with the right
shapes and a roughly Fermi-like PSF and count level.
"""

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.special import erf

__all__ = ["PatchBatch", "ToySkySimulator", "FERMI_PSF_SIGMA_PX", "FERMI_PSF_DOUBLE_PX"]

#: Gaussian sigma (pixels of 10/64 deg) per band matching the 68% containment
#: radii 0.96, 0.60, 0.40, 0.24, 0.21 deg measured on the data challenge.
FERMI_PSF_SIGMA_PX = tuple(r68 / 1.5096 / (10 / 64) for r68 in (0.96, 0.60, 0.40, 0.24, 0.21))

#: Core sigma, tail sigma (px) and core fraction (0.8) of a two-Gaussian PSF per band
#: that matches both the 68% and the 95% containment radii measured on the challenge
#: (95%: 2.2, 1.6, 1.2, 0.66, 0.50 deg): the LAT PSF has heavier tails than a Gaussian.
FERMI_PSF_DOUBLE_PX = ((3.468, 2.121, 1.395, 0.845, 0.754),
                       (8.443, 6.149, 4.612, 2.537, 1.920), 0.8)

_BAND_EDGES_GEV = np.array([0.5, 1.0, 2.0, 7.0, 20.0, 200.0])

# typical background counts per pixel and source spectral fractions per band
# (data-challenge medians and mean source counts)
_BG_LEVEL = np.array([5.3, 2.8, 1.8, 0.26, 0.07])
_SRC_FRACTION = np.array([0.41, 0.26, 0.23, 0.06, 0.04])


@dataclass
class PatchBatch:
    """A batch of simulated patches (the simulator's batch structure)."""

    counts: np.ndarray
    expected: np.ndarray
    background: np.ndarray
    sources: list


class ToySkySimulator:
    """Fast toy patches with Gaussian sources, Poisson noise and a smooth background.

    Parameters
    ----------
    shape : tuple
        ``(ny, nx)`` of a patch.
    psf_sigma : sequence of float
        Gaussian PSF sigma per band, pixels (sets the number of bands).
    psf_tail : tuple, optional
        ``(tail_sigma_per_band, core_fraction)``: a second, wider Gaussian
        (e.g. ``FERMI_PSF_DOUBLE_PX[1:]`` with ``psf_sigma=FERMI_PSF_DOUBLE_PX[0]``).
    index_range : tuple, optional
        Photon-index range (uniform) of power-law spectra for five Fermi bands;
        None: band fractions scattered around a mean spectrum.
    background_templates : `~numpy.ndarray`, optional
        ``(m, n_bands, ny, nx)`` expected background counts; a fraction
        ``template_fraction`` of the patches uses a random one (flipped,
        rotated and scaled by a log-normal factor of width 0.3), the rest the
        smooth random background.
    mean_sources : float
        Mean number of sources per patch (Poisson).
    counts_range : tuple
        Total counts of the faintest and brightest sources.
    count_slope : float
        dN/dS ~ S^-count_slope between them (> 1).
    exposure_scale, background_scale : float
        Multiply all counts / the background counts.
    seed : int
        Random seed.
    """

    def __init__(self, shape=(64, 64), psf_sigma=FERMI_PSF_SIGMA_PX, mean_sources=12.0,
                 counts_range=(5.0, 3000.0), count_slope=2.0, exposure_scale=1.0,
                 background_scale=1.0, seed=0,
                 psf_tail=None, index_range=None, background_templates=None,
                 template_fraction=0.5):
        self.shape = tuple(shape)
        self.psf_sigma = np.asarray(psf_sigma, dtype=np.float64)
        self.mean_sources = float(mean_sources)
        self.counts_range = tuple(counts_range)
        if count_slope <= 1:
            raise ValueError(f"count_slope must be > 1, got {count_slope}")
        self.count_slope = float(count_slope)
        self.exposure_scale = float(exposure_scale)
        self.background_scale = float(background_scale)
        self.rng = np.random.default_rng(seed)
        nb = len(self.psf_sigma)
        self.bg_level = np.resize(_BG_LEVEL, nb)
        self.fraction = np.resize(_SRC_FRACTION, nb)
        self.fraction = self.fraction / self.fraction.sum()
        self.psf_tail = None
        if psf_tail is not None:
            self.psf_tail = (np.asarray(psf_tail[0], float), float(psf_tail[1]))
        self.index_range = index_range
        if index_range is not None and nb != 5:
            raise ValueError("index_range needs the five Fermi-LAT bands")
        self.templates = None
        if background_templates is not None:
            self.templates = np.asarray(background_templates, np.float32)
            if self.templates.shape[1:] != (nb,) + self.shape:
                raise ValueError(f"background_templates must be (m, {nb}, {self.shape[0]}, "
                                 f"{self.shape[1]}), got {self.templates.shape}")
        self.template_fraction = float(template_fraction)

    @property
    def n_bands(self):
        return len(self.psf_sigma)

    def _background(self, rng):
        ny, nx = self.shape
        nb = self.n_bands
        if self.templates is not None and rng.uniform() < self.template_fraction:
            t = self.templates[rng.integers(len(self.templates))]
            t = np.rot90(t[..., ::-1] if rng.integers(2) else t, int(rng.integers(4)),
                         axes=(-2, -1))
            return np.ascontiguousarray(t, dtype=np.float64) * np.exp(rng.normal(0.0, 0.3))
        level = self.bg_level * np.exp(rng.normal(0.0, 0.8))
        # large-scale structure common to all bands, plus a gradient
        field = ndimage.gaussian_filter(rng.normal(size=(ny, nx)), rng.uniform(6, 14), mode="wrap")
        field /= field.std() + 1e-12
        yy, xx = np.mgrid[0:ny, 0:nx] / max(ny, nx)
        grad = rng.normal(0, 0.4) * (xx - 0.5) + rng.normal(0, 0.4) * (yy - 0.5)
        shape = np.exp(rng.uniform(0.1, 0.5) * field + grad)
        return (level[:, None, None] * shape[None]).astype(np.float64) * np.ones((nb, 1, 1))

    def _sources(self, rng):
        ny, nx = self.shape
        n = rng.poisson(self.mean_sources)
        x = rng.uniform(-0.5, nx - 0.5, n)
        y = rng.uniform(-0.5, ny - 0.5, n)
        s0, s1 = self.counts_range
        # inverse CDF of dN/dS ~ S^-a between s0 and s1
        u = rng.uniform(size=n)
        g = 1.0 - self.count_slope
        total = (s0 ** g - u * (s0 ** g - s1 ** g)) ** (1.0 / g)
        if self.index_range is not None:
            frac = self._powerlaw_fractions(rng.uniform(*self.index_range, n))
        else:
            frac = (rng.dirichlet(self.fraction * 30.0, size=n) if n
                    else np.zeros((0, self.n_bands)))
        counts_band = total[:, None] * frac
        return x, y, counts_band

    def _powerlaw_fractions(self, index):
        """Band fractions of power-law spectra; the mean spectrum (index 2.3) gives the
        default fractions, which sets the relative exposure per band."""
        lo, hi = _BAND_EDGES_GEV[:-1], _BAND_EDGES_GEV[1:]

        def integ(g):
            g = np.asarray(g, float)[:, None]
            return (hi ** (1 - g) - lo ** (1 - g)) / (1 - g)

        weight = _SRC_FRACTION / integ([2.3])[0]
        f = integ(index) * weight
        return f / f.sum(axis=1, keepdims=True)

    def _render(self, x, y, counts_band):
        img = self._render_gauss(x, y, counts_band, self.psf_sigma)
        if self.psf_tail is None:
            return img
        tail, core = self.psf_tail
        return core * img + (1 - core) * self._render_gauss(x, y, counts_band, tail)

    def _render_gauss(self, x, y, counts_band, sigma):
        ny, nx = self.shape
        nb = self.n_bands
        img = np.zeros((nb, ny, nx))
        if len(x) == 0:
            return img
        s = np.asarray(sigma)[None, :, None] * np.sqrt(2.0)
        ex = np.arange(nx + 1) - 0.5
        ey = np.arange(ny + 1) - 0.5
        # pixel-integrated Gaussian, separable: (n_src, n_bands, nx) and (.., ny)
        cx = erf((ex[None, None, :] - x[:, None, None]) / s)
        cy = erf((ey[None, None, :] - y[:, None, None]) / s)
        px = 0.5 * np.diff(cx, axis=2)
        py = 0.5 * np.diff(cy, axis=2)
        return np.einsum("sb,sby,sbx->byx", counts_band, py, px)

    def sample_patches(self, n):
        """Draw ``n`` patches; returns a `PatchBatch`."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rng = self.rng
        nb = self.n_bands
        expected = np.zeros((n, nb) + self.shape, np.float32)
        background = np.zeros_like(expected)
        sources = []
        for i in range(n):
            bg = self._background(rng) * self.exposure_scale * self.background_scale
            x, y, cb = self._sources(rng)
            cb = cb * self.exposure_scale
            background[i] = bg
            expected[i] = bg + self._render(x, y, cb)
            flux_band = cb / self.exposure_scale * 1e-11
            sources.append(Table({
                "x": x, "y": y, "lon": (x - (self.shape[1] - 1) / 2) * -10 / 64,
                "lat": (y - (self.shape[0] - 1) / 2) * 10 / 64,
                "flux_1000": flux_band[:, 1:].sum(axis=1) if nb > 1 else flux_band[:, 0],
                "flux_band": flux_band, "counts_band": cb,
                "cls": np.zeros(len(x), dtype=np.int64)}))
        counts = rng.poisson(expected).astype(np.float32)
        return PatchBatch(counts=counts, expected=expected, background=background, sources=sources)

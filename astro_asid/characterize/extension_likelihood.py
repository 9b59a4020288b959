"""Bayesian extension classes of one source in counts maps with a known background.

The reference against which the characteriser's extension head is measured
(``benchmarks/ctao_characterize.py --oracle``). A source is a circular
Gaussian of width ``sigma`` (0 for a point source) convolved with each band's
Gaussian PSF, with a known spectral shape (expected counts per band per unit
flux) and an unknown flux. Given the counts and the expected counts of
everything else (background, other sources), the Poisson likelihood on a grid
of ``(sigma, flux)``, times a population prior (`ExtensionPrior`), gives the
posterior of ``sigma`` and so of the extension classes (C0 < 0.1 deg, C1,
C2 > 0.3 deg). With the true position, spectrum and neighbours this is the
Bayes-optimal classifier of the simulated population: no method can beat its
accuracy on average.
"""

from dataclasses import dataclass

import numpy as np

from astro_asid.simulate.ctao import render_gaussian_sources

__all__ = ["ExtensionPrior", "extension_posterior", "class_probabilities",
           "extension_class_probs"]


@dataclass
class ExtensionPrior:
    """Grids and prior weights of the source width and flux.

    Attributes
    ----------
    sigma_deg : `~numpy.ndarray`
        Gaussian widths (deg); 0 is a point source.
    sigma_weight : `~numpy.ndarray`
        Prior probability of each width (sums to 1).
    flux : `~numpy.ndarray`
        Flux grid (the unit of ``counts_per_flux`` in `extension_posterior`).
    flux_weight : `~numpy.ndarray`
        Prior probability of each flux (sums to 1).
    """

    sigma_deg: np.ndarray
    sigma_weight: np.ndarray
    flux: np.ndarray
    flux_weight: np.ndarray

    _FIELDS = ("sigma_deg", "sigma_weight", "flux", "flux_weight")

    def to_dict(self):
        """Plain lists, as a model card stores them."""
        return {k: np.asarray(getattr(self, k), float).tolist() for k in self._FIELDS}

    @classmethod
    def from_dict(cls, d):
        """The prior of a model card's entry (extra keys are ignored)."""
        return cls(*(np.asarray(d[k], float) for k in cls._FIELDS))

    @classmethod
    def from_ctao_simulator(cls, sim, n_sigma=40, n_flux=50):
        """The population of a `~astro_asid.simulate.ctao.CTAOSkySimulator`: a
        point-source fraction, log-uniform widths, and ``dN/dS ~ S^-slope``
        between its flux limits (flux above 1 TeV, cm-2 s-1)."""
        lo, hi = sim.sigma_range_deg
        sig = np.concatenate([[0.0], np.exp(np.linspace(np.log(lo), np.log(hi), n_sigma))])
        w_sig = np.concatenate([[sim.point_fraction],
                                np.full(n_sigma, (1.0 - sim.point_fraction) / n_sigma)])
        s_lo, s_hi = sim.flux_range
        flux = np.exp(np.linspace(np.log(s_lo), np.log(s_hi), n_flux))
        # equal steps in log S: the weight of a step is S dN/dS ~ S^(1 - slope)
        w_flux = flux ** (1.0 - sim.logn_logs_slope)
        return cls(sig, w_sig, flux, w_flux / w_flux.sum())


def extension_posterior(counts, known, x, y, counts_per_flux, psf_sigma_deg, pixel_deg, prior,
                        half_width=28, valid=None):
    """Posterior probability of each width of ``prior`` for the source at ``(x, y)``.

    Parameters
    ----------
    counts : `~numpy.ndarray`
        Observed counts ``(n_bands, ny, nx)``.
    known : `~numpy.ndarray`
        Expected counts of everything but the source (background and other
        sources), same shape; must be > 0 where counts are.
    x, y : float
        The source's pixel position (0-based).
    counts_per_flux : `~numpy.ndarray`
        Expected counts per band of a source of unit flux, ``(n_bands,)``.
    psf_sigma_deg : `~numpy.ndarray`
        Gaussian PSF width per band (deg).
    pixel_deg : float
        Pixel size (deg).
    prior : `ExtensionPrior`
    half_width : int
        The likelihood uses the pixels within this many pixels of the source
        (the default, 28 px = 0.56 deg at 0.02 deg, holds the widest sources
        of the CTAO population to about 1 sigma plus the PSF).
    valid : `~numpy.ndarray`, optional
        Boolean ``(n_bands, ny, nx)``: only these pixels enter the likelihood
        (e.g. not masked ones).

    Returns
    -------
    `~numpy.ndarray`
        Posterior probabilities of ``prior.sigma_deg`` (sum to 1).
    """
    counts = np.asarray(counts, float)
    known = np.asarray(known, float)
    if counts.shape != known.shape or counts.ndim != 3:
        raise ValueError(f"counts and known must be (n_bands, ny, nx) arrays of one shape, "
                         f"got {counts.shape} and {known.shape}")
    _, ny, nx = counts.shape
    cx, cy = int(np.rint(x)), int(np.rint(y))
    y0, y1 = max(cy - half_width, 0), min(cy + half_width + 1, ny)
    x0, x1 = max(cx - half_width, 0), min(cx + half_width + 1, nx)
    if y0 >= y1 or x0 >= x1:
        raise ValueError(f"position ({x}, {y}) is outside the {nx}x{ny} map")
    use = (np.ones(counts.shape, bool) if valid is None
           else np.broadcast_to(np.asarray(valid, bool), counts.shape))[:, y0:y1, x0:x1].ravel()
    data = counts[:, y0:y1, x0:x1].ravel()[use]
    base = np.clip(known[:, y0:y1, x0:x1].ravel()[use], 1e-9, None)
    psf = np.asarray(psf_sigma_deg, float)
    unit = np.asarray(counts_per_flux, float)[np.newaxis]
    flux = np.asarray(prior.flux, float)
    log_like = np.empty((len(prior.sigma_deg), len(flux)))
    for i, s in enumerate(prior.sigma_deg):
        width = np.hypot(s, psf)[np.newaxis] / pixel_deg
        tmpl = render_gaussian_sources((y1 - y0, x1 - x0), [x - x0], [y - y0], unit,
                                       width).astype(float).ravel()[use]
        mu = base[np.newaxis] + flux[:, np.newaxis] * tmpl[np.newaxis]
        # Poisson log-likelihood relative to "no source" (constant terms dropped)
        log_like[i] = (data * np.log(mu / base)).sum(1) - flux * tmpl.sum()
    log_post = (log_like + np.log(prior.sigma_weight)[:, np.newaxis]
                + np.log(prior.flux_weight)[np.newaxis])
    log_post -= log_post.max()
    post = np.exp(log_post).sum(1)
    return post / post.sum()


def class_probabilities(posterior, sigma_deg, edges_deg=(0.1, 0.3)):
    """Sum a width posterior into the classes ``np.digitize(sigma_deg, edges_deg)``
    (C0 below 0.1 deg, C1, C2 from 0.3 deg), as the characteriser's labels."""
    cls = np.digitize(np.asarray(sigma_deg, float), edges_deg)
    return np.array([posterior[cls == k].sum() for k in range(len(edges_deg) + 1)])


def extension_class_probs(counts, background, x, y, band_counts, extension_deg, counts_per_flux,
                          psf_sigma_deg, pixel_deg, prior, edges_deg=(0.1, 0.3), rows=None,
                          half_width=28, valid=None):
    """Extension class probabilities of sources found together in one map.

    Every source is tested against the background plus the model of all the
    others (each a Gaussian of its estimated width, counts and position), so
    that a neighbour's light is not taken for the tested source's extension.

    Parameters
    ----------
    counts, background : `~numpy.ndarray`
        Observed counts and the known background, ``(n_bands, ny, nx)``.
    x, y : `~numpy.ndarray`
        Estimated pixel positions of all sources.
    band_counts : `~numpy.ndarray`
        Their estimated expected counts per band, ``(n, n_bands)``.
    extension_deg : `~numpy.ndarray`
        Their estimated Gaussian widths (deg).
    counts_per_flux : `~numpy.ndarray`
        Expected counts per band of a source of unit flux in this map
        (exposure included), ``(n_bands,)`` or one row per source
        ``(n, n_bands)``; the unit of ``prior.flux``.
    psf_sigma_deg, pixel_deg, prior, half_width, valid
        As for `extension_posterior`.
    edges_deg : tuple of float
        Class edges (see `class_probabilities`).
    rows : array-like of int, optional
        Test only these sources (all others still enter the model).

    Returns
    -------
    `~numpy.ndarray`
        ``(len(rows), len(edges_deg) + 1)`` class probabilities.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    # a source without an estimate (NaN) or a negative one adds no light
    band_counts = np.clip(np.nan_to_num(np.asarray(band_counts, float), nan=0.0), 0.0, None)
    psf = np.asarray(psf_sigma_deg, float)
    width = np.hypot(np.nan_to_num(np.asarray(extension_deg, float), nan=0.0)[:, np.newaxis],
                     psf[np.newaxis]) / pixel_deg
    shape = np.shape(counts)[1:]
    everything = np.asarray(background, float) + render_gaussian_sources(
        shape, x, y, band_counts, width)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, int)
    per_flux = np.broadcast_to(np.asarray(counts_per_flux, float), band_counts.shape)
    out = np.empty((len(rows), len(edges_deg) + 1))
    for k, i in enumerate(rows):
        own = render_gaussian_sources(shape, x[i:i + 1], y[i:i + 1], band_counts[i:i + 1],
                                      width[i:i + 1])
        post = extension_posterior(counts, everything - own, x[i], y[i], per_flux[i], psf,
                                   pixel_deg, prior, half_width, valid)
        out[k] = class_probabilities(post, prior.sigma_deg, edges_deg)
    return out

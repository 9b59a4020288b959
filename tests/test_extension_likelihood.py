"""The likelihood extension classes (astro_asid.characterize.extension_likelihood)."""

import numpy as np
import pytest

from astro_asid.characterize.extension_likelihood import (ExtensionPrior, class_probabilities,
                                                         extension_class_probs,
                                                         extension_posterior)
from astro_asid.simulate.ctao import CTAOSkySimulator, render_gaussian_sources

PSF = np.array([0.06, 0.03, 0.02])
PIX = 0.02
UNIT = np.array([200.0, 150.0, 30.0])  # counts per band of a unit-flux source
NPIX = 80


@pytest.fixture(scope="module")
def prior():
    return ExtensionPrior(np.array([0.0, 0.05, 0.15, 0.25, 0.4]), np.full(5, 0.2),
                          np.exp(np.linspace(np.log(0.1), np.log(20), 30)), np.full(30, 1 / 30))


def _counts(x, y, flux, sigma_deg, seed=1, background=2.0):
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    width = np.hypot(np.atleast_1d(sigma_deg)[:, None], PSF[None]) / PIX
    bkg = np.full((3, NPIX, NPIX), background)
    mu = bkg + render_gaussian_sources(NPIX, x, y, np.atleast_1d(flux)[:, None] * UNIT, width)
    return np.random.default_rng(seed).poisson(mu).astype(float), bkg


@pytest.mark.parametrize("sigma, cls", [(0.0, 0), (0.2, 1), (0.4, 2)])
def test_bright_sources_get_their_class(prior, sigma, cls):
    counts, bkg = _counts(40.0, 40.0, 10.0, sigma)
    post = extension_posterior(counts, bkg, 40.0, 40.0, UNIT, PSF, PIX, prior)
    assert post.shape == (5,) and np.isclose(post.sum(), 1.0)
    p = class_probabilities(post, prior.sigma_deg)
    assert p.argmax() == cls and p[cls] > 0.95


def test_no_source_falls_back_to_the_prior(prior):
    # a flux grid that reaches far below one count: the data cannot tell the widths apart
    faint = ExtensionPrior(prior.sigma_deg, prior.sigma_weight,
                           np.exp(np.linspace(np.log(1e-3), np.log(20), 30)), np.full(30, 1 / 30))
    counts, bkg = _counts(40.0, 40.0, 1e-4, 0.2)
    post = extension_posterior(counts, bkg, 40.0, 40.0, UNIT, PSF, PIX, faint)
    np.testing.assert_allclose(post, faint.sigma_weight, atol=0.06)


def test_a_modelled_neighbour_is_not_taken_for_extension(prior):
    """A faint point source on the wing of a bright extended one (0.15 deg, 6 px
    away): tested against the background alone it looks extended; with the
    neighbour in the model it is point-like."""
    x, y, flux, sigma = [40.0, 46.0], [40.0, 40.0], [0.3, 3.0], [0.0, 0.15]
    counts, bkg = _counts(x, y, flux, sigma, seed=3)
    alone = class_probabilities(extension_posterior(counts, bkg, 40.0, 40.0, UNIT, PSF, PIX,
                                                    prior), prior.sigma_deg)
    both = extension_class_probs(counts, bkg, x, y, np.outer(flux, UNIT), sigma, UNIT, PSF, PIX,
                                 prior, rows=[0])
    assert both.shape == (1, 3)
    assert alone[0] < 0.5 < both[0, 0]


def test_class_edges_follow_the_labels():
    sig = np.array([0.0, 0.0999, 0.1, 0.3, 0.31])
    p = class_probabilities(np.full(5, 0.2), sig)
    np.testing.assert_allclose(p, [0.4, 0.2, 0.4])  # 0.3 counts as C2, as np.digitize does


def test_prior_from_the_ctao_population():
    sim = CTAOSkySimulator(seed=0)
    pr = ExtensionPrior.from_ctao_simulator(sim, n_sigma=10, n_flux=20)
    assert pr.sigma_deg[0] == 0 and np.isclose(pr.sigma_weight[0], sim.point_fraction)
    assert np.isclose(pr.sigma_weight.sum(), 1) and np.isclose(pr.flux_weight.sum(), 1)
    # dN/dS ~ S^-2: fainter sources are more common
    assert np.all(np.diff(pr.flux_weight) < 0)


def test_bad_inputs(prior):
    counts, bkg = _counts(40.0, 40.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        extension_posterior(counts, bkg[:2], 40.0, 40.0, UNIT, PSF, PIX, prior)
    with pytest.raises(ValueError, match="outside"):
        extension_posterior(counts, bkg, 500.0, 40.0, UNIT, PSF, PIX, prior)

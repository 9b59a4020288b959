"""The ``tsmap`` detector: a Poisson likelihood test-statistic (TS) map.

The classical gamma-ray method (e.g. Stewart 2009, A&A 495, 989; gammapy's
`~gammapy.estimators.TSMapEstimator`): at every pixel, fit the amplitude of a
point source with the known PSF on top of a fixed background by maximum
Poisson likelihood, and compare with the background-only fit.
"""

import numpy as np
from scipy import ndimage

from ._classical_utils import (band_sigmas, check_positive, correlate_separable,
                               counts_background, effective_sigma, empty_table, gaussian_profile,
                               make_table, prune_close, quadratic_peak, snr_to_score)
from .base import Detector

__all__ = ["TSMapDetector", "checked_background", "compute_ts_map", "estimate_background",
           "spectral_weights"]

_SPECTRA = ("independent", "counts", "powerlaw")


def _gather(data, half, ys, xs):
    """``(n, (2 half + 1)**2)`` zero-padded cutouts of ``data`` centred on (ys, xs)."""
    padded = np.pad(data, half, mode="constant")
    width = padded.shape[1]
    dy, dx = np.mgrid[0:2 * half + 1, 0:2 * half + 1]
    offsets = (dy * width + dx).ravel()
    index = (ys * width + xs)[:, None] + offsets[None, :]
    return np.take(padded.ravel(), index)


_SERIES_ORDER = 24      # terms of the power series in A q
_SERIES_RADIUS = 0.5    # series used where A q < this for every pixel with counts
_SERIES_MIN_PAIRS = 32  # bands with fewer pixels with counts per cutout use exact sums
_TIER_QUANTILES = (0.6, 0.9, 1.0)  # amplitude tiers, see _fit_group


def _sparse_pairs(n, b, prof, w, ys, xs):
    """(position, pixel) pairs with counts: position index, counts, ``q = w K / B``."""
    half = prof.size // 2
    win_n = _gather(n, half, ys, xs)
    rows, cols = np.nonzero(win_n > 0)
    win_b = _gather(b, half, ys, xs)[rows, cols]  # counts only sit where b > 0
    kern = w * np.outer(prof, prof).ravel()
    return rows, win_n[rows, cols], kern[cols] / win_b


def _toeplitz(prof, size):
    """Banded matrices ``T`` with ``(T x)[i] = sum_d prof[d + half] x[i + d]`` (zero padded).

    ``prof`` has shape ``(m, k)``: one matrix per row, shape ``(m, size, size)``.
    """
    half = prof.shape[-1] // 2
    idx = np.arange(size)
    diff = idx[None, :] - idx[:, None] + half
    inside = (diff >= 0) & (diff < prof.shape[-1])
    return np.where(inside, prof[:, np.clip(diff, 0, prof.shape[-1] - 1)], 0.0)


def _max_product(log_u, log_py, log_px):
    """``max_d py[dy] px[dx] u[p + d]`` in log space (zero padded): it factorises over axes."""
    ny, nx = log_u.shape
    half = log_py.size // 2
    padded = np.pad(log_u, half, constant_values=-np.inf)
    step = np.full((padded.shape[0], nx), -np.inf)
    for d in range(log_px.size):
        np.maximum(step, padded[:, d:d + nx] + log_px[d], out=step)
    out = np.full((ny, nx), -np.inf)
    for d in range(log_py.size):
        np.maximum(out, step[d:d + ny] + log_py[d], out=out)
    return out


class _SeriesBand:
    """Power-series coefficients of one band's likelihood sums over outer cutouts.

    With ``q_i = w K(i - p) / B_i``, ``sum_i n_i q_i / (1 + A q_i) = sum_k (-A)**k
    C_k`` and ``sum_i n_i log(1 + A q_i) = sum_k (-1)**k A**(k + 1) C_k / (k + 1)``
    where ``C_k = sum_i n_i q_i**(k + 1)``. `terms` gives the sums over the
    cutout minus its central ``(2 inner + 1)**2`` square (``inner = -1``: the
    whole cutout), split into two separable parts (``|dy| > inner``, and
    ``|dy| <= inner < |dx|``), so each ``C_k`` is two separable correlations
    of ``n / B**(k + 1)``, done for all ``k`` at once as banded matrix
    products. The series converge where ``A q_i < 1`` for every outer pixel
    with counts. Numbers stay in range by working with ``x = A s``, ``s = w
    K_max / B_min``: ``C_k = s**(k + 1) C'_k``.
    """

    def __init__(self, n, b, prof, w, order):
        good = b > 0
        b_min = b[good].min()
        p_max = prof.max()
        self.scale = w * p_max ** 2 / b_min
        ratio = np.where(good, b_min / np.where(good, b, 1.0), 0.0)
        half = prof.size // 2
        self.offsets = np.abs(np.arange(prof.size) - half)
        rel = prof / p_max
        powers = np.arange(1, order + 1)[:, None]
        full = rel[None, :] ** powers                              # (order, k)
        ny, nx = n.shape
        self.data = n[None] * ratio[None] ** powers[:, :, None]   # n (B_min / B)**(k + 1)
        self.ty = _toeplitz(full, ny)
        self.txt = np.transpose(_toeplitz(full, nx), (0, 2, 1))
        self.dist_y = np.abs(np.subtract.outer(np.arange(ny), np.arange(ny)))
        self.dist_x = np.abs(np.subtract.outer(np.arange(nx), np.arange(nx)))
        self.by_x = np.matmul(self.data, self.txt)
        with np.errstate(divide="ignore"):
            self.log_u = np.where(n > 0, np.log(ratio), -np.inf)
            self.log_full = np.log(rel)

    def terms(self, inner):
        """``(C'_k, q_max)``: coefficients ``(order, ny, nx)`` and the largest ``q``
        over the outer pixels with counts of each cutout."""
        ty_out = np.where(self.dist_y > inner, self.ty, 0.0)
        coeffs = np.matmul(ty_out, self.by_x)
        log_out = np.where(self.offsets > inner, self.log_full, -np.inf)
        q_log = _max_product(self.log_u, log_out, self.log_full)
        if inner >= 0:
            ty_in = np.where(self.dist_y <= inner, self.ty, 0.0)
            txt_out = np.where(self.dist_x.T > inner, self.txt, 0.0)
            coeffs += np.matmul(ty_in, np.matmul(self.data, txt_out))
            log_in = np.where(self.offsets <= inner, self.log_full, -np.inf)
            q_log = np.maximum(q_log, _max_product(self.log_u, log_in, log_out))
        return coeffs, np.exp(q_log) * self.scale


def _inner_radius(b, prof, w, amp_ref):
    """Half-size of the central square summed exactly so the outer series converge fast.

    The smallest ``r`` with ``amp_ref * w K_out / B < 0.7 RADIUS`` where ``K_out`` is
    the largest kernel value outside the square and ``B`` a low (10th
    percentile) background; ``-1`` when no square is needed, None when the
    whole cutout must be summed exactly.
    """
    good = b > 0
    b_low = np.percentile(b[good], 10)
    half = prof.size // 2
    p_max = prof.max()
    for r in range(-1, half):
        k_out = p_max * prof[half + r + 1]
        if amp_ref * w * k_out / b_low < 0.7 * _SERIES_RADIUS:
            return r
    return None


def _fit_group(counts, background, profiles, weights, active, fit_threshold=1.0,
               max_iter=30, tol=1e-5):
    """Maximum-likelihood amplitude of one source shared by some bands, at every pixel.

    Model in band ``b``: ``mu = B_b + A w_b K_b(. - p)`` with ``A >= 0`` and
    ``K_b = outer(profile_b, profile_b)``. With ``q = w_b K_b / B_b``, the
    gradient of ``log L`` is ``g(A) = G(A) - S`` with ``G = sum n q / (1 + A q)``
    and ``S = sum w_b K_b``. ``1 / G`` is concave (a parallel sum of linear
    functions of ``A``), so Newton's method on ``1 / G - 1 / S`` from the
    Gaussian (linearised) estimate lands left of the root after one step
    (clipped at 0), then converges monotonically. All positions are iterated
    at once.

    The sums over pixels that depend on ``A`` are evaluated exactly on a
    sparse list of the (position, pixel) pairs with counts near the centre of
    each cutout (or over the whole cutout for bands with few counts), and by
    power series in ``A q`` whose coefficients are correlations
    (`_SeriesBand`) further out, where ``A q`` is small. Positions where a
    series would converge slowly (``A q >= 0.3`` for a pixel with counts)
    are redone with a larger exact square, then with exact sums over the
    whole cutout. Both give the likelihood to about ``1e-8``.

    Everything that does not depend on ``A`` is a (separable) correlation:
    ``g(0)``, the observed information at 0 ``I_obs(0) = sum n q**2`` and the
    score statistic ``g(0)**2 / I_exp(0)``. Positions where the score statistic
    is below ``fit_threshold`` are not fitted (as gammapy's ``threshold``):
    there ``A = g(0) / I_obs(0)`` and ``TS = g(0)**2 / I_obs(0)``, a lower
    bound of the exact TS (``log L`` has its largest curvature at ``A = 0``).
    For a positive excess the score statistic exceeds TS in the background
    limit, so the skipped positions have TS of order ``fit_threshold`` or less.

    Returns
    -------
    amplitude, ts, info : `~numpy.ndarray`
        2-D maps: fitted counts ``A``, ``TS = 2 (log L(A) - log L(0))`` and the
        Fisher information ``-d2 log L / dA2`` at ``A`` (observed; expected
        where no count falls in the cutout).
    """
    shape = counts[0].shape
    sum_m = np.zeros(shape)     # sum of the model shape over unmasked pixels
    grad0 = np.zeros(shape)     # d log L / dA at A = 0
    info0 = np.zeros(shape)     # expected information at A = 0
    obs0 = np.zeros(shape)      # observed information at A = 0
    for n, b, prof, w in zip(counts, background, profiles, weights):
        valid = (b > 0).astype(float)  # masked pixels carry background 0 here
        inv_b = np.where(b > 0, 1.0 / np.where(b > 0, b, 1.0), 0.0)
        sum_m += w * correlate_separable(valid, prof)
        grad0 += w * correlate_separable(n * inv_b, prof)
        info0 += w ** 2 * correlate_separable(inv_b, prof ** 2)
        obs0 += w ** 2 * correlate_separable(n * inv_b ** 2, prof ** 2)
    grad0 -= sum_m
    positive = active & (grad0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(positive, grad0 ** 2 / info0, 0.0)
        amplitude = np.where(positive & (obs0 > 0), grad0 / obs0, 0.0)
    ts = np.clip(amplitude * grad0, 0.0, None)
    info = np.where(positive & (obs0 > 0), obs0, info0)
    ys, xs = np.nonzero(positive & (score >= fit_threshold))
    if ys.size == 0:
        return amplitude, ts, info

    bands = [(n, b, prof, w) for n, b, prof, w in zip(counts, background, profiles, weights)
             if w > 0 and np.any(b > 0)]
    # bands with few pixels with counts per cutout are always summed exactly
    dense = [np.count_nonzero(n > 0) / n.size * prof.size ** 2 >= _SERIES_MIN_PAIRS
             for n, b, prof, w in bands]
    cache = {}
    s_m = sum_m[ys, xs]
    start = grad0[ys, xs] / info0[ys, xs]  # linearised (Gaussian) estimate
    amp = np.zeros(ys.size)
    like = np.zeros(ys.size)
    obs = np.zeros(ys.size)
    # Tiers of increasing amplitude: the larger the amplitude, the larger the
    # central square that must be summed exactly; the last tier is all exact.
    estimate = start.copy()
    todo = np.arange(ys.size)
    # tier amplitudes: quantiles of the starting estimates, then growing 4x
    refs = list(np.maximum(np.quantile(start, _TIER_QUANTILES), 1e-3))
    while todo.size:
        amp_ref = refs.pop(0) if refs else 4.0 * amp_ref
        radii = [_inner_radius(b, prof, w, amp_ref) if is_dense else None
                 for (n, b, prof, w), is_dense in zip(bands, dense)]
        last = all(r is None for r in radii)
        now = todo if last else todo[estimate[todo] <= amp_ref]
        series, pairs = [], []
        for index, ((n, b, prof, w), inner) in enumerate(zip(bands, radii)):
            if now.size == 0:
                break
            if inner is None:
                pairs.append(_sparse_pairs(n, b, prof, w, ys[now], xs[now]))
                continue
            if index not in cache:
                cache[index] = _SeriesBand(n, b, prof, w, _SERIES_ORDER)
            coeffs, q_max = cache[index].terms(inner)
            series.append((cache[index].scale, coeffs[:, ys[now], xs[now]],
                           q_max[ys[now], xs[now]]))
            if inner >= 0:
                half = prof.size // 2
                crop = prof[half - inner:half + inner + 1]
                pairs.append(_sparse_pairs(n, b, crop, w, ys[now], xs[now]))
        if now.size:
            a, l, o = _newton(start[now], s_m[now], series, pairs, max_iter, tol)
            amp[now], like[now], obs[now] = a, l, o
            failed = now
            if series:
                q_top = np.max([q for _, _, q in series], axis=0)
                failed = now[~(a * q_top < _SERIES_RADIUS)]
            else:
                failed = now[:0]
            estimate[failed] = np.maximum(estimate[failed], a[np.isin(now, failed)])
            todo = np.union1d(np.setdiff1d(todo, now), failed)
    amplitude[ys, xs] = amp
    ts[ys, xs] = np.clip(2.0 * like, 0.0, None)
    info[ys, xs] = np.where(obs > 0, obs, info0[ys, xs])
    return amplitude, ts, info


def _newton(amp, s_m, series, pairs, max_iter, tol):
    """Newton iterations for the amplitude at a set of positions.

    ``series``: per band ``(scale, coeffs (order, n_pos), q_max (n_pos,))``;
    ``pairs``: per band ``(pos, counts, q)`` sparse pairs. Returns the
    amplitude, ``log L(A) - log L(0)`` and the observed information.
    """
    n_pos = amp.size
    amp = amp.copy()
    pos = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, int)
    cnt = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0)
    qq = np.concatenate([p[2] for p in pairs]) if pairs else np.zeros(0)
    # beyond this the series diverge; such positions are redone exactly
    cap = np.full(n_pos, np.inf)
    q_top = np.zeros(n_pos)
    for _, _, q_max in series:
        q_top = np.maximum(q_top, q_max)
        with np.errstate(divide="ignore"):
            cap = np.minimum(cap, 0.9 / np.where(q_max > 0, q_max, 0.0))

    def sums(a, with_like=False):
        """g(a) + s_m, observed information and (``with_like``) log L difference + a s_m."""
        grad = np.zeros(n_pos)
        curv = np.zeros(n_pos)
        like = np.zeros(n_pos)
        for scale, coeffs, _ in series:
            x = a * scale
            order = coeffs.shape[0]
            g_poly = coeffs[-1].copy()
            d_poly = (order - 1) * coeffs[-1]
            l_poly = coeffs[-1] / order
            for k in range(order - 2, -1, -1):
                g_poly = coeffs[k] - x * g_poly
                l_poly = coeffs[k] / (k + 1) - x * l_poly
                if k >= 1:
                    d_poly = k * coeffs[k] - x * d_poly
            # d/dA sum_k (-x)^k C'_k s = -s**2 sum_k k (-1)^(k-1) x^(k-1) C'_k
            grad += scale * g_poly
            curv += scale ** 2 * (d_poly if order > 1 else 0.0)
            like += x * l_poly
        if pos.size:
            aq = a[pos] * qq
            t = qq / (1.0 + aq)
            nt = cnt * t
            grad += np.bincount(pos, nt, minlength=n_pos)
            curv += np.bincount(pos, nt * t, minlength=n_pos)
            if with_like:
                like += np.bincount(pos, cnt * np.log1p(aq), minlength=n_pos)
        return grad, curv, like

    for _ in range(max_iter):
        total, curv, _ = sums(amp)
        grad = total - s_m
        # Newton on 1 / (g + s_m), which is concave in A (a parallel sum of lines):
        # from any start it lands left of the root, then climbs monotonically, and
        # it is exact for a single pixel, where plain Newton crawls (g ~ n / A - s_m)
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(curv > 0, grad * total / (s_m * curv), 0.0)
        new = np.clip(amp + np.nan_to_num(delta), 0.0, cap)
        step = np.abs(new - amp)
        amp = new
        # positions beyond the reach of their series will be redone: do not wait for them
        if np.all((step <= tol * (1.0 + amp)) | (amp * q_top >= _SERIES_RADIUS)):
            break
    _, curv, like = sums(amp, with_like=True)
    return amp, like - amp * s_m, curv


def compute_ts_map(counts, background, psf_sigma, mask=None, weights=None, kernel_radius=3.0,
                   fit_threshold=1.0):
    """Poisson likelihood TS map of a point source over a fixed background.

    At each pixel ``p``, the model of band ``b`` is ``mu_b = B_b + A w_b
    K_b(. - p)`` (``K_b`` a pixel-integrated Gaussian PSF, sum 1, truncated at
    ``kernel_radius`` sigma) with one free amplitude ``A >= 0`` (the total
    source counts). ``TS = 2 [log L(A_hat) - log L(0)]`` with the Cash
    likelihood ``log L = sum(n log mu - mu)`` over the unmasked pixels of the
    PSF cutout. Solved by a vectorised Newton iteration (all pixels at once).

    Parameters
    ----------
    counts : `~numpy.ndarray`
        Counts, shape ``(n_bands, ny, nx)`` or ``(ny, nx)``; non-negative.
    background : `~numpy.ndarray`
        Expected background counts, same shape (or broadcastable); values
        below ``1e-6`` times the band mean are raised to it, so that counts on
        a zero background are a (very significant) excess, not an error.
    psf_sigma : float or array-like
        Gaussian PSF sigma (pixels), one value or one per band.
    mask : `~numpy.ndarray`, optional
        True at pixels to ignore (shape of ``counts`` or ``(ny, nx)``).
    weights : array-like or ``"independent"``, optional
        Spectral shape: the fraction of the source counts in each band
        (normalised to sum 1; default: equal), or ``"independent"`` to fit one
        non-negative amplitude per band and sum the TS over bands (then the
        null distribution of TS has ``n_bands`` degrees of freedom).
    kernel_radius : float, optional
        PSF truncation radius in sigma.
    fit_threshold : float, optional
        Positions whose score statistic ``g(0)**2 / I(0)`` (a cheap
        approximation of TS) is below this are not fitted; they hold a lower
        bound of TS (see ``_fit_group``). 0 fits every position with a positive
        excess.

    Returns
    -------
    dict of `~numpy.ndarray`
        ``ts``, ``flux`` (fitted source counts, all bands), ``flux_err``
        (``1 / sqrt(information)``, 1 sigma from the likelihood curvature at
        the fit), each ``(ny, nx)``, and ``weights``.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim == 2:
        counts = counts[np.newaxis]
    if counts.ndim != 3:
        raise ValueError(f"counts must be 2-D or 3-D, got shape {counts.shape}")
    n_bands = counts.shape[0]
    try:
        background = np.broadcast_to(np.asarray(background, dtype=float), counts.shape)
    except ValueError:
        raise ValueError(f"background of shape {np.shape(background)} does not match the "
                         f"counts of shape {counts.shape}") from None
    mask = np.zeros(counts.shape, bool) if mask is None else np.broadcast_to(mask, counts.shape)
    mask = mask | ~np.isfinite(counts) | ~np.isfinite(background)
    if np.any(counts[~mask] < 0):
        raise ValueError("tsmap needs counts, but the counts have negative values")
    if np.any(background[~mask] < 0):
        raise ValueError("the background has negative values; it must be expected counts >= 0")
    sigmas = np.broadcast_to(np.atleast_1d(np.asarray(psf_sigma, dtype=float)), (n_bands,))
    if np.any(~np.isfinite(sigmas)) or np.any(sigmas <= 0):
        raise ValueError(f"psf_sigma must be positive, got {psf_sigma}")
    profiles = [gaussian_profile(s, kernel_radius) for s in sigmas]
    n_list, b_list = [], []
    for band in range(n_bands):
        good = ~mask[band]
        level = background[band][good].mean() if good.any() else 1.0
        floor = 1e-6 * level if level > 0 else 1e-6
        n_list.append(np.where(good, counts[band], 0.0))
        b_list.append(np.where(good, np.maximum(background[band], floor), 0.0))
    active = ~np.all(mask, axis=0)

    if isinstance(weights, str):
        if weights != "independent":
            raise ValueError(f"weights must be an array or 'independent', not {weights!r}")
        ts = np.zeros(counts.shape[1:])
        flux = np.zeros_like(ts)
        var = np.zeros_like(ts)
        for band in range(n_bands):
            amp, ts_b, info = _fit_group([n_list[band]], [b_list[band]], [profiles[band]], [1.0],
                                         active & ~mask[band], fit_threshold)
            ts += ts_b
            flux += amp
            var += 1.0 / np.where(info > 0, info, np.inf)
        with np.errstate(divide="ignore"):
            flux_err = np.where(var > 0, np.sqrt(var), np.inf)
        return {"ts": ts, "flux": flux, "flux_err": flux_err, "weights": "independent"}

    weights = np.ones(n_bands) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != (n_bands,) or np.any(~np.isfinite(weights)) or np.any(weights < 0) \
            or weights.sum() <= 0:
        raise ValueError(f"weights must be {n_bands} non-negative numbers with a positive sum, "
                         f"got {weights}")
    weights = weights / weights.sum()
    amp, ts, info = _fit_group(n_list, b_list, profiles, weights, active, fit_threshold)
    with np.errstate(divide="ignore"):
        flux_err = np.where(info > 0, 1.0 / np.sqrt(info), np.inf)
    return {"ts": ts, "flux": amp, "flux_err": flux_err, "weights": weights}


def estimate_background(counts, mask, psf_sigma, scale=None):
    """Background of each band estimated from the counts, sources masked.

    Per band, the normalised Gaussian smoothing (width ``scale``) of the counts
    over pixels that are neither masked nor in a source
    (``astro_asid.detection._classical_utils.counts_background``). Source
    pixels are found both in the band itself and in the band sum (where faint
    sources are more significant): where the PSF-matched excess exceeds 3
    sigma, dilated by 2 PSF sigma, iterated with the background.

    Parameters
    ----------
    counts : `~numpy.ndarray`
        ``(n_bands, ny, nx)`` counts.
    mask : `~numpy.ndarray`
        Same shape, True at pixels to ignore.
    psf_sigma : array-like
        PSF sigma per band (pixels).
    scale : float, optional
        Smoothing scale (pixels); default ``max(3 * max(psf_sigma), 5)``.

    Returns
    -------
    `~numpy.ndarray`
        Background, shape of ``counts``.
    """
    counts = np.where(mask, 0.0, counts)
    sigmas = np.broadcast_to(np.atleast_1d(psf_sigma), (counts.shape[0],))
    if scale is None:
        scale = max(3.0 * float(np.max(sigmas)), 5.0)
    valid_all = ~np.any(mask, axis=0)
    total = counts.sum(axis=0)
    weights = np.clip(counts.sum(axis=(1, 2)), 0, None)
    sig_eff = float(np.sqrt(np.sum(weights * sigmas ** 2) / weights.sum())) if weights.sum() > 0 \
        else float(np.mean(sigmas))
    if valid_all.any():
        _, sum_sources = counts_background(total, valid_all, sig_eff, scale)
    else:
        sum_sources = np.zeros(total.shape, bool)
    out = np.zeros(counts.shape)
    for band in range(counts.shape[0]):
        valid = ~mask[band] & ~sum_sources
        if valid.sum() < 0.2 * (~mask[band]).sum():
            valid = ~mask[band]
        if not valid.any():
            continue
        out[band], _ = counts_background(counts[band], valid, sigmas[band], scale)
    return out


def spectral_weights(image, spectrum, index):
    """Fraction of a source's counts in each band, or ``"independent"``.

    ``"powerlaw"``: ``dN/dE ~ E**-index`` integrated over ``image.energy_edges``,
    times the mean exposure of each band when ``image.exposure`` is given.
    ``"counts"``: proportional to the total counts of each band (the source is
    assumed to have the spectrum of the image). An array: used as given.
    ``None``: ``"powerlaw"`` when the energy edges are known, else ``"counts"``.
    """
    n = image.n_bands
    if n == 1:
        return np.ones(1)
    if spectrum is None:
        spectrum = "powerlaw" if image.energy_edges is not None else "counts"
    if isinstance(spectrum, str):
        if spectrum == "independent":
            return "independent"
        if spectrum == "counts":
            w = np.clip(image.filled(0.0).sum(axis=(1, 2)).astype(float), 0, None)
            return w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
        if spectrum == "powerlaw":
            if image.energy_edges is None:
                raise ValueError("spectrum='powerlaw' needs image.energy_edges; give the energy "
                                 "bands or use spectrum='counts' or explicit weights")
            edges = image.energy_edges.to_value("GeV")
            if np.isclose(index, 1.0):
                w = np.log(edges[1:] / edges[:-1])
            else:
                w = (edges[:-1] ** (1 - index) - edges[1:] ** (1 - index)) / (index - 1)
            if image.exposure is not None:
                exposure = np.asarray(getattr(image.exposure, "value", image.exposure), float)
                if exposure.ndim == 1 and exposure.size == n:
                    w = w * exposure
                elif exposure.ndim == 3 and exposure.shape[0] == n:
                    w = w * np.nanmean(exposure, axis=(1, 2))
            return w / w.sum()
        raise ValueError(f"spectrum must be one of {_SPECTRA}, an array of weights or None, "
                         f"not {spectrum!r}")
    w = np.asarray(spectrum, dtype=float)
    if w.shape != (n,) or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"spectrum weights must be {n} non-negative numbers with a positive "
                         f"sum, got {spectrum!r}")
    return w / w.sum()


def checked_background(background, image):
    """``background`` (an array or `~astropy.units.Quantity`) as floats of the image's shape.

    Raises
    ------
    ValueError
        It does not broadcast to the image, or is negative or not finite at an
        unmasked pixel.
    """
    back = np.asarray(getattr(background, "value", background), dtype=float)
    try:
        back = np.broadcast_to(back, image.data.shape)
    except ValueError:
        raise ValueError(f"background of shape {back.shape} does not match the image of "
                         f"shape {image.data.shape}") from None
    bad = ~np.isfinite(back) | (back < 0)
    if np.any(bad & ~image.mask):
        raise ValueError("the background must be finite and non-negative at unmasked pixels")
    return back


class TSMapDetector(Detector):
    """Peaks of a Poisson likelihood test-statistic (TS) map.

    For a point source at each pixel, with the Gaussian PSF of each band,
    over a fixed background, one amplitude ``A >= 0`` (total source counts)
    is fitted by maximum Cash likelihood with a fixed spectral shape
    (``spectrum``), or one amplitude per band (``spectrum="independent"``),
    see `compute_ts_map`. Detections are local maxima of TS above
    ``ts_threshold`` at least ``min_separation`` pixels apart, outside
    pixels masked in every band.

    Standard estimates:

    - position: the maximum of a least-squares 2-D quadratic fitted to the
      3x3 TS values around the peak pixel;
    - position error: from the curvature of that quadratic, ``cov = 2
      inv(-H)`` (``H`` its Hessian; ``TS`` drops by 1 at 1 sigma along each
      axis, and by 2.30 on the 68% error ellipse); when the quadratic has no
      maximum, ``sigma_psf sqrt(2 / TS)`` (the background-limited
      Cramer-Rao bound);
    - ``flux``: fitted source counts at the peak pixel (all bands, full PSF),
      ``flux_err`` = ``1 / sqrt(-d2 log L / dA2)`` (likelihood curvature);
    - ``ts`` column; ``score = 1 - exp(-sqrt(TS) / 10)``: 0.18 at TS = 4,
      0.39 at 25, 0.63 at 100, 0.86 at 400 (``sqrt(TS)`` is the significance
      in sigma for one free amplitude).

    Parameters
    ----------
    ts_threshold : float, optional
        Minimum TS of a detection (25 is the gamma-ray catalog convention,
        about 5 sigma; lower values such as 4 give candidate lists for
        precision/recall curves over ``score``).
    psf_sigma : float or array-like, optional
        Gaussian PSF sigma in pixels, one value or one per band. Default:
        ``image.psf["sigma_pix"]`` (or ``"fwhm_pix"``), else a FWHM of 3 pixels.
    background : None, ``"estimate"`` or array-like, optional
        Expected background counts: None uses ``image.background`` when the
        image has one (the "oracle" mode) and estimates it otherwise;
        ``"estimate"`` always estimates it from the counts (see
        `estimate_background`); an array (broadcastable to the image) is used
        as given.
    background_scale : float, optional
        Smoothing scale (pixels) of the estimated background; default
        ``max(3 * max(psf_sigma), 5)``.
    spectrum : None, ``"powerlaw"``, ``"counts"``, ``"independent"`` or array-like
        Spectral shape of the test source, see `spectral_weights`.
    spectral_index : float, optional
        Photon index for ``spectrum="powerlaw"``.
    min_separation : float, optional
        Minimum distance between detections (pixels); default ``max(2,
        2 sigma_eff)`` with ``sigma_eff`` the counts-weighted PSF sigma.
    kernel_radius : float, optional
        PSF truncation radius in sigma.
    """

    name = "tsmap"
    description = "Poisson likelihood TS map of a point source with the PSF over a background"
    instruments = ("fermi-lat", "ctao", "any")
    needs_counts = True

    def __init__(self, ts_threshold=25.0, psf_sigma=None, background=None, background_scale=None,
                 spectrum=None, spectral_index=2.3, min_separation=None, kernel_radius=3.0):
        super().__init__()
        self.ts_threshold = check_positive("ts_threshold", ts_threshold)
        if psf_sigma is not None:
            for value in np.atleast_1d(psf_sigma):
                check_positive("psf_sigma", value)
        self.psf_sigma = psf_sigma
        if isinstance(background, str) and background != "estimate":
            raise ValueError(f"background must be None, 'estimate' or an array, not {background!r}")
        self.background = background
        self.background_scale = check_positive("background_scale", background_scale,
                                               allow_none=True)
        if isinstance(spectrum, str) and spectrum not in _SPECTRA:
            raise ValueError(f"spectrum must be one of {_SPECTRA}, an array or None, "
                             f"not {spectrum!r}")
        self.spectrum = spectrum
        self.spectral_index = float(spectral_index)
        self.min_separation = check_positive("min_separation", min_separation, allow_none=True)
        self.kernel_radius = check_positive("kernel_radius", kernel_radius)

    def background_of(self, image, sigmas):
        """The background counts used for ``image``, shape ``(n_bands, ny, nx)``."""
        choice = self.background
        if choice is None and image.background is not None:
            choice = image.background
        if choice is None or (isinstance(choice, str) and choice == "estimate"):
            return estimate_background(image.filled(0.0).astype(float), image.mask, sigmas,
                                       self.background_scale)
        return checked_background(choice, image)

    def ts_map(self, image):
        """TS, flux and flux-error maps of ``image`` (see `compute_ts_map`)."""
        image.check_counts(self.name)
        sigmas = band_sigmas(image, self.psf_sigma, "psf_sigma")
        background = self.background_of(image, sigmas)
        weights = spectral_weights(image, self.spectrum, self.spectral_index)
        result = compute_ts_map(image.filled(0.0), background, sigmas, mask=image.mask,
                                weights=weights, kernel_radius=self.kernel_radius)
        result["background"] = background
        return result

    def detect(self, image):
        """Find point sources in ``image``; see the class docstring.

        Returns
        -------
        `~astropy.table.QTable`
            ``x_centroid``, ``y_centroid``, ``score``, ``x_err``, ``y_err``,
            ``flux``, ``flux_err``, ``ts``, by decreasing score.

        Raises
        ------
        ValueError
            Negative counts, or an unusable background or PSF.
        """
        result = self.ts_map(image)
        ts = result["ts"]
        sigmas = band_sigmas(image, self.psf_sigma, "psf_sigma")
        sig_eff = effective_sigma(image, sigmas)
        min_sep = self.min_separation or max(2.0, 2.0 * sig_eff)
        size = 2 * int(np.ceil(min_sep)) + 1
        local = ndimage.maximum_filter(ts, size=size, mode="constant", cval=0.0)
        peak = (ts == local) & (ts >= self.ts_threshold) & ~image.mask2d
        ys, xs = np.nonzero(peak)
        if ys.size:
            keep = prune_close(xs, ys, ts[ys, xs], min_sep)
            ys, xs = ys[keep], xs[keep]
        if ys.size == 0:
            return empty_table(image.unit, extra=("ts",))
        padded = np.pad(ts, 1, mode="edge")
        x = np.empty(ys.size)
        y = np.empty(ys.size)
        x_err = np.empty(ys.size)
        y_err = np.empty(ys.size)
        for i, (iy, ix) in enumerate(zip(ys, xs)):
            dx, dy, hess, ok = quadratic_peak(padded[iy:iy + 3, ix:ix + 3])
            fallback = sig_eff * np.sqrt(2.0 / ts[iy, ix])
            if ok:
                cov = 2.0 * np.linalg.inv(-hess)
                x_err[i] = np.sqrt(cov[0, 0])
                y_err[i] = np.sqrt(cov[1, 1])
                x[i] = ix + np.clip(dx, -0.5, 0.5)
                y[i] = iy + np.clip(dy, -0.5, 0.5)
            else:
                x[i], y[i], x_err[i], y_err[i] = ix, iy, fallback, fallback
        tsv = ts[ys, xs]
        return make_table(x, y, snr_to_score(np.sqrt(tsv)), x_err, y_err, result["flux"][ys, xs],
                          result["flux_err"][ys, xs], unit=image.unit, ts=tsv)

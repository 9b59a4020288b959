"""Satellite and aircraft trails in optical images: find them, model them, remove them.

A trail is a straight line of roughly constant cross-profile that crosses
the frame. Source finders fire on it (a bright trail is many pixels above
any threshold, and its shot noise and brightness changes make peaks along
it), so the optical pipeline finds trails first and folds them into the
background, the way pipelines mask or model streaks before detection.

1. **Find** (`find_trails`): the signal-to-noise image, binned to at most
   ``max_binned`` pixels a side and clipped to +-3 so that stars weigh
   little, goes through a weighted Hough (Radon) transform. A line is a
   candidate when its mean S/N stands out from the parallel lines a few
   pixels away (which removes broad features: halos, crowded cores,
   background residuals).
2. **Verify and fit** at full resolution: the median S/N on the line, above
   that of the strips beside it, must be significant in at least 3/4 of its
   segments and steady along it (a trail crosses the frame; a bleed column
   or a chance alignment of stars in a crowded field does not), the median
   cross-profile is fitted by a Gaussian, whose centre in the two halves of
   the line refines the angle, and the amplitude is followed along the
   trail in short segments (median, so stars on the trail do not count).
3. **Remove** (`trail_model`, `remove_trails`): the fitted trail becomes part
   of the background and the noise in its band is scaled to the scatter
   the residual really has there (the trail's own shot noise), so stars on
   a trail are still found and the trail is not.
"""

import warnings

import numpy as np
from astropy.nddata import block_reduce
from astropy.stats import mad_std
from astropy.table import Table
from scipy import ndimage
from scipy.optimize import curve_fit

__all__ = ["find_trails", "trail_model", "remove_trails"]

#: Clip of the S/N image before the Hough transform (stars weigh at most this much per pixel).
HOUGH_CLIP = 3.0


def _binned(snr, bad, factor):
    """Mean of ``factor`` x ``factor`` blocks times ``factor`` (unit variance for white
    noise); NaN where every pixel is bad."""
    clipped = np.where(bad, np.nan, np.clip(snr, -HOUGH_CLIP, HOUGH_CLIP))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return block_reduce(clipped, factor, func=np.nanmean) * factor


def _hough(img, angles):
    """Sum and number of the finite pixels of ``img`` on each line (angle, rho).

    ``angles`` (radians) are the directions of the lines' normals; ``rho`` is
    the signed distance (binned pixels, rounded) of the line from the image
    centre, offset so that index 0 is ``-rmax``.
    """
    ny, nx = img.shape
    yy, xx = np.nonzero(np.isfinite(img))
    w = img[yy, xx]
    xc, yc = xx - (nx - 1) / 2.0, yy - (ny - 1) / 2.0
    rmax = int(np.ceil(np.hypot(nx, ny) / 2.0)) + 1
    n_rho = 2 * rmax + 1
    idx = np.rint(np.outer(np.cos(angles), xc) + np.outer(np.sin(angles), yc)).astype(np.int64)
    idx += rmax + n_rho * np.arange(len(angles))[:, None]
    total = np.bincount(idx.ravel(), weights=np.tile(w, len(angles)),
                        minlength=n_rho * len(angles))
    count = np.bincount(idx.ravel(), minlength=n_rho * len(angles))
    shape = (len(angles), n_rho)
    return total.reshape(shape), count.reshape(shape), rmax


def _band(shape, angle, rho, half_width):
    """Pixels within ``half_width`` of the line (normal direction ``angle``, offset
    ``rho`` from the image centre): ``(iy, ix, d, along)``, with ``d`` the signed
    distance from the line and ``along`` the coordinate along it. Only the band
    is visited, so the cost grows with the line's length, not the image's area."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    c, s = np.cos(angle), np.sin(angle)
    if abs(s) >= abs(c):      # closer to horizontal: a run of rows in every column
        u = np.arange(nx)
        centre = cy + (rho - (u - cx) * c) / s
        w = int(np.ceil(half_width / abs(s))) + 1
    else:
        u = np.arange(ny)
        centre = cx + (rho - (u - cy) * s) / c
        w = int(np.ceil(half_width / abs(c))) + 1
    off = np.arange(-w, w + 1)
    a = np.repeat(u, len(off))
    b = (np.rint(centre).astype(np.int64)[:, None] + off).ravel()
    ix, iy = (a, b) if abs(s) >= abs(c) else (b, a)
    keep = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    ix, iy = ix[keep], iy[keep]
    xc, yc = ix - cx, iy - cy
    d = xc * c + yc * s - rho
    sel = np.abs(d) < half_width
    return iy[sel], ix[sel], d[sel], (-xc * s + yc * c)[sel]


def _gauss(d, amp, mu, sig, c):
    return amp * np.exp(-0.5 * ((d - mu) / sig) ** 2) + c


def _fit_profile(d, v, half_width):
    """Gaussian fit (amp, mu, sigma, const) of the median profile of ``v`` versus ``d``;
    None when it fails or is not a positive, resolved bump."""
    edges = np.arange(-half_width, half_width + 0.25, 0.5)
    which = np.digitize(d, edges) - 1
    ok = (which >= 0) & (which < len(edges) - 1)
    if ok.sum() < 20:
        return None
    order = np.argsort(which[ok], kind="stable")
    wv, vv = which[ok][order], v[ok][order]
    cuts = np.flatnonzero(np.diff(wv)) + 1
    groups = np.split(vv, cuts)
    centres = 0.5 * (edges[wv[np.r_[0, cuts]]] + edges[wv[np.r_[0, cuts]] + 1])
    prof = np.array([np.median(g) for g in groups])
    if len(prof) < 8:
        return None
    i = int(np.argmax(prof))
    try:
        p, _ = curve_fit(_gauss, centres, prof, p0=(prof[i], centres[i], 1.5, 0.0),
                         bounds=([0.0, -half_width, 0.3, -2.0],
                                 [np.inf, half_width, half_width / 2.0, 2.0]), maxfev=2000)
    except (RuntimeError, ValueError):
        return None
    return p


def _verify_and_fit(snr, bad, angle, rho, min_segment_z, min_amplitude, max_variation,
                    half_width=12.0):
    """Refined trail parameters, or None when the line is not a trail (see module doc)."""
    def good_pixels(angle, rho, width):
        iy, ix, d, s = _band(snr.shape, angle, rho, width)
        ok = ~bad[iy, ix]
        return d[ok], s[ok], snr[iy[ok], ix[ok]]

    d, s, v = good_pixels(angle, rho, half_width)
    if len(d) < 50:
        return None
    # quick rejection before any fit: the line must stand out from its surroundings
    on, off = v[np.abs(d) < 2.0], v[np.abs(d) > 5.0]
    if len(on) < 10 or len(off) < 10 or (np.median(on) - np.median(off)) * np.sqrt(len(on)) \
            < 1.2533 * min_segment_z * max(mad_std(off), 0.5):
        return None
    p = _fit_profile(d, v, half_width)
    if p is None:
        return None
    # refine the angle and offset from the profile centres of the two halves of the line
    s_mid = np.median(s)
    mus = []
    for half in (s < s_mid, s >= s_mid):
        ph = _fit_profile(d[half], v[half], half_width)
        mus.append(None if ph is None else (ph[1], np.median(s[half])))
    if all(m is not None for m in mus) and mus[1][1] != mus[0][1]:
        # the centre drifts as mu0 + k * s along the line: turn the normal by -atan(k)
        k = (mus[1][0] - mus[0][0]) / (mus[1][1] - mus[0][1])
        if abs(k) < np.tan(np.radians(2.0)):
            mu0 = 0.5 * (mus[0][0] + mus[1][0]) - k * 0.5 * (mus[0][1] + mus[1][1])
            tilt = -np.arctan(k)
            rho = (rho + mu0) * np.cos(tilt)
            angle = angle + tilt
            d, s, v = good_pixels(angle, rho, half_width)
            p = _fit_profile(d, v, half_width) if len(d) >= 50 else None
            if p is None:
                return None
    amp, mu, sig, _ = p
    if amp < min_amplitude:
        return None
    rho = rho + mu
    inner = max(3.0 * sig, 3.0)
    d, s, v = good_pixels(angle, rho, inner + 6.0)
    core = np.abs(d) < max(sig, 0.75)
    side = np.abs(d) >= inner
    if core.sum() < 20 or side.sum() < 40:
        return None
    # a trail crosses the frame with a steady brightness: in at least 3/4 of its
    # segments (about 20 px) the median S/N on the line must stand out from the strips
    # beside it, and that contrast must vary little from segment to segment (chance
    # alignments of stars in a crowded field are patchy)
    n_seg = max(4, int(np.ptp(s[core]) // 20))
    edges = np.quantile(s[core], np.linspace(0.0, 1.0, n_seg + 1))
    z, contrast = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        within = (s >= lo) & (s <= hi)
        on, off = v[core & within], v[side & within]
        if len(on) < 5 or len(off) < 10:
            z.append(0.0)
            contrast.append(0.0)
            continue
        spread = max(mad_std(off), 0.5)
        contrast.append(np.median(on) - np.median(off))
        z.append(contrast[-1] / (1.2533 * spread / np.sqrt(len(on))))
    z, contrast = np.array(z), np.array(contrast)
    typical = np.median(contrast)
    if (np.mean(z > min_segment_z) < 0.75 or typical <= 0
            or mad_std(contrast) > max_variation * typical):
        return None
    return dict(angle=angle, rho=rho, sigma=sig, amplitude=amp,
                significance=float(np.median(v[core]) * np.sqrt(core.sum()) / 1.2533),
                length=float(np.ptp(s[core])))


def find_trails(snr, bad=None, threshold=8.0, max_trails=4, max_binned=128,
                min_segment_z=3.0, min_amplitude=1.5, max_variation=0.35):
    """Find straight trails (satellites, aircraft) in a signal-to-noise image.

    Parameters
    ----------
    snr : array (ny, nx)
        ``(data - background) / noise``.
    bad : bool array (ny, nx), optional
        Pixels to ignore (masked, NaN).
    threshold : float
        Minimum significance of a line in the Hough transform: its summed S/N
        above that of the parallel lines around it, over the square root of
        its number of (binned) pixels.
    max_trails : int
        At most this many trails are returned (each is removed before the
        next is searched).
    max_binned : int
        The image is binned by an integer factor to at most this many pixels
        a side for the Hough transform.
    min_segment_z : float
        Significance of the median S/N on the trail, above the strips beside
        it, required in at least 3/4 of its segments of about 20 px.
    min_amplitude : float
        Minimum fitted peak S/N of a trail (fainter ones hardly disturb a
        source finder).
    max_variation : float
        Largest robust spread (`~astropy.stats.mad_std`) of the segments' contrast, as a
        fraction of its median: a trail's brightness is steady. A trail that
        flares strongly along the frame is therefore not found.

    Returns
    -------
    trails : `~astropy.table.Table`
        One row per trail: ``angle`` (rad, direction of the line's normal,
        counter-clockwise from +x), ``rho`` (px, signed distance of the line
        from the image centre ``((nx - 1) / 2, (ny - 1) / 2)``), ``sigma``
        (px, Gaussian cross-profile), ``amplitude`` (peak S/N),
        ``significance``, ``length`` (px inside the image) and ``x0, y0, x1,
        y1``, the ends of the line at the image border.
    """
    snr = np.asarray(snr, np.float64)
    if snr.ndim != 2:
        raise ValueError(f"find_trails needs a 2-D image, got shape {snr.shape}")
    bad = np.zeros(snr.shape, bool) if bad is None else np.asarray(bad, bool)
    if bad.shape != snr.shape:
        raise ValueError(f"bad has shape {bad.shape}, the image {snr.shape}")
    bad = bad | ~np.isfinite(snr)
    rows = []
    work = np.where(bad, 0.0, snr)
    ny, nx = snr.shape
    if min(ny, nx) < 32 or bad.all():
        return _trail_table(rows, snr.shape)
    factor = max(1, int(np.ceil(max(ny, nx) / max_binned)))
    for _ in range(int(max_trails)):
        img = _binned(work, bad, factor)
        diag = np.hypot(*img.shape)
        # half an angle step moves the line's ends by at most half a binned pixel
        angles = np.arange(0.0, np.pi, 2.0 / diag)
        total, count, rmax = _hough(img, angles)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
        # contrast with the parallel lines 3-10 binned pixels away on either side
        near = np.stack([np.roll(mean, k, axis=1) for k in (*range(3, 11), *range(-10, -2))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            base = np.nanmedian(near, axis=0)
        z = (mean - base) * np.sqrt(count)
        z[(count < 0.4 * min(img.shape)) | ~np.isfinite(z)] = -np.inf
        found = None
        # try the strongest few lines (a bright star row may outrank a faint trail)
        for flat in np.argsort(z, axis=None)[::-1][:5]:
            i, j = np.unravel_index(flat, z.shape)
            if z[i, j] < threshold:
                break
            # binned centre -> full-resolution centre: same angle, rho scales
            rho = (j - rmax) * factor + _centre_shift(snr.shape, factor, angles[i])
            found = _verify_and_fit(work, bad, angles[i], rho, min_segment_z, min_amplitude,
                                    max_variation)
            if found is not None:
                break
        if found is None:
            break
        rows.append(found)
        model, _ = trail_model(snr.shape, _trail_table([found], snr.shape))
        work = work - model
    return _trail_table(rows, snr.shape)


def _centre_shift(shape, factor, angle):
    """Offset (px) between the centres of the binned and the full image along the normal."""
    ny, nx = shape
    cx_b = (((nx // factor) - 1) / 2.0 + 0.5) * factor - 0.5
    cy_b = (((ny // factor) - 1) / 2.0 + 0.5) * factor - 0.5
    return (cx_b - (nx - 1) / 2.0) * np.cos(angle) + (cy_b - (ny - 1) / 2.0) * np.sin(angle)


def _trail_table(rows, shape):
    ny, nx = shape
    t = Table(rows=[(r["angle"], r["rho"], r["sigma"], r["amplitude"], r["significance"],
                     r["length"]) for r in rows],
              names=("angle", "rho", "sigma", "amplitude", "significance", "length"),
              dtype=(float,) * 6)
    ends = [_border_points(shape, r["angle"], r["rho"]) for r in rows]
    for k, name in enumerate(("x0", "y0", "x1", "y1")):
        t[name] = np.array([e[k] for e in ends], float)
    t.meta["shape"] = (ny, nx)
    return t


def _border_points(shape, angle, rho):
    """Where the line leaves the image box (x0, y0, x1, y1), NaN if it misses it."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    c, s = np.cos(angle), np.sin(angle)
    px, py = cx + rho * c, cy + rho * s     # foot of the normal
    dx, dy = -s, c                           # direction along the line
    ts = []
    for p, dp, lo, hi in ((px, dx, -0.5, nx - 0.5), (py, dy, -0.5, ny - 0.5)):
        if abs(dp) > 1e-12:
            ts += [(lo - p) / dp, (hi - p) / dp]
    pts = [(px + t * dx, py + t * dy) for t in ts]
    pts = [q for q in pts if -0.5 - 1e-6 <= q[0] <= nx - 0.5 + 1e-6
           and -0.5 - 1e-6 <= q[1] <= ny - 0.5 + 1e-6]
    if len(pts) < 2:
        return (np.nan,) * 4
    pts.sort()
    return (*pts[0], *pts[-1])


def trail_model(shape, trails):
    """S/N model image of ``trails`` (from `find_trails`) and the mask of their bands.

    The amplitude is the fitted peak, constant along the trail; `remove_trails`
    follows its changes along the trail on the data.

    Returns
    -------
    model : float array (ny, nx)
    band : bool array (ny, nx)
        Pixels within 3 sigma of a trail's centre line.
    """
    model = np.zeros(shape)
    band = np.zeros(shape, bool)
    for t in trails:
        iy, ix, d, _ = _band(shape, t["angle"], t["rho"], 3.0 * t["sigma"])
        model[iy, ix] += t["amplitude"] * np.exp(-0.5 * (d / t["sigma"]) ** 2)
        band[iy, ix] = True
    return model, band


def remove_trails(snr, bad=None, trails=None, segment=32.0, **kwargs):
    """Subtract trails from a S/N image and rescale the noise in their bands.

    Parameters
    ----------
    snr : array (ny, nx)
    bad : bool array (ny, nx), optional
    trails : `~astropy.table.Table`, optional
        From `find_trails`; found with ``**kwargs`` when not given.
    segment : float
        Length (px) of the pieces of trail whose median amplitude is fitted,
        so that a trail that brightens or fades (tumbling satellites) is
        followed.

    Returns
    -------
    model : float array (ny, nx)
        The trails' S/N (to be added to the background, in noise units).
    noise_scale : float array (ny, nx)
        Factor (>= 1) for the noise map, ``sqrt(1 + c model)``: a trail's
        shot noise grows with its signal (``c`` fitted to the residual's robust
        scatter at each level of the model).
    trails : `~astropy.table.Table`
    """
    snr = np.asarray(snr, np.float64)
    bad = np.zeros(snr.shape, bool) if bad is None else np.asarray(bad, bool) | ~np.isfinite(snr)
    if trails is None:
        trails = find_trails(snr, bad, **kwargs)
    model = np.zeros(snr.shape)
    clean = np.where(bad, np.nan, snr)
    for t in trails:
        iy, ix, d, along = _band(snr.shape, t["angle"], t["rho"], 3.0 * t["sigma"])
        g = np.exp(-0.5 * (d / t["sigma"]) ** 2)
        core = (np.abs(d) < max(t["sigma"], 0.75)) & ~bad[iy, ix]
        # the amplitude along the trail: medians of S/N / profile in segments
        seg = np.floor(along[core] / segment).astype(int)
        ratio = snr[iy[core], ix[core]] / g[core]
        keys, inv = np.unique(seg, return_inverse=True)
        if not len(keys):
            continue
        amp = np.array([np.median(ratio[inv == k]) for k in range(len(keys))])
        amp = ndimage.median_filter(amp, size=3, mode="nearest") if len(amp) >= 3 else amp
        amp_map = np.interp(along, (keys + 0.5) * segment, amp)
        model[iy, ix] += np.clip(amp_map, 0.0, None) * g
    return model, _noise_scale(clean - model, model, bad), trails


def _noise_scale(resid, model, bad):
    """Noise factor ``sqrt(1 + c model)`` for the trails' own shot noise.

    A trail of ``model`` (S/N units) adds Poisson variance proportional to
    its signal, so the residual's variance grows linearly with ``model``; ``c``
    is fitted to robust variances in bins of ``model``.
    """
    scale = np.ones(model.shape)
    on = (model > 0.3) & ~bad & np.isfinite(resid)
    off = (model == 0) & ~bad & np.isfinite(resid)
    if on.sum() < 50 or off.sum() < 50:
        return scale

    v0 = mad_std(resid[off]) ** 2
    m, r = model[on], resid[on]
    edges = np.unique(np.quantile(m, np.linspace(0.0, 1.0, 9)))
    which = np.clip(np.digitize(m, edges) - 1, 0, len(edges) - 2)
    mc, vc, n = [], [], []
    for k in range(len(edges) - 1):
        sel = which == k
        if sel.sum() >= 20:
            mc.append(np.mean(m[sel]))
            vc.append(mad_std(r[sel]) ** 2 / max(v0, 1e-6) - 1.0)
            n.append(sel.sum())
    if not mc:
        return scale
    mc, vc, n = map(np.asarray, (mc, vc, n))
    c = max(float(np.sum(n * mc * vc) / np.sum(n * mc**2)), 0.0)
    scale[model > 0] = np.sqrt(1.0 + c * model[model > 0])
    return scale

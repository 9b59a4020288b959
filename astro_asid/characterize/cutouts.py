"""Cutouts around candidate positions, the input of the characterisation networks."""

import numpy as np

__all__ = ["extract_cutouts", "cutout_input"]


def extract_cutouts(data, x, y, size, mask=None, binning=1):
    """Square cutouts centred on the pixels nearest to ``(x, y)``.

    Parameters
    ----------
    data : `~numpy.ndarray`
        ``(n_bands, ny, nx)`` image.
    x, y : array-like
        Candidate positions (0-based pixels).
    size : int
        Cutout side in output pixels (odd when ``binning`` is 1, so that the
        candidate's pixel is the centre).
    mask : `~numpy.ndarray` of bool, optional
        ``(n_bands, ny, nx)``; True marks pixels to ignore (they read as 0).
    binning : int
        Sum ``binning x binning`` blocks of input pixels into one output pixel
        (a wider field of view for extended sources at the same network size).

    Returns
    -------
    cutouts : `~numpy.ndarray`
        ``(n, n_bands, size, size)`` float32; pixels outside the image or
        masked are 0.
    valid : `~numpy.ndarray`
        ``(n, size, size)`` float32, the fraction of valid input pixels in
        each output pixel (1 inside the image).
    offset : `~numpy.ndarray`
        ``(n, 2)`` position of the candidate relative to the cutout centre, in
        output pixels (``x``, ``y``).
    """
    data = np.asarray(data, np.float32)
    if data.ndim != 3:
        raise ValueError(f"data must be (n_bands, ny, nx), got shape {data.shape}")
    size, binning = int(size), int(binning)
    if size < 1 or binning < 1:
        raise ValueError(f"size and binning must be >= 1, got {size}, {binning}")
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    nb, ny, nx = data.shape
    good = np.isfinite(data)
    if mask is not None:
        good &= ~np.broadcast_to(np.asarray(mask, bool), data.shape)
    good2 = good.all(axis=0)
    clean = np.where(good, data, 0.0).astype(np.float32)
    span = size * binning
    # the cutout's central output pixel covers the candidate's (binned) pixel
    pad = span + 2
    padded = np.pad(clean, ((0, 0), (pad, pad), (pad, pad)))
    vpad = np.pad(good2.astype(np.float32), pad)
    cx = np.rint(x).astype(int)
    cy = np.rint(y).astype(int)
    half = span // 2
    x0 = cx - half + pad
    y0 = cy - half + pad
    n = len(x)
    cut = np.empty((n, nb, span, span), np.float32)
    val = np.empty((n, span, span), np.float32)
    for i in range(n):
        cut[i] = padded[:, y0[i]:y0[i] + span, x0[i]:x0[i] + span]
        val[i] = vpad[y0[i]:y0[i] + span, x0[i]:x0[i] + span]
    if binning > 1:
        cut = cut.reshape(n, nb, size, binning, size, binning).sum(axis=(3, 5))
        val = val.reshape(n, size, binning, size, binning).mean(axis=(2, 4))
    # centre of the cutout in input pixels: the block centre of the middle output pixel
    centre_in = (cx - half + (span - 1) / 2.0, cy - half + (span - 1) / 2.0)
    offset = np.column_stack([(x - centre_in[0]) / binning, (y - centre_in[1]) / binning])
    return cut, val, offset


def cutout_input(cutouts, valid, mode="log1p"):
    """Network input planes and per-cutout scalars from counts cutouts.

    Parameters
    ----------
    cutouts : `~numpy.ndarray`
        ``(n, n_bands, s, s)`` counts.
    valid : `~numpy.ndarray`
        ``(n, s, s)`` fraction of valid pixels.
    mode : {"log1p", "significance", "snr"}
        ``"log1p"``: ``log1p`` of the counts per band (keeps the absolute
        brightness, which the flux head needs; right for sparse counts such as
        Fermi-LAT's). ``"significance"``: ``asinh((counts - m) / sqrt(m + 1))`` with
        ``m`` the cutout's median per band, the background level then being
        given as the scalars ``log1p(m)`` (for background-dominated maps such as
        CTAO's, where a source is a small excess on a large level).
        ``"snr"``: the cutouts are already signal-to-noise images (optical);
        ``asinh(snr / 2)``, no scalars.

    Returns
    -------
    planes : `~numpy.ndarray`
        ``(n, n_bands + 1, s, s)`` float32 (the last plane is ``valid``).
    scalars : `~numpy.ndarray`
        ``(n, 0)`` for ``"log1p"``, ``(n, n_bands)`` for ``"significance"``.
    """
    c = np.asarray(cutouts, np.float32)
    n = len(c)
    if mode == "snr":
        # signal-to-noise cutouts (optical): linear near the noise, logarithmic above
        planes = np.concatenate([np.arcsinh(c / 2.0), np.asarray(valid, np.float32)[:, None]],
                                axis=1)
        return planes.astype(np.float32), np.zeros((n, 0), np.float32)
    c = np.clip(c, 0, None)
    if mode == "log1p":
        x, scal = np.log1p(c), np.zeros((n, 0), np.float32)
    elif mode == "significance":
        m = np.median(c.reshape(n, c.shape[1], -1), axis=2)
        # asinh: linear around the background, logarithmic for bright sources
        x = np.arcsinh((c - m[:, :, None, None]) / np.sqrt(m + 1.0)[:, :, None, None])
        scal = np.log1p(m).astype(np.float32)
    else:
        raise ValueError(f"mode must be 'log1p', 'significance' or 'snr', not {mode!r}")
    planes = np.concatenate([x, np.asarray(valid, np.float32)[:, None]], axis=1)
    return planes.astype(np.float32), scal

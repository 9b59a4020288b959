"""`Characterizer`: refined positions, fluxes and classes for detector candidates.

A characteriser is a deep ensemble of `~astro_asid.characterize.network.CutoutNet`
members (seeds 000-002: mean-variance regression of the position and the flux,
classification of the cutout), stored as one ``.safetensors`` file and a JSON
card. Combining the members:

- regression heads: mean of the member means; variance = mean of the member
  (aleatoric) variances + variance of the member means (epistemic);
- classification heads: mean of the member logits, divided by a temperature.

The card's ``calibration`` then rescales the predicted standard deviations
(one factor per bin of predicted brightness, interpolated) and holds the
temperatures; both were fitted on a held-out simulated calibration set.
"""

from pathlib import Path

import numpy as np
import torch
from astropy import units as u
from astropy.table import QTable

from astro_asid.characterize.cutouts import cutout_input, extract_cutouts
from astro_asid.characterize.network import CutoutNet
from astro_asid.core import pixel_scale_deg, pixel_scale_mismatch
from astro_asid.nn.io import load_weights, save_weights, shipped_model_path
from astro_asid.utils.exceptions import WeightsError

__all__ = ["Characterizer", "SigmaCalibration", "shipped_characterizer",
           "CHARACTERIZER_NAMES"]

#: Shipped characteriser per instrument (a model name in astro_asid/models).
CHARACTERIZER_NAMES = {"fermi-lat": "characterize-fermi-lat", "ctao": "characterize-ctao",
                       "optical": "characterize-optical"}


class SigmaCalibration:
    """Scale factors for predicted standard deviations, as a function of a
    predictor (log10 brightness), linearly interpolated between bin centres
    and held constant outside them."""

    def __init__(self, centres, scales):
        self.centres = np.asarray(centres, float)
        self.scales = np.asarray(scales, float)
        if self.centres.shape != self.scales.shape or self.centres.ndim != 1:
            raise ValueError("centres and scales must be 1-D arrays of equal length")

    def __call__(self, predictor):
        if len(self.centres) == 0:
            return np.ones(np.shape(predictor))
        return np.interp(np.asarray(predictor, float), self.centres, self.scales)

    def as_dict(self):
        return {"centres": self.centres.tolist(), "scales": self.scales.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(d.get("centres", []), d.get("scales", []))

    @classmethod
    def identity(cls):
        return cls([], [])


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _logit(score):
    """Logit of detector scores (clipped away from 0 and 1), a stacking feature."""
    s = np.clip(np.asarray(score, float), 1e-4, 1 - 1e-4)
    return np.log(s / (1 - s))


class Characterizer:
    """Deep-ensemble characterisation of candidates (position, flux, classes).

    Parameters
    ----------
    members : list of `~astro_asid.characterize.network.CutoutNet`
        The ensemble members (same configuration).
    card : dict
        The model card (see `astro_asid.characterize.train`): cutout scales,
        flux definition, class names and calibration.

    Attributes
    ----------
    use_extension_likelihood : bool
        For a card with ``extension_likelihood`` (CTAO): when the image's
        background and PSF are known, `characterize` computes
        ``extension_prob`` by likelihood (True, the default) instead of taking
        the network's; see `extension_likelihood_prob`.
    """

    def __init__(self, members, card):
        if not members:
            raise ValueError("a Characterizer needs at least one member network")
        self.members = [m.eval() for m in members]
        self.card = dict(card)
        self.use_extension_likelihood = True

    # -- I/O -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path):
        """Load from ``path`` (``.safetensors`` or stem; the card sits next to it).

        Raises
        ------
        WeightsError
            Missing or corrupt files, or tensors that do not fit the card.
        """
        tensors, card = load_weights(path)
        if card.get("architecture") != "cutout-ensemble" or "config" not in card:
            raise WeightsError(f"model card of {path} does not describe a characteriser "
                               "(needs 'architecture': 'cutout-ensemble' and a 'config')")
        members = []
        try:
            for i in range(int(card["n_members"])):
                net = CutoutNet(**card["config"])
                prefix = f"m{i}."
                net.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items()
                                     if k.startswith(prefix)}, strict=True)
                members.append(net)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"weights {path} do not fit the characteriser of their card: "
                               f"{exc}") from None
        return cls(members, card)

    def save(self, path, half=True):
        """Write the weights (float16 by default) and the card; returns the card."""
        tensors = {}
        for i, m in enumerate(self.members):
            for k, v in m.state_dict().items():
                tensors[f"m{i}.{k}"] = v.half() if half and v.is_floating_point() else v
        card = dict(self.card, architecture="cutout-ensemble", n_members=len(self.members),
                    config=self.members[0].config)
        self.card = save_weights(tensors, path, card)
        return self.card

    @property
    def instrument(self):
        return self.card.get("instrument")

    @property
    def class_names(self):
        return list(self.card.get("class_names", []))

    @property
    def scales(self):
        """Cutout scales: list of ``{"size": int, "binning": int}``."""
        return self.card["cutouts"]

    # -- network -------------------------------------------------------------------------
    def make_input(self, data, x, y, mask=None):
        """Network input and scalars for candidates at ``(x, y)`` of one image."""
        planes, extra = [], []
        for sc in self.scales:
            cut, val, _ = extract_cutouts(data, x, y, sc["size"], mask=mask,
                                          binning=sc.get("binning", 1))
            p, e = cutout_input(cut, val, self.card.get("input", "log1p"))
            planes.append(p)
            extra.append(e)
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        scalars = np.column_stack([x - np.rint(x), y - np.rint(y)] + extra).astype(np.float32)
        return np.concatenate(planes, axis=1), scalars

    def raw_outputs(self, inputs, scalars, batch_size=1024):
        """Per-member head outputs, ``{head: (n_members, n, k)}`` (numpy)."""
        out = {}
        with torch.inference_mode():
            for m in self.members:
                res = {}
                for i in range(0, len(inputs), batch_size):
                    o = m(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch_size])),
                          torch.from_numpy(np.ascontiguousarray(scalars[i:i + batch_size])))
                    for k, v in o.items():
                        res.setdefault(k, []).append(v.float().numpy())
                for k, v in res.items():
                    out.setdefault(k, []).append(np.concatenate(v))
        return {k: np.stack(v) for k, v in out.items()}

    def aperture_features(self, inputs):
        """log1p of the counts (asinh of the signed sums for ``"snr"`` and
        ``"significance"`` inputs) within 1.5, 3 and 5 pixels of the cutout centre,
        per band (first cutout scale), from the network input; ``(n, 3 * n_bands)``."""
        nb = int(self.card.get("n_bands", 1))
        planes = np.asarray(inputs[:, :nb], np.float32)
        mode = self.card.get("input", "log1p")
        if mode == "snr":
            # signal-to-noise sums are signed: asinh instead of log1p
            values, squash = 2.0 * np.sinh(planes), np.arcsinh
        elif mode == "significance":
            # asinh((c - m) / sqrt(m + 1)): signed as well
            values, squash = np.sinh(planes), np.arcsinh
        else:
            values, squash = (np.expm1(planes) if mode == "log1p" else planes), np.log1p
        size = planes.shape[-1]
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
        r = np.hypot(xx, yy)
        return np.concatenate([squash(values[:, :, r <= rad].sum(-1))
                               for rad in _APERTURE_RADII], axis=1)

    def combine(self, raw, calibrated=True, score=None, aperture=None):
        """Ensemble means, standard deviations and probabilities from `raw_outputs`.

        Returns
        -------
        dict
            ``dx``, ``dy``, ``sigma_x``, ``sigma_y`` (pixels, relative to the
            candidate's nearest pixel), ``log10_flux``, ``sigma_log10_flux``,
            ``source_prob``, ``class_prob`` and, for extension models,
            ``extension``, ``extension_err`` (deg) and ``ext_prob``.

        Notes
        -----
        With ``score`` (the calibrated scores of the detector whose candidates
        trained the model), ``source_prob`` combines the cutout's source logit
        with the detector's score (the logistic regression in the card's
        ``calibration["source_stack"]``, fitted on the calibration set), and
        with ``aperture`` (`aperture_features`) too, ``class_prob`` is the
        multinomial logistic regression ``calibration["class_stack"]`` of the
        class logits, the score, the flux and the aperture counts (fitted with
        balanced class weights); without them, the temperature-scaled cutout
        classifiers alone.
        """
        cal = self.card.get("calibration", {}) if calibrated else {}
        temps = cal.get("temperature", {})
        res = {}

        def gauss(a, i_mean, i_logvar):
            mu = a[..., i_mean]
            var = np.exp(np.clip(a[..., i_logvar], -20, 20))
            return mu.mean(0), np.sqrt(var.mean(0) + mu.var(0))

        if "flux" in raw:
            fl = self.card["flux"]
            mu, sd = gauss(raw["flux"], 0, 1)
            res["log10_flux"] = fl["log10_mean"] + fl["log10_std"] * mu
            res["sigma_log10_flux"] = fl["log10_std"] * sd
            bright = res["log10_flux"]
        else:
            bright = None
        if "position" in raw:
            mx, sx = gauss(raw["position"], 0, 2)
            my, sy = gauss(raw["position"], 1, 3)
            if bright is not None and "position" in cal:
                f = SigmaCalibration.from_dict(cal["position"])(bright)
                sx, sy = sx * f, sy * f
            res.update(dx=mx, dy=my, sigma_x=sx, sigma_y=sy)
        if bright is not None and "flux" in cal:
            res["sigma_log10_flux"] = (res["sigma_log10_flux"]
                                       * SigmaCalibration.from_dict(cal["flux"])(bright))
        if "source" in raw:
            z = raw["source"][..., 0].mean(0)
            stack = cal.get("source_stack")
            if score is not None and stack:
                feats = np.column_stack([_logit(score), z])
                res["source_prob"] = _sigmoid(feats @ np.asarray(stack["coef"], float)
                                              + float(stack["intercept"]))
            else:
                res["source_prob"] = _sigmoid(z / temps.get("source", 1.0))
        if "cls" in raw:
            stack = cal.get("class_stack")
            if score is not None and aperture is not None and stack and "flux" in raw:
                feats = _class_stack_features(raw, score, res["log10_flux"], aperture)
                z = ((feats - np.asarray(stack["mean"])) / np.asarray(stack["std"])
                     @ np.asarray(stack["coef"], float).T + np.asarray(stack["intercept"]))
                res["class_prob"] = _softmax(z)
            else:
                res["class_prob"] = _softmax(raw["cls"].mean(0) / temps.get("cls", 1.0))
        if "extension" in raw:
            mu, sd = gauss(raw["extension"], 0, 1)
            if bright is not None and "extension" in cal:
                sd = sd * SigmaCalibration.from_dict(cal["extension"])(bright)
            res["extension"] = np.clip(mu, 0, None)
            res["extension_err"] = sd
        if "ext_cls" in raw:
            # offsets fitted with the temperature (calibration["ext_cls_bias"]) turn the
            # balanced training into the survey's mix of point and extended sources
            bias = np.asarray(cal.get("ext_cls_bias", 0.0), float)
            res["ext_prob"] = _softmax(raw["ext_cls"].mean(0) / temps.get("ext_cls", 1.0) + bias)
        return res

    def predict(self, data, x, y, mask=None, calibrated=True, score=None):
        """`combine` of the ensemble for candidates at ``(x, y)`` of ``data``
        (``(n_bands, ny, nx)`` counts); ``score``: see `combine`."""
        inputs, scalars = self.make_input(data, x, y, mask)
        if len(inputs) == 0:
            return self.combine({k: np.zeros((len(self.members), 0, v)) for k, v in
                                 self.members[0].config["heads"].items()}, calibrated)
        aperture = self.aperture_features(inputs) if score is not None else None
        return self.combine(self.raw_outputs(inputs, scalars), calibrated, score, aperture)

    # -- catalog -------------------------------------------------------------------------
    def check_image(self, image):
        """Reasons this characteriser cannot run on ``image`` (empty list: it can)."""
        problems = []
        nb = int(self.card.get("n_bands", image.n_bands))
        if image.n_bands != nb:
            problems.append(f"it needs {nb} energy bands and the image has {image.n_bands}")
        scale = self.card.get("pixel_scale_deg")
        have = pixel_scale_mismatch(image.wcs, scale)
        if have is not None:
            problems.append(f"its pixel scale is {scale:.4g} deg and the image's {have:.4g} deg")
        return problems

    def exposure_scale(self, image, x, y):
        """Exposure of ``image`` at the candidates relative to the training's nominal
        one (geometric mean over bands); 1 when the image carries no exposure."""
        nominal = self.card.get("flux", {}).get("nominal_exposure")
        if image.exposure is None or nominal is None:
            return np.ones(len(x))
        exp = image.exposure
        if isinstance(exp, u.Quantity):
            exp = exp.to_value(self.card["flux"].get("exposure_unit", "cm2 s"))
        exp = np.asarray(exp, float)
        nominal = np.asarray(nominal, float)
        if exp.ndim == 1:
            ratio = np.broadcast_to(exp / nominal, (len(x), len(nominal)))
        else:
            ny, nx = exp.shape[-2:]
            iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
            ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
            ratio = (exp[:, iy, ix] / nominal[:, None]).T
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.exp(np.mean(np.log(ratio), axis=1))
        return np.where(np.isfinite(s) & (s > 0), s, np.nan)

    def can_use_extension_likelihood(self, image):
        """Whether `characterize` takes ``extension_prob`` from the likelihood for ``image``."""
        psf = image.psf or {}
        return bool(self.use_extension_likelihood and self.card.get("extension_likelihood")
                     and image.background is not None and psf.get("sigma_pix") is not None)

    def extension_likelihood_prob(self, image, x, y, pred, rows=None):
        """Extension class probabilities by likelihood, for sources found together.

        Each candidate is tested for a Gaussian width (the card's population
        prior) against the image's background plus every other candidate,
        modelled with the network's position, counts (times ``source_prob``)
        and width (``pred``, from `predict`), with the image's PSF and a
        power-law spectrum (the card's ``counts_per_flux`` times the exposure
        relative to the nominal one). On simulated CTAO patches this is more
        accurate than the network's extension head (docs/benchmarks.rst); it
        costs about 0.07 s per candidate (one core).

        Parameters
        ----------
        image : `~astro_asid.SkyImage`
            With ``background`` and ``psf["sigma_pix"]``.
        x, y : `~numpy.ndarray`
            The detector's candidate positions (pixels).
        pred : dict
            `predict`'s output for them (``dx``, ``dy``, ``log10_flux``, ``extension``).
        rows : array-like of int, optional
            Test only these candidates (all still enter the model).

        Returns
        -------
        `~numpy.ndarray`
            ``(n, 3)`` probabilities of C0, C1, C2 (``n`` candidates or rows).

        Raises
        ------
        ValueError
            The image's background or PSF does not fit its data.
        """
        from astro_asid.characterize.extension_likelihood import (ExtensionPrior,
                                                                 extension_class_probs)
        back = np.asarray(image.background, float)
        if back.shape != image.data.shape:
            raise ValueError(f"the image's background has shape {back.shape}, its data "
                             f"{image.data.shape}")
        if len(image.psf["sigma_pix"]) != image.n_bands:
            raise ValueError(f"the image's psf['sigma_pix'] has {len(image.psf['sigma_pix'])} "
                             f"values for {image.n_bands} bands")
        lik = self.card["extension_likelihood"]
        prior = ExtensionPrior.from_dict(lik)
        # the image's own pixels (check_image allows a 25 % mismatch with the card's)
        pix = (float(self.card["pixel_scale_deg"]) if image.wcs is None
               else pixel_scale_deg(image.wcs))
        psf = np.asarray(image.psf["sigma_pix"], float) * pix
        per_flux = np.asarray(lik["counts_per_flux"], float)
        scale = np.nan_to_num(self.exposure_scale(image, x, y), nan=1.0)
        xr = np.rint(x) + pred["dx"]
        yr = np.rint(y) + pred["dy"]
        band_counts = 10.0 ** pred["log10_flux"][:, None] * per_flux[None]
        if "source_prob" in pred:
            # a candidate's expected light: a FAKE (a background fluctuation) adds none
            band_counts = band_counts * pred["source_prob"][:, None]
        return extension_class_probs(
            image.filled(0.0), back, xr, yr, band_counts, pred["extension"],
            scale[:, None] * per_flux[None], psf, pix, prior,
            self.card.get("ext_edges_deg", (0.1, 0.3)), rows=rows,
            half_width=int(lik.get("half_width_px", 28)),
            valid=~image.mask & np.isfinite(back))

    def characterize(self, image, candidates, detector=None):
        """Fill position errors, fluxes and classes of ``candidates`` found in ``image``.

        Parameters
        ----------
        image : `~astro_asid.SkyImage`
        candidates : `~astropy.table.QTable`
            Validated detector output (``x_centroid``, ``y_centroid``, ``score``...).
        detector : str, optional
            Name of the detector that found them: when it is the one the model
            was trained on (``card["detector"]``), ``source_prob`` also uses its
            ``score`` (see `combine`).

        Returns
        -------
        `~astropy.table.QTable`
            A copy with refined ``x_centroid``/``y_centroid`` (the detector's
            kept as ``x_detector``/``y_detector``), ``x_err``, ``y_err``
            (pixels), ``flux``, ``flux_err``, ``source_prob``, ``class_prob``
            and, for extension models, ``extension``, ``extension_err`` (deg)
            and ``extension_prob``; ``meta["characterizer"]`` names the model.
        """
        cands = QTable(candidates, copy=True)
        x = np.asarray(cands["x_centroid"], float)
        y = np.asarray(cands["y_centroid"], float)
        stacked = (detector is not None and detector == self.card.get("detector")
                   and "source_stack" in self.card.get("calibration", {}))
        score = np.asarray(cands["score"], float) if stacked else None
        snr_input = self.card.get("input") == "snr"
        if snr_input:
            # optical: the network sees (data - background) / noise, and its flux is in
            # units of the local noise
            from astro_asid.instruments.optical import snr_image
            snr, noise = snr_image(image, return_noise=True)
            r = self.predict(snr[np.newaxis], x, y, mask=image.mask2d[np.newaxis], score=score)
        else:
            r = self.predict(image.filled(0.0), x, y, mask=image.mask, score=score)
        half = min(sc["size"] * sc.get("binning", 1) for sc in self.scales) / 2.0
        if "dx" in r:
            cands["x_detector"] = x
            cands["y_detector"] = y
            cands["x_centroid"] = np.rint(x) + np.clip(r["dx"], -half, half)
            cands["y_centroid"] = np.rint(y) + np.clip(r["dy"], -half, half)
            cands["x_err"] = r["sigma_x"]
            cands["y_err"] = r["sigma_y"]
        if "log10_flux" in r:
            fl = self.card["flux"]
            if snr_input:
                ny, nx = image.shape
                s = 1.0 / noise[np.clip(np.rint(y).astype(int), 0, ny - 1),
                                np.clip(np.rint(x).astype(int), 0, nx - 1)]
                unit = u.Unit(image.unit) if image.unit is not None else u.dimensionless_unscaled
            else:
                s = self.exposure_scale(image, x, y)
                unit = u.Unit(fl.get("unit", ""))
            flux = 10.0 ** r["log10_flux"] / s
            cands["flux"] = flux * unit
            # the network's error is Gaussian in log10 flux; the catalog's symmetric
            # error is its first-order linear equivalent
            cands["flux_err"] = flux * np.log(10.0) * r["sigma_log10_flux"] * unit
            zp = image.meta.get("zeropoint") if snr_input else None
            if zp is not None:
                cands["mag"] = float(zp) - 2.5 * r["log10_flux"] + 2.5 * np.log10(s)
                cands["mag_err"] = 2.5 * r["sigma_log10_flux"]
        if "source_prob" in r:
            cands["source_prob"] = r["source_prob"]
        if "class_prob" in r:
            cands["class_prob"] = r["class_prob"]
        elif "source_prob" in r and self.class_names == ["source", "FAKE"]:
            cands["class_prob"] = np.column_stack([r["source_prob"], 1.0 - r["source_prob"]])
        if "extension" in r:
            cands["extension"] = r["extension"] * u.deg
            cands["extension_err"] = r["extension_err"] * u.deg
        if "ext_prob" in r:
            likelihood = self.can_use_extension_likelihood(image)
            cands["extension_prob"] = (self.extension_likelihood_prob(image, x, y, r)
                                       if likelihood else r["ext_prob"])
        cands.meta["characterizer"] = {
            "name": self.card.get("name"), "sha256": self.card.get("sha256"),
            "trained_on": self.card.get("detector"),
            "source_prob": "cutout + detector score" if stacked else "cutout only"}
        if "ext_prob" in r:
            cands.meta["characterizer"]["extension_prob"] = (
                "likelihood (known background and PSF)" if likelihood else "network")
        if "flux" in self.card:
            cands.meta["flux_band"] = self.card["flux"].get("band")
            if self.card["flux"].get("energy_range"):
                cands.meta["flux_energy_range"] = list(self.card["flux"]["energy_range"])
            if not snr_input and (image.exposure is None
                                  or self.card["flux"].get("nominal_exposure") is None):
                cands.meta["flux_exposure"] = self.card["flux"].get(
                    "nominal_exposure_note", "nominal exposure of the training simulation")
        return cands


_APERTURE_RADII = (1.5, 3.0, 5.0)


def _class_stack_features(raw, score, log10_flux, aperture):
    """Features of the stacked class head: the ensemble's class logits, the detector's
    score (logit), the predicted log10 flux and the aperture counts."""
    return np.column_stack([raw["cls"].mean(0), _logit(score), log10_flux, aperture])


def shipped_characterizer(instrument):
    """The characteriser shipped for ``instrument``, or None when there is none."""
    name = CHARACTERIZER_NAMES.get(instrument)
    if name is None:
        return None
    path = shipped_model_path(name)
    if not Path(str(path) + ".json").exists():
        return None
    return _load_cached(str(path))


_CACHE = {}


def _load_cached(path):
    from astro_asid.nn.io import weights_path
    try:
        files = (Path(path + ".json"), weights_path(path))
        key = (path,) + tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    except OSError:
        key = None
    if key is None or key not in _CACHE:
        model = Characterizer.load(path)  # checks the sha256
        if key is None:
            return model
        _CACHE[key] = model
    return _CACHE[key]

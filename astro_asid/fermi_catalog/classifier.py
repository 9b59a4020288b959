"""`CatalogClassifier`: classify 4FGL sources with uncertainties."""

from pathlib import Path

import numpy as np
import torch
from astropy.table import QTable

from astro_asid.fermi_catalog.features import (FeatureConfig, _get_task, extract_features,
                                               task_labels)
from astro_asid.fermi_catalog.models import (build_network, check_network_options,
                                             predict_proba_samples, smote, train_network)
from astro_asid.nn.io import load_weights, save_weights

__all__ = ["CatalogClassifier", "MODELS_DIR", "PRETRAINED"]

#: Folder of the shipped models.
MODELS_DIR = Path(__file__).resolve().parent / "models"
#: Names of the shipped models.
PRETRAINED = ("agn-psr", "msp-young", "bll-fsrq")

_FORMAT = "astro_asid.fermi_catalog.CatalogClassifier/1"
_BRANCHES = ("spectrum", "history", "extras")
# Settings that seed 004 found good, per architecture (the RNN learns slower).
_DEFAULTS = {"dnn": {"epochs": 60, "lr": 3e-3, "batch_size": 64},
             "gru": {"epochs": 40, "lr": 5e-3, "batch_size": 64},
             "lstm": {"epochs": 40, "lr": 5e-3, "batch_size": 64}}
# Mixed ensembles: the dense network's settings, the recurrent members their own rate.
_DEFAULTS.update({f"dnn+{rnn}": _DEFAULTS["dnn"] for rnn in ("gru", "lstm")})


class CatalogClassifier:
    """Neural classifier of 4FGL catalog sources with predictive uncertainty.

    The inputs are each source's band fluxes, yearly light curve and,
    optionally, extra catalog values (see `~astro_asid.fermi_catalog.features`);
    the output per source is a probability per class with a spread, from a deep
    ensemble or Monte Carlo dropout.

    Parameters
    ----------
    arch : {"dnn", "gru", "lstm", "dnn+gru", "dnn+lstm"}
        Two-branch dense network, recurrent network, or a mixed deep ensemble
        of both: ``n_members`` dense members and ``rnn_members`` recurrent
        ones, the two kinds weighted equally (their mean probabilities are
        averaged; the spread is that of the weighted mixture of members).
    uncertainty : {"ensemble", "mc-dropout"}
        Deep ensemble of ``n_members`` networks, or one network sampled
        ``mc_samples`` times with dropout on (not for mixed ensembles).
    n_members : int
        Ensemble size (``uncertainty="ensemble"``); for a mixed ``arch`` the
        number of dense members.
    rnn_members : int
        Recurrent members of a mixed ``arch`` (ignored otherwise).
    rnn_lr : float, optional
        Peak learning rate of those recurrent members (default 5e-3); ``lr``,
        ``net_kwargs`` and the other settings are the dense network's, and
        ``epochs``, ``batch_size``, ``dropout`` and ``weight_decay`` are shared.
    mc_samples : int
        Stochastic passes (``uncertainty="mc-dropout"``).
    spectrum, history : bool
        Use the energy-spectrum and light-curve branches.
    extras : sequence of str
        Extra features (third branch), see `~astro_asid.fermi_catalog.features.EXTRAS`.
    imbalance : {"weights", "smote", "none"}
        Class imbalance: balanced class weights in the loss, SMOTE oversampling
        of the minority class, or nothing. With weights or SMOTE the output
        logits are shifted back by the log of the effective class weight, so the
        probabilities stay calibrated to the training class frequencies.
    epochs, lr, batch_size : optional
        Training settings (defaults depend on ``arch``).
    dropout : float
        Dropout rate.
    weight_decay : float
        L2 penalty (Adam ``weight_decay``).
    calibration : {"none", "temperature"}
        ``"temperature"``: before the final training, train once on a
        stratified 75 % of the training rows and fit a single temperature that
        minimises the log loss of the other 25 % (Guo et al. 2017); the final
        networks (trained on all rows) divide their logits by it. Costs about
        twice the training time.
    net_kwargs : dict, optional
        Extra architecture options (``branch``, ``head``, ``hidden``, ``n_layers``).
    seed : int
        Seeds initialisation, batch order, SMOTE and dropout masks.
    """

    def __init__(self, arch="dnn", uncertainty="ensemble", n_members=5, mc_samples=30,
                 spectrum=True, history=True, extras=(), imbalance="weights", epochs=None,
                 lr=None, batch_size=None, dropout=0.1, weight_decay=1e-4, calibration="none",
                 net_kwargs=None, rnn_members=3, rnn_lr=None, seed=0):
        if arch not in _DEFAULTS:
            raise ValueError(f"arch must be one of {sorted(_DEFAULTS)}, not {arch!r}")
        if uncertainty not in ("ensemble", "mc-dropout"):
            raise ValueError(f"uncertainty must be 'ensemble' or 'mc-dropout', not {uncertainty!r}")
        mixed = "+" in arch
        if mixed and uncertainty != "ensemble":
            raise ValueError(f"a mixed arch ({arch!r}) is a deep ensemble: use "
                             "uncertainty='ensemble'")
        if mixed and int(rnn_members) < 1:
            raise ValueError(f"a mixed arch ({arch!r}) needs rnn_members >= 1")
        if imbalance not in ("weights", "smote", "none"):
            raise ValueError(f"imbalance must be 'weights', 'smote' or 'none', not {imbalance!r}")
        if uncertainty == "ensemble" and int(n_members) < 2:
            raise ValueError("a deep ensemble needs n_members >= 2 to give a spread")
        if uncertainty == "mc-dropout" and (int(mc_samples) < 2 or dropout <= 0):
            raise ValueError("MC dropout needs mc_samples >= 2 and dropout > 0")
        if calibration not in ("none", "temperature"):
            raise ValueError(f"calibration must be 'none' or 'temperature', not {calibration!r}")
        self.arch = arch
        self.calibration = calibration
        self.uncertainty = uncertainty
        self.n_members = int(n_members) if uncertainty == "ensemble" else 1
        self.mc_samples = int(mc_samples) if uncertainty == "mc-dropout" else 0
        self.features = FeatureConfig(spectrum=spectrum, history=history, extras=tuple(extras))
        self.imbalance = imbalance
        d = _DEFAULTS[arch]
        self.epochs = int(epochs or d["epochs"])
        self.lr = float(lr or d["lr"])
        self.batch_size = int(batch_size or d["batch_size"])
        self.dropout = float(dropout)
        self.weight_decay = float(weight_decay)
        self.net_kwargs = dict(net_kwargs or {})
        check_network_options(arch.split("+")[0], self.net_kwargs)
        self.rnn_members = int(rnn_members) if mixed else 0
        self.rnn_lr = float(rnn_lr or _DEFAULTS[arch.split("+")[1]]["lr"]) if mixed else None
        self.seed = int(seed)
        self.task = None
        self.class_names = None
        self.networks = []
        self.scaler = {}
        self.card = {}

    # ------------------------------------------------------------------ helpers
    @property
    def is_fitted(self):
        return bool(self.networks)

    def _raw_arrays(self, table):
        feats = extract_features(table, self.features)
        n = len(table)
        return [feats.get(k, np.zeros((n, 0), np.float32)) for k in _BRANCHES]

    def _fit_scaler(self, arrays):
        self.scaler = {}
        for name, a in zip(_BRANCHES, arrays):
            if a.size == 0:
                continue
            mean = np.nanmean(a, axis=0)
            std = np.nanstd(a, axis=0)
            # Constant inputs (e.g. an upper-limit flag never set) get unit scale.
            std = np.where(std > 1e-6, std, 1.0)
            self.scaler[name] = (np.nan_to_num(mean).astype(np.float32), std.astype(np.float32))

    def _scale(self, arrays):
        out = []
        for name, a in zip(_BRANCHES, arrays):
            if name in self.scaler:
                mean, std = self.scaler[name]
                # NaN extras (a missing catalog value) become the training mean (0).
                a = np.nan_to_num((a - mean) / std, nan=0.0).astype(np.float32)
            out.append(a)
        return out

    @property
    def _mixed(self):
        """A dense + recurrent ensemble (``arch="dnn+gru"`` or ``"dnn+lstm"``)."""
        return "+" in self.arch

    @property
    def _n_networks(self):
        # The DNN trains all ensemble members in one batched module; the
        # recurrent networks are trained one member at a time.
        if self._mixed:
            return 1 + self.rnn_members
        return 1 if self.arch == "dnn" else self.n_members

    def _new_network(self, index):
        cfg = self.features
        kinds = self.arch.split("+")  # a mixed ensemble: the DNN first, then the RNNs
        arch = kinds[min(index, len(kinds) - 1)]
        # A mixed ensemble's recurrent members keep their default layer sizes.
        kwargs = {} if self._mixed and index > 0 else self.net_kwargs
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the global state
            torch.manual_seed(self.seed * 1000 + index)
            return build_network(arch, cfg.n_bands if cfg.spectrum else 0,
                                 cfg.n_years if cfg.history else 0, 4,
                                 len(np.atleast_1d(self.scaler["extras"][0]))
                                 if "extras" in self.scaler else 0,
                                 len(self.class_names),
                                 n_members=self.n_members if arch == "dnn" else 1,
                                 dropout=self.dropout, **kwargs)

    def _sample_weights(self):
        """Weight of each member's probabilities in the ensemble mean (sums to 1).

        Members count equally, except in a mixed ensemble, where the dense and
        the recurrent members each carry half of the weight.
        """
        if not self._mixed:
            return None
        return np.concatenate([np.full(self.n_members, 0.5 / self.n_members),
                               np.full(self.rnn_members, 0.5 / self.rnn_members)])

    def _check_fitted(self):
        if not self.is_fitted:
            raise RuntimeError("this CatalogClassifier is not trained: call fit() or load()")

    # ------------------------------------------------------------------ training
    def fit(self, table, task, labels=None):
        """Train on the labelled sources of a task.

        Parameters
        ----------
        table : `~astropy.table.Table`
            4FGL catalog rows; those whose ``CLASS1`` belongs to one of the task's
            classes are used (or all rows, with ``labels``).
        task : str
            ``"agn-psr"``, ``"msp-young"`` or ``"bll-fsrq"``.
        labels : array of int, optional
            Class index per row (-1: skip), instead of the ``CLASS1`` labels.

        Returns
        -------
        self
        """
        task_obj = _get_task(task)
        if labels is None:
            labels = task_labels(table, task_obj)
        labels = np.asarray(labels, int)
        if len(labels) != len(table):
            raise ValueError(f"labels has {len(labels)} entries for {len(table)} rows")
        keep = labels >= 0
        y = labels[keep]
        counts = np.bincount(y, minlength=len(task_obj.class_names))
        if (counts < 2).any():
            raise ValueError(f"need at least 2 training sources per class, got {counts.tolist()}")
        train = table[keep]
        self.task = task_obj.name
        self.class_names = list(task_obj.class_names)
        self.features = self.features.resolve(train)
        raw = self._raw_arrays(train)
        self._fit_scaler(raw)
        arrays = self._scale(raw)
        rng = np.random.default_rng(self.seed)

        temperature = 1.0
        if self.calibration == "temperature":
            temperature = self._fit_temperature(arrays, y, rng)
        self.networks = self._train_all(arrays, y, rng)
        for net in self.networks:
            net.temperature.fill_(temperature)
        self.card = {"training": {"n_train": int(len(labels[keep])),
                                  "class_counts": counts.tolist(),
                                  "release": table.meta.get("release")}}
        return self

    def _train_all(self, arrays, y, rng):
        """Train the networks on (scaled) arrays, handling the class imbalance."""
        counts = np.bincount(y, minlength=len(self.class_names))
        # `factor` is how much more each class counts in the training loss than
        # in the data; the logits are shifted by -log(factor) to undo it.
        sample_weight = None
        factor = np.ones(len(counts))
        if self.imbalance == "weights":
            factor = len(y) / (len(counts) * counts)
            sample_weight = factor[y]
        elif self.imbalance == "smote":
            shapes = [a.shape[1:] for a in arrays]
            flat = np.concatenate([a.reshape(len(y), -1) for a in arrays], axis=1)
            flat, y = smote(flat, y, rng)
            arrays, start = [], 0
            for shp in shapes:
                size = int(np.prod(shp))
                arrays.append(flat[:, start:start + size].reshape((len(y),) + shp))
                start += size
            factor = np.bincount(y, minlength=len(counts)) / counts
        bias = torch.as_tensor(-(np.log(factor) - np.log(factor).mean()), dtype=torch.float32)
        networks = []
        for m in range(self._n_networks):
            net = self._new_network(m)
            lr = self.rnn_lr if self._mixed and m > 0 else self.lr
            train_network(net, arrays, y, epochs=self.epochs, batch_size=self.batch_size,
                          lr=lr, weight_decay=self.weight_decay,
                          sample_weight=sample_weight, seed=self.seed * 1000 + m)
            net.logit_bias.copy_(bias)
            networks.append(net)
        return networks

    def _fit_temperature(self, arrays, y, rng):
        """Temperature minimising the log loss on a held-out quarter of the rows."""
        from scipy.optimize import minimize_scalar
        from sklearn.model_selection import StratifiedShuffleSplit

        split = StratifiedShuffleSplit(1, test_size=0.25, random_state=int(rng.integers(2**31)))
        tr, va = next(split.split(y, y))
        nets = self._train_all([a[tr] for a in arrays], y[tr], rng)
        with torch.no_grad():
            logits = torch.cat([net(*(torch.as_tensor(a[va]) for a in arrays))
                                for net in nets]).double()  # (M, n_val, K)
        target = torch.as_tensor(y[va])
        w = self._sample_weights()
        w = (torch.full((len(logits), 1, 1), 1.0 / len(logits), dtype=torch.float64)
             if w is None else torch.as_tensor(w)[:, None, None])

        def nll(log_t):
            prob = (torch.softmax(logits / np.exp(log_t), dim=-1) * w).sum(0)
            return float(-torch.log(prob[torch.arange(len(va)), target] + 1e-12).mean())

        return float(np.exp(minimize_scalar(nll, bounds=(-2, 2), method="bounded").x))

    # ---------------------------------------------------------------- prediction
    def predict_proba(self, table):
        """Mean class probabilities and their spread.

        Returns
        -------
        prob, prob_err : ndarray (N, K)
            Mean and standard deviation over the ensemble members (or MC
            dropout samples).
        """
        self._check_fitted()
        if len(table) == 0:
            k = len(self.class_names)
            return np.zeros((0, k)), np.zeros((0, k))
        arrays = self._scale(self._raw_arrays(table))
        samples = predict_proba_samples(self.networks, arrays, mc_samples=self.mc_samples,
                                        seed=self.seed)
        w = self._sample_weights()
        if w is None:
            return samples.mean(axis=0), samples.std(axis=0)
        mean = np.tensordot(w, samples, axes=1)
        return mean, np.sqrt(np.tensordot(w, (samples - mean) ** 2, axes=1))

    def predict(self, table):
        """Classify catalog rows.

        Parameters
        ----------
        table : `~astropy.table.Table`
            4FGL rows (any release; see `~astro_asid.fermi_catalog.features` for
            how band and year counts are matched to the model).

        Returns
        -------
        result : `~astropy.table.QTable`
            In input order: ``Source_Name``, ``class_label`` (most probable
            class), ``class_prob`` (N, K) and ``class_prob_err`` (N, K, the
            spread over members/samples); ``meta["class_names"]``,
            ``meta["task"]``, ``meta["model"]``.
        """
        prob, err = self.predict_proba(table)
        names = (np.asarray(table["Source_Name"]).astype(str) if "Source_Name" in table.colnames
                 else np.arange(len(table)).astype(str))
        result = QTable()
        result["Source_Name"] = names
        result["class_label"] = np.asarray(self.class_names, dtype=str)[prob.argmax(axis=1)] \
            if len(prob) else np.zeros(0, dtype=str)
        result["class_prob"] = prob.astype(np.float32)
        result["class_prob_err"] = err.astype(np.float32)
        result.meta["class_names"] = list(self.class_names)
        result.meta["task"] = self.task
        result.meta["model"] = self.card.get("name", f"{self.arch}-{self.uncertainty}")
        if "sha256" in self.card:
            result.meta["model_sha256"] = self.card["sha256"]
        if hasattr(table, "meta") and "release" in table.meta:
            result.meta["release"] = table.meta["release"]
        return result

    # --------------------------------------------------------------- save/load
    def config(self):
        """Constructor arguments and feature shape, as stored in the model card."""
        return {"arch": self.arch, "uncertainty": self.uncertainty, "n_members": self.n_members,
                "mc_samples": self.mc_samples, "features": self.features.to_dict(),
                "imbalance": self.imbalance, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "dropout": self.dropout,
                "weight_decay": self.weight_decay, "calibration": self.calibration,
                "net_kwargs": self.net_kwargs, "rnn_members": self.rnn_members,
                "rnn_lr": self.rnn_lr, "seed": self.seed}

    def save(self, path, **card):
        """Write ``path.safetensors`` and the model card ``path.json``.

        Parameters
        ----------
        path : str or path
            Destination without suffix (or with ``.safetensors``).
        **card
            Extra card entries (``name``, ``training``, ``metrics``, ...).

        Returns
        -------
        card : dict
            The card as written (with ``sha256``).
        """
        self._check_fitted()
        tensors = {}
        for m, net in enumerate(self.networks):
            for k, v in net.state_dict().items():
                tensors[f"net{m}.{k}"] = v
        for name, (mean, std) in self.scaler.items():
            tensors[f"scaler.{name}.mean"] = torch.as_tensor(mean)
            tensors[f"scaler.{name}.std"] = torch.as_tensor(std)
        full = {"format": _FORMAT, "task": self.task, "class_names": self.class_names,
                "config": self.config()}
        full.update({k: v for k, v in self.card.items() if k not in ("sha256", "weights_file")})
        full.update(card)
        self.card = save_weights(tensors, path, full)
        return self.card

    @classmethod
    def load(cls, path):
        """Rebuild a classifier from ``path.safetensors`` + ``path.json``.

        The weights' sha256 is checked against the card first
        (`~astro_asid.utils.exceptions.WeightsError` on mismatch).
        """
        from astro_asid.utils.exceptions import WeightsError

        tensors, card = load_weights(path)
        if card.get("format") != _FORMAT:
            raise WeightsError(f"{path} is not a CatalogClassifier model (format "
                               f"{card.get('format')!r}, expected {_FORMAT!r})")
        cfg = dict(card["config"])
        feats = cfg.pop("features")
        self = cls(arch=cfg["arch"], uncertainty=cfg["uncertainty"],
                   n_members=max(cfg["n_members"], 2), mc_samples=max(cfg["mc_samples"], 2),
                   spectrum=feats["spectrum"], history=feats["history"], extras=feats["extras"],
                   imbalance=cfg["imbalance"], epochs=cfg["epochs"], lr=cfg["lr"],
                   batch_size=cfg["batch_size"], dropout=cfg["dropout"],
                   weight_decay=cfg.get("weight_decay", 1e-4),
                   calibration=cfg.get("calibration", "none"),
                   net_kwargs=cfg["net_kwargs"], rnn_members=cfg.get("rnn_members") or 3,
                   rnn_lr=cfg.get("rnn_lr"), seed=cfg["seed"])
        self.n_members = cfg["n_members"]
        self.mc_samples = cfg["mc_samples"]
        self.features = FeatureConfig(**feats)
        self.task = card["task"]
        self.class_names = list(card["class_names"])
        self.scaler = {}
        for name in _BRANCHES:
            if f"scaler.{name}.mean" in tensors:
                self.scaler[name] = (tensors[f"scaler.{name}.mean"].numpy(),
                                     tensors[f"scaler.{name}.std"].numpy())
        self.networks = []
        for m in range(self._n_networks):
            prefix = f"net{m}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                raise WeightsError(f"{path}: weights of network {m} are missing")
            net = self._new_network(m)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsError(f"{path}: weights do not fit the architecture in the card: "
                                   f"{exc}") from None
            net.eval()
            self.networks.append(net)
        self.card = card
        return self

    @classmethod
    def pretrained(cls, name):
        """A shipped model: ``"agn-psr"``, ``"msp-young"`` or ``"bll-fsrq"``.

        ``"agn-psr"`` was trained on the DR2 labelled sources (seed 004's
        setup), ``"msp-young"`` on DR4 pulsars, ``"bll-fsrq"`` on DR2 BL Lacs
        and FSRQs. The model card (``.card``) holds the training command, the
        data recipe and held-out metrics.
        """
        if name not in PRETRAINED:
            raise ValueError(f"no shipped model {name!r}: use one of {list(PRETRAINED)}")
        path = MODELS_DIR / name
        if not path.with_suffix(".safetensors").exists():
            from astro_asid.utils.exceptions import WeightsError
            raise WeightsError(f"shipped model {name!r} is missing ({path}.safetensors); "
                               "rebuild it with `python -m astro_asid.fermi_catalog.train "
                               f"--task {name}`")
        return cls.load(path)

    def __repr__(self):
        state = f"task={self.task!r}" if self.is_fitted else "untrained"
        return (f"<CatalogClassifier arch={self.arch!r} uncertainty={self.uncertainty!r} "
                f"members={self.n_members} {state}>")

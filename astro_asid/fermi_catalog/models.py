"""Neural networks for 4FGL source classification, and their training loop.

Two architectures from seed 004, each with up to three branches (energy
spectrum, light curve, extra catalog features) merged into a small dense
classification head:

* `TwoBranchDNN`: each branch is a dense network on the flattened sequence.
* `TwoBranchRNN`: each sequence branch is a recurrent network (GRU or LSTM)
  read along energy / time; its last hidden state is the branch output.

Predictive uncertainty comes from a deep ensemble (independently initialised
members, trained on bootstrap-free shuffles of the same data) or from Monte
Carlo dropout (dropout kept on at prediction time); either way a prediction is
the mean of the member (or sample) probabilities and its spread their standard
deviation.
"""

import inspect

import numpy as np
import torch
from torch import nn

__all__ = ["EnsembleLinear", "TwoBranchDNN", "TwoBranchRNN", "build_network",
           "check_network_options", "smote", "train_network", "predict_proba_samples"]


class EnsembleLinear(nn.Module):
    """``n_members`` independent dense layers applied in one batched product.

    Input (M, N, n_in) or (N, n_in) (shared by all members); output (M, N, n_out).
    Initialised like `torch.nn.Linear` (uniform in +-1/sqrt(n_in)).
    """

    def __init__(self, n_members, n_in, n_out):
        super().__init__()
        bound = 1.0 / np.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_members, 1, n_out).uniform_(-bound, bound))

    @property
    def out_features(self):
        return self.weight.shape[-1]

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


def _mlp(n_in, sizes, dropout, n_members=1):
    layers = []
    for n_out in sizes:
        layers += [EnsembleLinear(n_members, n_in, n_out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = n_out
    return nn.Sequential(*layers), n_in


class _Base(nn.Module):
    """Shared head and branch bookkeeping; outputs logits of shape (M, N, K)."""

    n_members = 1

    def _init_head(self, n_merged, head, n_classes, dropout, n_extras, extra_size):
        m = self.n_members
        if n_extras:
            self.extra_branch, n_e = _mlp(n_extras, [extra_size], 0.0, m)
            n_merged += n_e
        else:
            self.extra_branch = None
        self.head, n_h = _mlp(n_merged, head, dropout, m)
        self.out = EnsembleLinear(m, n_h, n_classes)
        # Logit offsets that undo class weights / oversampling (see
        # CatalogClassifier.fit): a buffer so that it is saved with the weights.
        self.register_buffer("logit_bias", torch.zeros(n_classes))
        # Temperature from CatalogClassifier's calibration step (1: none).
        self.register_buffer("temperature", torch.ones(()))

    def _finish(self, parts, extras):
        if self.extra_branch is not None:
            parts.append(self.extra_branch(extras))
        logits = self.out(self.head(torch.cat(parts, dim=-1))) + self.logit_bias
        return logits / self.temperature


class TwoBranchDNN(_Base):
    """Dense network with a spectrum, a light-curve and an optional extras branch.

    ``n_members`` independent copies are trained at once (a deep ensemble in
    one module: every layer is an `EnsembleLinear`), which is several times
    faster on a CPU than training them one after the other.

    Parameters
    ----------
    n_bands, n_years : int
        Sequence lengths (0 disables the branch).
    n_channels : int
        Values per band / per year.
    n_extras : int
        Number of extra features (0: no third branch).
    n_classes : int
    n_members : int
        Ensemble members.
    branch : sequence of int
        Hidden layer sizes of each sequence branch.
    head : sequence of int
        Hidden layer sizes of the classification head.
    dropout : float
        Dropout rate in the branches and the head (also used by MC dropout).
    extra_size : int
        Width of the extras branch.
    """

    def __init__(self, n_bands, n_years, n_channels=4, n_extras=0, n_classes=2, n_members=1,
                 branch=(32, 16), head=(16,), dropout=0.1, extra_size=8):
        super().__init__()
        self.n_members = int(n_members)
        n_merged = 0
        self.spec_branch = self.hist_branch = None
        if n_bands:
            self.spec_branch, n = _mlp(n_bands * n_channels, branch, dropout, self.n_members)
            n_merged += n
        if n_years:
            self.hist_branch, n = _mlp(n_years * n_channels, branch, dropout, self.n_members)
            n_merged += n
        self._init_head(n_merged, head, n_classes, dropout, n_extras, extra_size)

    def forward(self, spectrum, history, extras):
        parts = []
        if self.spec_branch is not None:
            parts.append(self.spec_branch(spectrum.flatten(1)))
        if self.hist_branch is not None:
            parts.append(self.hist_branch(history.flatten(1)))
        return self._finish(parts, extras)


class TwoBranchRNN(_Base):
    """Recurrent network (GRU or LSTM) along the energy bands and the years.

    Parameters
    ----------
    n_bands, n_years : int
        Sequence lengths (0 disables the branch); only used to switch branches,
        the recurrent layers accept any length.
    n_channels, n_extras, n_classes, head, dropout
        As in `TwoBranchDNN`.
    hidden : int
        Units per recurrent layer.
    n_layers : int
        Stacked recurrent layers per branch.
    cell : {"gru", "lstm"}
    """

    def __init__(self, n_bands, n_years, n_channels=4, n_extras=0, n_classes=2, hidden=16,
                 n_layers=2, cell="gru", head=(16,), dropout=0.1, extra_size=8):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', not {cell!r}")
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        n_merged = 0
        self.spec_branch = self.hist_branch = None
        if n_bands:
            self.spec_branch = rnn(n_channels, hidden, n_layers, batch_first=True)
            n_merged += hidden
        if n_years:
            self.hist_branch = rnn(n_channels, hidden, n_layers, batch_first=True)
            n_merged += hidden
        self._init_head(n_merged, head, n_classes, dropout, n_extras, extra_size)

    @staticmethod
    def _last(rnn, x):
        out, _ = rnn(x)
        return out[:, -1].unsqueeze(0)  # (1, N, hidden): a one-member "ensemble"

    def forward(self, spectrum, history, extras):
        parts = []
        if self.spec_branch is not None:
            parts.append(self._last(self.spec_branch, spectrum))
        if self.hist_branch is not None:
            parts.append(self._last(self.hist_branch, history))
        return self._finish(parts, extras)


def check_network_options(arch, options):
    """ValueError naming the ``options`` (``CatalogClassifier(net_kwargs=...)``) that the
    ``arch`` network of `build_network` does not take."""
    cls = TwoBranchDNN if arch == "dnn" else TwoBranchRNN
    # the sizes and settings the classifier passes itself are not options
    fixed = {"self", "n_bands", "n_years", "n_channels", "n_extras", "n_classes", "n_members",
             "dropout", "cell"}
    allowed = sorted(set(inspect.signature(cls.__init__).parameters) - fixed)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"net_kwargs {bad} are not options of the {arch!r} network; "
                         f"it takes {allowed}")


def build_network(arch, n_bands, n_years, n_channels, n_extras, n_classes, n_members=1, **kwargs):
    """A network by name: ``"dnn"`` (``n_members`` at once), ``"gru"`` or ``"lstm"`` (one member)."""
    if arch == "dnn":
        return TwoBranchDNN(n_bands, n_years, n_channels, n_extras, n_classes, n_members,
                            **kwargs)
    if n_members != 1:
        raise ValueError("recurrent networks are built one ensemble member at a time")
    if arch in ("gru", "lstm", "rnn"):
        return TwoBranchRNN(n_bands, n_years, n_channels, n_extras, n_classes,
                            cell="lstm" if arch == "lstm" else "gru", **kwargs)
    raise ValueError(f"unknown architecture {arch!r}: use 'dnn', 'gru' or 'lstm'")


def smote(x, y, rng, k=5, target=None):
    """SMOTE oversampling: new minority rows on segments to minority neighbours.

    Parameters
    ----------
    x : ndarray (N, F)
        Standardised flat features.
    y : ndarray (N,) of int
    rng : `numpy.random.Generator`
    k : int
        Neighbours per minority row.
    target : int, optional
        Rows per class afterwards; default: the size of the largest class.

    Returns
    -------
    x_new, y_new : ndarray
        The input rows followed by the synthetic ones (Chawla et al. 2002).
    """
    from sklearn.neighbors import NearestNeighbors

    counts = np.bincount(y)
    target = counts.max() if target is None else int(target)
    xs, ys = [x], [y]
    for cls, n in enumerate(counts):
        need = target - n
        if need <= 0 or n < 2:
            continue
        xc = x[y == cls]
        nn_ = NearestNeighbors(n_neighbors=min(k + 1, n)).fit(xc)
        _, idx = nn_.kneighbors(xc)
        base = rng.integers(0, n, need)
        neigh = idx[base, rng.integers(1, idx.shape[1], need)]
        lam = rng.random((need, 1))
        xs.append(xc[base] + lam * (xc[neigh] - xc[base]))
        ys.append(np.full(need, cls))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _tensors(arrays, idx=None):
    return [torch.as_tensor(a if idx is None else a[idx]) for a in arrays]


def train_network(net, arrays, y, *, epochs=60, batch_size=64, lr=3e-3, weight_decay=1e-4,
                  sample_weight=None, seed=0):
    """Train a network with Adam on the cross-entropy loss.

    Parameters
    ----------
    net : `torch.nn.Module`
        Called as ``net(spectrum, history, extras)``.
    arrays : list of 3 ndarray
        Spectrum (N, B, C), history (N, T, C) and extras (N, E) inputs
        (shape (N, 0) for disabled branches).
    y : ndarray (N,) of int
    epochs, batch_size, lr, weight_decay : training settings; the learning rate
        warms up over the first 10 % of the steps and then follows a cosine to zero, which makes the last epoch's weights
        a stable choice without a validation set.
    sample_weight : ndarray (N,), optional
        Per-row loss weights (class weights).
    seed : int
        Seeds the batch order and the dropout masks (the caller seeds the
        initialisation).

    Returns
    -------
    net : the trained network (in eval mode).
    """
    # Batch order and dropout masks are seeded, without touching the caller's state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train(net, arrays, y, epochs, batch_size, lr, weight_decay, sample_weight, seed)


def _train(net, arrays, y, epochs, batch_size, lr, weight_decay, sample_weight, seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = _tensors(arrays)
    yt = torch.as_tensor(y, dtype=torch.long)
    wt = torch.as_tensor(np.ones(len(y)) if sample_weight is None else sample_weight,
                         dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(y)
    steps = epochs * int(np.ceil(n / batch_size))
    warm = max(1, steps // 10)

    def schedule(step):  # linear warm-up over 10 % of the steps, then cosine to zero
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            b = perm[start:start + batch_size]
            logits = net(*(t[b] for t in tensors))  # (M, B, K)
            m = logits.shape[0]
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), yt[b].repeat(m),
                                               reduction="none").view(m, -1)
            # Sum over members (independent parameters), weighted mean over rows.
            loss = ((loss * wt[b]).sum(dim=1) / wt[b].sum()).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


@torch.no_grad()
def predict_proba_samples(nets, arrays, mc_samples=0, seed=0, batch_size=4096):
    """Class probabilities of every member (or MC-dropout sample).

    Parameters
    ----------
    nets : list of `torch.nn.Module`
    arrays : list of 3 ndarray
        Inputs as in `train_network`.
    mc_samples : int
        0: each network once in eval mode (deep ensemble). >0: that many
        stochastic passes per network with dropout on (MC dropout).
    seed : int
        Seeds the dropout masks, so predictions are reproducible.

    Returns
    -------
    probs : ndarray (S, N, K)
        S = total members (times ``mc_samples``).
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        return _predict_samples(nets, _tensors(arrays), mc_samples, batch_size)


def _predict_samples(nets, tensors, mc_samples, batch_size):
    n = tensors[0].shape[0]
    out = []
    for net in nets:
        passes = max(mc_samples, 1)
        if mc_samples:
            net.train()  # dropout on; the networks have no batch-norm
        for _ in range(passes):
            chunks = []
            for start in range(0, n, batch_size):
                sl = slice(start, start + batch_size)
                chunks.append(torch.softmax(net(*(t[sl] for t in tensors)), dim=-1))
            out.append(torch.cat(chunks, dim=1).numpy())
        net.eval()
    return np.concatenate(out, axis=0)

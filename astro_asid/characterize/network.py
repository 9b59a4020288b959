"""The characterisation network: a small CNN on candidate cutouts with several heads."""

import torch
from torch import nn

__all__ = ["CutoutNet", "HEAD_SIZES"]

#: Output size of each head the network can carry.
#: ``position``: mean (dx, dy) in pixels and their log-variances;
#: ``flux``: mean and log-variance of the standardised log10 flux;
#: ``source``: logit of P(real); ``cls``: class logits (size from the card);
#: ``ext_cls``: extension-class logits; ``extension``: mean and log-variance
#: of the extension (deg).
HEAD_SIZES = {"position": 4, "flux": 2, "source": 1, "extension": 2}


class CutoutNet(nn.Module):
    """Convolutional trunk + dense layers + one linear head per output.

    Parameters
    ----------
    in_channels : int
        Bands (x scales) plus validity planes.
    size : int
        Cutout side (pixels).
    n_scalar : int
        Scalar inputs concatenated after the convolutions (the candidate's
        sub-pixel offset).
    heads : dict
        Head name -> output size.
    width : int
        Channels of the first convolution block (doubled in the second).
    hidden : int
        Width of the dense layers.
    norm : bool
        Batch normalisation after every convolution (needed to train the
        deeper trunk of large cutouts).
    """

    def __init__(self, in_channels, size, n_scalar, heads, width=32, hidden=128, norm=False):
        super().__init__()
        self.config = dict(in_channels=int(in_channels), size=int(size), n_scalar=int(n_scalar),
                           heads={k: int(v) for k, v in heads.items()}, width=int(width),
                           hidden=int(hidden))
        if norm:  # only stored when set, so older cards load unchanged
            self.config["norm"] = True
        layers, c, s = [], int(in_channels), int(size)
        w = int(width)
        while True:
            for c_in in (c, w):
                layers.append(nn.Conv2d(c_in, w, 3, padding=1))
                if norm:
                    layers.append(nn.BatchNorm2d(w))
                layers.append(nn.SiLU())
            c = w
            if s // 2 < 4:
                break
            layers.append(nn.MaxPool2d(2))
            s //= 2
            w = min(2 * w, 4 * int(width))
        self.trunk = nn.Sequential(*layers)
        flat = c * s * s
        self.dense = nn.Sequential(nn.Linear(flat + n_scalar, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, int(v)) for k, v in heads.items()})

    def forward(self, x, scalars):
        h = self.trunk(x).flatten(1)
        h = self.dense(torch.cat([h, scalars], dim=1))
        return {k: head(h) for k, head in self.heads.items()}

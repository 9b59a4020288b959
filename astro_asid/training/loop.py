"""A small, generic training loop for the astro_asid networks.

The data come from a callable ``make_batch(rng, n) -> (inputs, targets)``
(simulated on the fly, never the same twice); validation uses a fixed
held-out set made once with a different seed; checkpoints are safetensors
files with a JSON card (`astro_asid.nn.io`), never pickles.
"""

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from astro_asid.nn.io import save_weights

__all__ = ["Trainer", "select_device", "seed_everything"]


def select_device(device="auto"):
    """Resolve ``"auto"`` / ``"cuda"`` / ``"cpu"`` to a `torch.device` (with a clear error)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; "
                           "use --device cpu")
    return device


def seed_everything(seed):
    """Seed torch (CPU and CUDA) and return a numpy `~numpy.random.Generator`."""
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
    return np.random.default_rng(int(seed))


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


class Trainer:
    """Train a module on batches from a callable.

    Parameters
    ----------
    model : `torch.nn.Module`
        The network; its ``config`` attribute (if any) goes into the card.
    make_batch : callable
        ``make_batch(rng, n) -> (inputs, targets)`` with ``rng`` a numpy
        Generator; ``inputs`` a tensor, ``targets`` anything ``loss_fn`` takes.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> (loss, parts)`` with ``parts`` a dict
        of floats for the log.
    val_data : tuple, optional
        Fixed ``(inputs, targets)`` held-out set.
    lr : float
        Peak learning rate (AdamW, linear warm-up then cosine decay).
    weight_decay : float
        AdamW weight decay.
    seed : int
        Seed of torch and of the ``rng`` handed to ``make_batch``.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    out : str or path, optional
        Directory for checkpoints (``last``, ``best``) and ``history.json``.
    card : dict, optional
        Extra model-card entries stored with each checkpoint.
    log : callable
        Progress output (default `print` with flush).
    """

    def __init__(self, model, make_batch, loss_fn, val_data=None, lr=2e-3, weight_decay=1e-4,
                 seed=0, device="auto", out=None, card=None, log=None, val_batch_size=64):
        self.device = select_device(device)
        self.rng = seed_everything(seed)
        self.seed = int(seed)
        self.model = model.to(self.device)
        self.make_batch = make_batch
        self.loss_fn = loss_fn
        self.val_data = val_data
        self.val_batch_size = int(val_batch_size)
        self.lr = float(lr)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr,
                                     weight_decay=weight_decay)
        self.out = Path(out) if out is not None else None
        self.card = dict(card or {})
        self.log = log or (lambda msg: print(msg, flush=True))
        self.history = []
        self.best_val = math.inf
        self.step = 0

    def _lr_at(self, step, steps):
        warm = max(1, min(200, steps // 20))
        if step < warm:
            return self.lr * (step + 1) / warm
        frac = (step - warm) / max(1, steps - warm)
        return self.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))

    @torch.no_grad()
    def validate(self):
        """Mean loss (and parts) on the held-out set, in eval mode."""
        if self.val_data is None:
            return None
        self.model.eval()
        x_all, t_all = self.val_data
        n = len(x_all)
        total, parts_sum = 0.0, {}
        for i in range(0, n, self.val_batch_size):
            x = _to(x_all[i:i + self.val_batch_size], self.device)
            t = _to({k: v[i:i + self.val_batch_size] for k, v in t_all.items()}, self.device)
            loss, parts = self.loss_fn(self.model(x), t)
            w = len(x) / n
            total += float(loss) * w
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * w
        self.model.train()
        return total, parts_sum

    def save(self, name, extra=None):
        """Write ``out/name.safetensors`` + card; returns the card."""
        if self.out is None:
            return None
        card = dict(self.card)
        card.update({"step": self.step, "seed": self.seed,
                     "config": getattr(self.model, "config", None)})
        card.update(extra or {})
        return save_weights(self.model, self.out / name, card)

    def fit(self, steps, batch_size, val_every=200, log_every=20):
        """Train for ``steps`` steps of ``batch_size`` examples; returns the history."""
        steps = int(steps)
        if steps < 1 or batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.model.train()
        t0 = time.time()
        t_data = 0.0
        run_loss = None
        for step in range(steps):
            self.step = step + 1
            for g in self.opt.param_groups:
                g["lr"] = self._lr_at(step, steps)
            td = time.time()
            x, t = self.make_batch(self.rng, batch_size)
            t_data += time.time() - td
            x, t = _to(x, self.device), _to(t, self.device)
            loss, parts = self.loss_fn(self.model(x), t)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)} at step {self.step}; "
                                         "lower the learning rate")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.opt.step()
            lv = loss.item()
            run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
            last = self.step == steps
            if self.step % log_every == 0 or last:
                el = time.time() - t0
                eta = el / self.step * (steps - self.step)
                self.log(f"step {self.step}/{steps} loss {run_loss:.4f} "
                         + " ".join(f"{k} {float(v):.4f}" for k, v in parts.items())
                         + f" lr {self.opt.param_groups[0]['lr']:.2e} "
                         f"{el:.0f}s (data {t_data:.0f}s) eta {eta:.0f}s")
            if self.step % val_every == 0 or last:
                rec = {"step": self.step, "train_loss": run_loss, "time_s": time.time() - t0}
                v = self.validate()
                if v is not None:
                    rec["val_loss"], rec["val_parts"] = v[0], v[1]
                    better = v[0] < self.best_val
                    self.log(f"  validation loss {v[0]:.4f} "
                             + " ".join(f"{k} {x:.4f}" for k, x in v[1].items())
                             + (" (best)" if better else ""))
                    if better:
                        self.best_val = v[0]
                        self.save("best", {"val_loss": v[0]})
                self.save("last", {"val_loss": rec.get("val_loss")})
                self.history.append(rec)
                if self.out is not None:
                    (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
        return self.history

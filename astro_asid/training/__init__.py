"""Training the deep detectors on simulated data (`train_detector`, `Trainer`)."""

from .loop import Trainer  # noqa: F401

__all__ = ["Trainer", "train_detector"]


def train_detector(*args, **kwargs):
    """See `astro_asid.training.fermi.train_detector` (imported lazily)."""
    from .fermi import train_detector as _train
    return _train(*args, **kwargs)

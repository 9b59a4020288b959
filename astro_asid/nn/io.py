"""Saving and loading model weights as safetensors with a JSON model card.

A model lives in two files: ``NAME.safetensors`` (tensors only, never a
pickle) and ``NAME.json`` (the card: architecture and config, training
command and data recipe, metrics, and the sha256 of the weights file). The
loader checks the hash before it reads a single tensor, and rebuilds the
network from code using the card's config.

Several cards may share one weights file (the four Fermi-LAT detectors are
decoders of one network): a card's ``weights_file`` names the file, relative
to the card's folder; without it (or when that file is missing) the weights
are ``NAME.safetensors`` next to the card.
"""

import hashlib
import json
import os
from pathlib import Path

from astro_asid.utils.exceptions import WeightsError

__all__ = ["sha256_file", "save_weights", "save_card", "load_weights", "read_card",
           "weights_path", "shipped_model_path"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def sha256_file(path):
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_model_path(name):
    """Path (without suffix) of a model shipped inside the package."""
    return MODELS_DIR / name


def _paths(path):
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_weights(tensors, path, card):
    """Write ``tensors`` (a dict of name -> torch.Tensor) and its card.

    Parameters
    ----------
    tensors : dict or `torch.nn.Module`
        The tensors, or a module whose ``state_dict`` is saved.
    path : str or path
        Destination, with or without the ``.safetensors`` suffix.
    card : dict
        JSON-serialisable model card; ``sha256`` and ``weights_file`` are added.

    Returns
    -------
    card : dict
        The card as written.
    """
    from safetensors.torch import save_file

    if hasattr(tensors, "state_dict"):
        tensors = tensors.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    wpath, cpath = _paths(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, os.fspath(wpath))
    card = dict(card)
    card["weights_file"] = wpath.name
    card["sha256"] = sha256_file(wpath)
    cpath.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return card


def save_card(path, card, weights_file):
    """Write a card ``path`` (``.json``) for an existing weights file.

    ``weights_file`` is stored relative to the card's folder (it must lie in
    that folder) with its sha256, so several cards can share one file.

    Returns
    -------
    card : dict
        The card as written.
    """
    _, cpath = _paths(path)
    weights_file = Path(weights_file)
    if weights_file.resolve().parent != cpath.resolve().parent:
        raise ValueError(f"weights file {weights_file} must be in the card's folder {cpath.parent}")
    card = dict(card)
    card["weights_file"] = weights_file.name
    card["sha256"] = sha256_file(weights_file)
    cpath.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return card


def weights_path(path, card=None):
    """The weights file of the model ``path`` (its card's ``weights_file``, else
    ``NAME.safetensors``)."""
    wpath, cpath = _paths(path)
    card = read_card(path) if card is None and cpath.exists() else (card or {})
    named = card.get("weights_file")
    if named and Path(named).name == named and (cpath.parent / named).exists():
        return cpath.parent / named
    return wpath


def read_card(path):
    """Read the JSON model card next to a weights file."""
    _, cpath = _paths(path)
    if not cpath.exists():
        raise WeightsError(f"model card {cpath} not found")
    try:
        return json.loads(cpath.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"model card {cpath} is not valid JSON: {exc}") from None


def load_weights(path, check_hash=True):
    """Load tensors and card, checking the weights against the card's sha256.

    Returns
    -------
    tensors : dict
        name -> `torch.Tensor` (CPU).
    card : dict
        The model card.

    Raises
    ------
    WeightsError
        Missing files, a hash mismatch (corrupt or replaced weights), or a
        file that safetensors cannot parse.
    """
    from safetensors.torch import load_file

    card = read_card(path)
    wpath = weights_path(path, card)
    if not wpath.exists():
        raise WeightsError(f"weights file {wpath} not found")
    if check_hash:
        digest = sha256_file(wpath)
        if digest != card.get("sha256"):
            raise WeightsError(
                f"weights file {wpath} is corrupt or was replaced: sha256 {digest[:12]}... "
                f"does not match the model card's {str(card.get('sha256'))[:12]}...")
    try:
        tensors = load_file(os.fspath(wpath))
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"cannot read weights file {wpath}: {exc}") from None
    return tensors, card

"""Source detectors: the base class and the built-in classical detectors."""

from .base import Detector  # noqa: F401

__all__ = ["Detector"]

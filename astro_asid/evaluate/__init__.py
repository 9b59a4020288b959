"""Evaluation of source finders: the Fermi-LAT data challenge and its scorer."""

from .challenge import *  # noqa: F401,F403
from .challenge import __all__  # noqa: F401

"""Shared fixtures for the astro_asid test suite."""

import numpy as np
import pytest

from helpers import make_wcs, point_sources


@pytest.fixture
def wcs64():
    return make_wcs()


@pytest.fixture
def bright_image():
    """64x64 counts with 5 bright, well separated sources; returns (data, wcs, positions)."""
    pos = [(12.3, 15.6), (40.2, 20.7), (25.5, 45.1), (50.8, 50.2), (8.9, 52.4)]
    data, _ = point_sources((64, 64), pos, [800] * 5)
    return data, make_wcs(), np.array(pos)

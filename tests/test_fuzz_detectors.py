"""Hypothesis: any image through find_sources with every classical detector either gives a
valid catalog or one of the documented exceptions (ValueError/TypeError), never a crash."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from astro_asid import find_sources
from astro_asid.catalog import validate_catalog
from astro_asid.utils.exceptions import ASIDWarning

from helpers import make_wcs

images = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=st.tuples(st.integers(1, 3), st.integers(2, 24), st.integers(2, 24)),
    elements=st.one_of(st.floats(-10, 1e4, width=32), st.just(np.nan), st.just(np.inf)),
)


@pytest.mark.parametrize("detector", ["peaks", "dao", "log", "tsmap"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=images, squeeze=st.booleans())
def test_detectors_only_documented_exceptions(detector, data, squeeze):
    if squeeze:
        data = data[0]
    wcs = make_wcs(shape=data.shape[-2:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # input warnings (inf masked, tiny images) are fine
        try:
            cat = find_sources(data, wcs, detector=detector)
        except (ValueError, TypeError):
            return
    validate_catalog(cat)
    x = np.asarray(cat["x_centroid"].value)
    assert np.all((x >= -0.5) & (x <= data.shape[-1] - 0.5))

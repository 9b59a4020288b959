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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch with one thread for a module's tests: the serial path keeps torch's thread
    count, dask workers use BLOCK_THREADS (1), so that the catalogs agree bit for bit
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    from astro_asid.scale.block import BLOCK_THREADS

    old = torch.get_num_threads()
    torch.set_num_threads(BLOCK_THREADS)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client():
    """A dask.distributed LocalCluster of 2 single-threaded worker processes on loopback
    (skips without distributed)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c

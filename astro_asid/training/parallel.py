"""Parallel training data: the patch pool simulated by several processes, and
batches drawn from it by `torch.utils.data.DataLoader` workers.

On a GPU the network step takes a few milliseconds, while the simulator and
the Poisson re-draws run on the CPU; these helpers keep the GPU fed. Both are
deterministic for a fixed ``seed`` and number of ``workers``: chunk ``k`` of
the pool comes from its own simulator seed, and worker ``w`` draws batches
from its own generator (the DataLoader hands batches out round-robin, in
worker order).
"""

import multiprocessing

import numpy as np
import torch

__all__ = ["simulate_pool_data", "BatchStream"]

#: patches simulated per task of the process pool
CHUNK = 128


def _simulate_chunk(task):
    from astro_asid.training.fermi import PatchPool, make_simulator

    instrument, background, simulator, seed, n = task
    torch.set_num_threads(1)
    return PatchPool.draw(make_simulator(instrument, background, seed, simulator), n)


def simulate_pool_data(size, instrument="fermi-lat", background="b1", simulator="auto", seed=0,
                       workers=1):
    """Simulate ``size`` pool patches in chunks of `CHUNK`, on ``workers`` processes.

    Returns
    -------
    tuple
        ``(source maps, background maps, positions, band counts, fluxes, widths)`` as
        `PatchPool` stores them; pass it as ``PatchPool(..., data=...)``.
    """
    size, workers = int(size), max(1, int(workers))
    sizes = [CHUNK] * (size // CHUNK) + ([size % CHUNK] if size % CHUNK else [])
    # chunk k gets simulator seed seed*7919 + 104729*(k+1): distinct from the serial path's
    tasks = [(instrument, background, simulator, int(seed) * 7919 + 104729 * (k + 1), n)
             for k, n in enumerate(sizes)]
    if workers == 1:
        parts = [_simulate_chunk(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as procs:
            parts = procs.map(_simulate_chunk, tasks)
    src = np.concatenate([p[0] for p in parts])
    bg = np.concatenate([p[1] for p in parts])
    xy, cb, flux, ext = ([x for p in parts for x in p[i]] for i in (2, 3, 4, 5))
    return src, bg, xy, cb, flux, ext


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, pool, batch_size, seed):
        super().__init__()
        self.pool, self.batch_size, self.seed = pool, int(batch_size), int(seed)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        while True:
            yield self.pool.make_batch(rng, self.batch_size)


def _worker_init(_):
    torch.set_num_threads(1)


class BatchStream:
    """Endless training batches from a `PatchPool`, made by DataLoader workers.

    The pool is shared with the (forked) workers copy-on-write and is not
    refreshed: its size sets the number of distinct skies, the Poisson
    re-draws, exposure and background scales and flips/rotations the rest.

    Parameters
    ----------
    pool : `PatchPool`
    batch_size : int
    seed : int
    workers : int
        DataLoader worker processes (0 = make batches in this process).
    """

    def __init__(self, pool, batch_size, seed=0, workers=4):
        self.batch_size = int(batch_size)
        workers = int(workers)
        kwargs = {}
        if workers > 0:
            kwargs = {"prefetch_factor": 4, "persistent_workers": True,
                      "worker_init_fn": _worker_init,
                      "multiprocessing_context": "fork"}
        self._loader = torch.utils.data.DataLoader(
            _Batches(pool, batch_size, seed), batch_size=None, num_workers=workers,
            pin_memory=torch.cuda.is_available(), **kwargs)
        self._it = iter(self._loader)

    def __call__(self, rng=None, n=None):
        """``make_batch(rng, n)`` for `Trainer` (``rng`` unused; ``n`` must match)."""
        if n is not None and int(n) != self.batch_size:
            raise ValueError(f"this stream makes batches of {self.batch_size}, not {n}")
        return next(self._it)

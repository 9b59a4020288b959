"""Running blocks in this process or on a dask cluster.

``scheduler=None`` (or ``"serial"``) runs the blocks one after the other in
this process. ``"processes"`` (or ``workers=N``) starts a local
`dask.distributed.LocalCluster` of single-threaded worker processes for the
call and closes it afterwards; a `distributed.Client` or a scheduler address
(``"tcp://host:port"``) uses a cluster that is already running. dask is
imported only when a cluster is asked for.
"""

import contextlib
import os
import sys
import uuid

__all__ = ["SchedulerError", "auto_workers", "usable_cpus", "check_scheduler", "require_distributed", "open_client",
           "map_blocks", "is_serial", "describe_plan", "CRASH_ENV"]

#: Test hook: ``"INDEX:PATH"`` makes the first worker attempt at block INDEX create the
#: file PATH and kill its worker process (`os._exit`); only read inside dask workers.
CRASH_ENV = "ASTRO_ASID_TEST_CRASH_BLOCK"

_SERIAL = ("serial",)


class SchedulerError(RuntimeError):
    """The dask cluster could not be reached, or lost a block for good (its workers
    died more often than the scheduler's ``allowed-failures``)."""


def require_distributed(what="a dask scheduler"):
    """Import and return `distributed`, or raise `ImportError` naming the extra."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"{what} needs dask.distributed, which is not installed: "
                          "pip install 'astro-asid[scale]' (or 'dask[distributed]')") from exc
    return distributed


def usable_cpus():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(npix, device="cpu"):
    """Workers of the automatic local cluster for an image of ``npix`` pixels, or None
    to run in this process.

    A cluster is started when the image has more than
    ``astro_asid.conf.auto_cluster_pixels`` pixels (0: never), the machine has
    at least ``conf.auto_cluster_min_cpus`` CPUs, the network runs on the CPU
    (on a GPU one process feeds it best) and dask.distributed is installed.
    """
    from astro_asid.config import conf

    limit = int(conf.auto_cluster_pixels)
    cpus = usable_cpus()
    if limit <= 0 or npix <= limit or cpus < int(conf.auto_cluster_min_cpus) \
            or device != "cpu":
        return None
    try:
        require_distributed()
    except ImportError:
        return None
    return cpus


def is_serial(plan):
    """Whether the plan of `check_scheduler` runs in this process."""
    return plan[0] == "serial"


def describe_plan(plan):
    """How the tasks of a plan of `check_scheduler` ran, for a catalog's
    ``meta["scheduler"]``: ``"serial"``, ``"local dask cluster (N workers)"``,
    ``"dask scheduler ADDRESS"`` or ``"dask client ADDRESS"``."""
    kind, value = plan
    if kind == "serial":
        return "serial"
    if kind == "local":
        return f"local dask cluster ({value or 'default'} workers)"
    if kind == "address":
        return f"dask scheduler {value}"
    return f"dask client {value.scheduler.address}"


def check_scheduler(scheduler=None, workers=None):
    """Check the ``scheduler``/``workers`` options of `~astro_asid.find_sources`.

    Parameters
    ----------
    scheduler : None, str or `distributed.Client`
        None or ``"serial"``: in this process; ``"processes"``: a local
        cluster of ``workers`` processes; ``"tcp://host:port"`` (any address
        with ``://``): the scheduler at that address; a ``Client``: its cluster.
    workers : int, optional
        Worker processes of a local cluster; alone, it implies ``"processes"``.

    Returns
    -------
    tuple
        ``("serial", None)``, ``("local", workers)``, ``("address", address)``
        or ``("client", client)``.

    Raises
    ------
    ImportError
        A cluster is asked for and dask.distributed is not installed.
    ValueError, TypeError
        Unknown scheduler names, ``workers`` < 1, or ``workers`` with an existing cluster.
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
    if scheduler is None:
        scheduler = "serial" if workers is None else "processes"
    if isinstance(scheduler, str):
        if scheduler == "serial":
            if workers is not None:
                raise ValueError("workers= needs scheduler='processes' (or no scheduler), "
                                 "not 'serial'")
            return ("serial", None)
        if scheduler == "processes":
            require_distributed(f"scheduler={scheduler!r}")
            return ("local", workers)
        if "://" in scheduler:
            require_distributed(f"scheduler={scheduler!r}")
            if workers is not None:
                raise ValueError("workers= only sizes a local cluster; an existing cluster "
                                 f"({scheduler}) has its own workers")
            return ("address", scheduler)
        raise ValueError(f"unknown scheduler {scheduler!r}: use None or 'serial', 'processes', "
                         "a scheduler address such as 'tcp://host:8786', or a "
                         "distributed.Client")
    distributed = require_distributed("a dask Client")
    if not isinstance(scheduler, distributed.Client):
        raise TypeError(f"scheduler must be None, a string or a distributed.Client, not "
                        f"{type(scheduler).__name__}")
    if workers is not None:
        raise ValueError("workers= only sizes a local cluster; a Client has its own workers")
    return ("client", scheduler)


@contextlib.contextmanager
def open_client(plan):
    """A `distributed.Client` for a plan of `check_scheduler` (None when serial).

    A local cluster (``("local", n)``) and a client made for an address are
    closed on exit; a given client is left open.
    """
    kind, value = plan
    if kind == "serial":
        yield None
        return
    if kind == "client":
        yield value
        return
    distributed = require_distributed()
    if kind == "local":
        cluster = distributed.LocalCluster(n_workers=value, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address=":0")
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        # waits up to dask's "distributed.comm.timeouts.connect" (30 s by default)
        client = distributed.Client(value, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(f"could not connect to the dask scheduler at {value}: {exc}") \
            from exc
    try:
        yield client
    finally:
        client.close()


def _is_collection(obj):
    return "dask" in sys.modules and hasattr(obj, "__dask_graph__") and callable(
        getattr(obj, "__dask_graph__", None)) and obj.__dask_graph__() is not None


def _replace_collections(args, kwargs, compute):
    """``args``, ``kwargs`` with their dask collections replaced by
    ``compute(list_of_collections)`` (one call, so that shared inputs, such as the
    data a mask is derived from, are computed once). Collections are looked for
    among the arguments and the values of dict arguments (a block's ``meta``
    holds per-pixel maps such as ``saturated``)."""
    places = []  # (container key, dict key or None)
    for i, a in enumerate(args):
        places += _places(("a", i), a)
    for k, v in kwargs.items():
        places += _places(("k", k), v)
    if not places:
        return args, kwargs
    args, kwargs = list(args), dict(kwargs)

    def get(where):
        (kind, key), sub = where
        top = args[key] if kind == "a" else kwargs[key]
        return top if sub is None else top[sub]

    got = compute([get(w) for w in places])
    copied = set()
    for ((kind, key), sub), value in zip(places, got):
        holder = args if kind == "a" else kwargs
        if sub is None:
            holder[key] = value
            continue
        if (kind, key) not in copied:  # never modify the caller's dict
            holder[key] = dict(holder[key])
            copied.add((kind, key))
        holder[key][sub] = value
    return tuple(args), kwargs


def _places(where, value):
    """Where the dask collections are in one argument: ``[(where, None)]`` for the
    argument itself, ``[(where, key), ...]`` for values of a dict argument."""
    if _is_collection(value):
        return [(where, None)]
    if isinstance(value, dict):
        return [(where, k) for k, v in value.items() if _is_collection(v)]
    return []


def _compute_here(args, kwargs):
    """``args``, ``kwargs`` with their dask collections computed in this process
    (with dask's default scheduler)."""
    def compute(colls):
        import dask
        return dask.compute(*colls)

    return _replace_collections(args, kwargs, compute)


def _crash_hook(index):
    """The `CRASH_ENV` test hook (see there); does nothing when it is not set."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    which, _, path = spec.partition(":")
    if int(which) != index or not path:
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # a later attempt: run normally
    os.close(fd)
    os._exit(1)


def _run_remote(func, index, args, kwargs):
    """What a dask worker runs for one block."""
    _crash_hook(index)
    return func(*args, **kwargs)


def map_blocks(func, tasks, client=None, progress=False, total=None, max_in_flight=None,
               desc="blocks"):
    """``[func(*args, **kwargs) for args, kwargs in tasks]``, in this process or on dask.

    Parameters
    ----------
    func : callable
        A module-level function (importable by the workers).
    tasks : iterable of (tuple, dict)
        Arguments per call, produced lazily (only the calls in flight hold
        their arguments). Dask collections among the top-level arguments
        (e.g. the slice of a dask array) are computed here when serial, on the
        cluster otherwise.
    client : `distributed.Client`, optional
        None: run here, one call after the other.
    progress : bool
        Show a progress bar (tqdm) of the calls done.
    total : int, optional
        Number of tasks, for the progress bar (``len(tasks)`` when it has one).
    max_in_flight : int, optional
        Calls submitted but not collected yet (their arguments are held by the
        scheduler); default twice the number of workers, at least 2.

    Returns
    -------
    list
        The results, in the order of ``tasks``.

    Raises
    ------
    SchedulerError
        The cluster lost a call for good; exceptions raised by ``func`` on a
        worker are raised here unchanged.
    """
    from tqdm.auto import tqdm

    if total is None and hasattr(tasks, "__len__"):
        total = len(tasks)
    with tqdm(total=total, disable=not progress, desc=desc, unit="block") as bar:
        if client is None:
            out = []
            for args, kwargs in tasks:
                args, kwargs = _compute_here(args, kwargs)
                out.append(func(*args, **kwargs))
                bar.update()
            return out
        return _map_distributed(func, tasks, client, bar, max_in_flight)


def _to_futures(client, args, kwargs):
    """``args``, ``kwargs`` with dask collections replaced by futures computed on the cluster."""
    return _replace_collections(args, kwargs, client.compute)


def _map_distributed(func, tasks, client, bar, max_in_flight):
    import dask
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    if max_in_flight is None:
        n_workers = len(client.scheduler_info().get("workers", {}))
        max_in_flight = max(2, 2 * n_workers)
    run = uuid.uuid4().hex[:12]
    todo = enumerate(tasks)
    results = {}
    pending = {}  # key -> (index, future)
    running = as_completed(loop=client.loop)

    def fill():
        while len(pending) < max_in_flight:
            try:
                i, (args, kwargs) = next(todo)
            except StopIteration:
                return
            args, kwargs = _to_futures(client, args, kwargs)
            # the block's pixels travel in the task itself, so that the scheduler can
            # run it again elsewhere when a worker dies; they are a few MB by design
            with dask.config.set({"distributed.admin.large-graph-warning-threshold": "2GiB"}):
                fut = client.submit(_run_remote, func, i, args, kwargs, pure=False,
                                    key=f"asid-block-{run}-{i}")
            pending[fut.key] = (i, fut)
            running.add(fut)

    try:
        fill()
        for fut in running:
            i = pending[fut.key][0]
            try:
                results[i] = fut.result()
            except KilledWorker as exc:
                raise SchedulerError(f"block {i} killed dask workers too often; the "
                                     f"scheduler gave up: {exc}") from exc
            except FutureCancelledError as exc:
                raise SchedulerError(f"block {i} was cancelled on the dask cluster: "
                                     f"{exc}") from exc
            del pending[fut.key]
            fut.release()
            bar.update()
            fill()
    finally:
        if pending:  # an error: stop what is still queued for this call
            client.cancel([f for _, f in pending.values()], force=True)
    return [results[i] for i in range(len(results))]

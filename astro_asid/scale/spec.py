"""What a block worker needs to rebuild the detector and the characteriser.

A worker process never receives a network through pickle: it receives a
`DetectorSpec` (a registered detector name and its constructor options) and
a characteriser option (None, a bool or a weights path), and builds both
itself, once per process (the weights are cached there, see
`astro_asid.detection.deep.load_model`).
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DetectorSpec", "build_detector", "check_characterizer_spec",
           "resolve_block_characterizer"]

_LOCK = threading.Lock()
_DETECTORS = {}
_CHARACTERIZERS = {}


@dataclass(frozen=True)
class DetectorSpec:
    """A detector by registered name and constructor options (what a worker rebuilds).

    Parameters
    ----------
    name : str
        Registered detector name (see `~astro_asid.list_detectors`).
    options : dict
        Keyword arguments of the detector's constructor; plain Python values.
    """

    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def from_detector(cls, detector):
        """The spec that rebuilds ``detector`` (an instance of a registered class).

        Raises
        ------
        TypeError
            ``detector`` is an instance of a class that is not the one
            registered under its name, so another process could not rebuild it.
        """
        from astro_asid.plugins.manager import get_registry

        reg = get_registry().detectors
        if detector.name not in reg or reg.get(detector.name) is not type(detector):
            raise TypeError(f"detector {type(detector).__name__} (name {detector.name!r}) is "
                            "not a registered detector class, so worker processes cannot "
                            "rebuild it; register it as a plugin or use scheduler='serial'")
        return cls(detector.name, dict(detector.options))

    def key(self):
        """A hashable key of the spec (name and ``repr`` of the sorted options)."""
        return (self.name, repr(sorted(self.options.items())))

    def build(self):
        """A new detector instance (see `build_detector` for the cached one)."""
        from astro_asid.plugins.manager import get_detector

        return get_detector(self.name, **self.options)


def build_detector(detector):
    """The detector of ``detector``: an instance is returned as it is; a `DetectorSpec`
    is built once per process and reused."""
    if not isinstance(detector, DetectorSpec):
        return detector
    key = detector.key()
    with _LOCK:
        got = _DETECTORS.get(key)
    if got is None:
        got = detector.build()
        with _LOCK:
            got = _DETECTORS.setdefault(key, got)
    return got


def check_characterizer_spec(option):
    """Raise `TypeError` unless ``option`` can be sent to another process: None, a
    bool or a weights path (a `~astro_asid.characterize.Characterizer` instance
    cannot: pass its weights path)."""
    if option is None or isinstance(option, (bool, str, Path)):
        return option
    raise TypeError(f"with a dask scheduler, characterize must be None, a bool or a weights "
                    f"path (workers load the model themselves), not {type(option).__name__}")


def resolve_block_characterizer(option, instrument):
    """`~astro_asid.characterize.resolve_characterizer` with weights paths loaded once
    per process (the shipped characterisers are cached already)."""
    from astro_asid.characterize.apply import resolve_characterizer

    if not isinstance(option, (str, Path)):
        return resolve_characterizer(option, instrument)
    path = Path(option).resolve()
    try:
        stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size)
                      for p in sorted(path.parent.glob(path.stem + ".*")))
    except OSError:
        stamp = None
    key = (str(path), stamp)
    with _LOCK:
        got = _CHARACTERIZERS.get(key)
    if got is None:
        got = resolve_characterizer(option, instrument)
        with _LOCK:
            got = _CHARACTERIZERS.setdefault(key, got)
    return got

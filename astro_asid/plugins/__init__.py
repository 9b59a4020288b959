"""The pluggy plugin system: hook markers, registries and plugin loading.

A third-party package adds detectors with::

    from astro_asid.plugins import hookimpl
    from astro_asid.detection import Detector

    class Mine(Detector):
        name = "mine"
        description = "my detector"
        def detect(self, image): ...

    @hookimpl
    def asid_register_detectors(registry):
        registry.add(Mine)

and an entry point in its ``pyproject.toml``::

    [project.entry-points."astro_asid.detectors"]
    mine = "mypkg.module"
"""

from .hooks import hookimpl, hookspec  # noqa: F401
from .manager import (  # noqa: F401
    AdapterRegistry, DetectorRegistry, get_detector, get_registry, list_detectors, reload,
)

__all__ = ["hookimpl", "hookspec", "DetectorRegistry", "AdapterRegistry", "get_registry",
           "get_detector", "list_detectors", "reload"]

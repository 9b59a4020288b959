"""Hook implementations for the detectors that ship with astro_asid.

They go through exactly the same hooks as third-party plugins.
"""

from astro_asid.plugins.hooks import hookimpl


@hookimpl
def asid_register_detectors(registry):
    from astro_asid.detection.classical import CLASSICAL_DETECTORS

    for cls in CLASSICAL_DETECTORS:
        registry.add(cls)
    try:
        from astro_asid.detection.deep import DEEP_DETECTORS
    except ImportError:  # torch missing: classical detectors still work
        DEEP_DETECTORS = []
    for cls in DEEP_DETECTORS:
        registry.add(cls)


@hookimpl
def asid_register_adapters(registry):
    from astro_asid.instruments.fermi import FermiHealpixAdapter

    registry.add(FermiHealpixAdapter())
    try:
        from astro_asid.instruments.ctao import GammapyMapAdapter
    except ImportError:  # gammapy missing: plain images still work
        return
    registry.add(GammapyMapAdapter())

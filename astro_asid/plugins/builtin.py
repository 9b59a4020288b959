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
        from astro_asid.detection.deep import DEEP_DETECTORS, OTHER_DEEP_DETECTORS
    except ImportError:  # torch missing: classical detectors still work
        return
    for cls in DEEP_DETECTORS:
        registry.add(cls)
    from astro_asid.nn.io import shipped_model_path

    # detectors whose weights are not (yet) shipped are not offered
    from astro_asid.detection.optical import ASIDOpticalDetector

    for cls in OTHER_DEEP_DETECTORS + [ASIDOpticalDetector]:
        if shipped_model_path(cls.name).with_suffix(".json").exists():
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

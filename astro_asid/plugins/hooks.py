"""Hook specifications of astro_asid (pluggy project name ``"astro_asid"``)."""

import pluggy

__all__ = ["PROJECT_NAME", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "AsidHookSpecs"]

PROJECT_NAME = "astro_asid"
ENTRY_POINT_GROUP = "astro_asid.detectors"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class AsidHookSpecs:
    """The hooks a plugin module may implement."""

    @hookspec
    def asid_register_detectors(self, registry):
        """Register detector classes with ``registry.add(DetectorClass)``."""

    @hookspec
    def asid_register_adapters(self, registry):
        """Register instrument adapters with ``registry.add(adapter)``."""

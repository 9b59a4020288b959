"""Warning and exception classes of astro_asid."""

from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["ASIDWarning", "ASIDPluginWarning", "ASIDInputWarning", "PluginError",
           "WeightsError"]


class ASIDWarning(AstropyUserWarning):
    """Base class of the warnings emitted by astro_asid."""


class ASIDPluginWarning(ASIDWarning):
    """A detector plugin failed to import or to register; the rest still works."""


class ASIDInputWarning(ASIDWarning):
    """The input image was usable but something in it was changed or ignored."""


class PluginError(RuntimeError):
    """A detector plugin misbehaved (bad class, or output that breaks the schema)."""


class WeightsError(RuntimeError):
    """A model weights file is missing, corrupt, or does not match its model card."""

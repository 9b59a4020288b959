"""Configuration items (astropy config system): ``astro_asid.conf``."""

from astropy import config as _config

__all__ = ["Conf", "conf"]


class Conf(_config.ConfigNamespace):
    """Configuration parameters for `astro_asid`.

    Set them in ``~/.astropy/config/astro_asid.cfg`` or at run time, e.g.
    ``astro_asid.conf.disabled_plugins = ["mypkg"]``, or temporarily with
    ``with astro_asid.conf.set_temp("disabled_plugins", ["mypkg"]): ...``.
    """

    disabled_plugins = _config.ConfigItem(
        [], "Entry-point names (in the group 'astro_asid.detectors') of detector plugins "
            "that must not be loaded.", cfgtype="string_list")
    default_detector = _config.ConfigItem(
        "auto", "Detector used by find_sources when none is given; 'auto' picks the best "
                "registered detector for the instrument.")
    device = _config.ConfigItem(
        "auto", "Torch device for the deep detectors: 'auto' (CUDA when available), 'cpu' or "
                "'cuda'.")


conf = Conf()

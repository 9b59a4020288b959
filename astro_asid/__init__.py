"""astro_asid: deep-learning astronomical source finding (AutoSourceID and beyond).

The main entry point is `find_sources`::

    from astro_asid import find_sources
    cat = find_sources(image, wcs)
"""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("astro-asid")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0.dev0"

from astro_asid.config import conf  # noqa: E402
from astro_asid.core import SkyImage, as_sky_image  # noqa: E402
from astro_asid.find import find_sources  # noqa: E402
from astro_asid.plugins.manager import get_detector, list_detectors  # noqa: E402
from astro_asid.detection.starfinder import ASIDStarFinder  # noqa: E402
from astro_asid import catalog  # noqa: E402

__all__ = ["__version__", "conf", "SkyImage", "as_sky_image", "find_sources", "get_detector",
           "list_detectors", "ASIDStarFinder", "catalog"]

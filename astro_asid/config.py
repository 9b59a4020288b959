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
    lazy_fits_pixels = _config.ConfigItem(
        8192 * 8192, "Optical FITS images with more pixels than this are read section by "
                     "section, one block at a time, when dask is installed (so a mosaic "
                     "never needs to fit in memory); 0 reads every file whole.")
    auto_cluster_pixels = _config.ConfigItem(
        16384 * 16384, "Optical images with more pixels than this run on a local dask cluster "
                       "(one single-threaded worker per CPU) when find_sources is given no "
                       "scheduler or workers, dask.distributed is installed, the machine has "
                       "at least auto_cluster_min_cpus CPUs and the detector runs on the CPU; "
                       "0 disables it.")
    auto_cluster_min_cpus = _config.ConfigItem(
        4, "Fewest CPUs for the automatic local cluster (on 2 CPUs a 2-worker cluster is "
           "slower than one process with 2 torch threads: benchmarks/throughput.py).")
    patch_size = _config.ConfigItem(
        1024, "Core size (pixels) of the patches that find_sources cuts an image into when it "
              "runs a detector without blocks on a dask cluster or on an image larger than "
              "patch_pixels (CTAO maps, classical detectors); each patch owns the sources of "
              "its core.")
    patch_overlap = _config.ConfigItem(
        64, "Pixels added on each side of a patch's core (the context its detector sees) "
            "when the detector declares no halo_pixels.")
    patch_pixels = _config.ConfigItem(
        4096 * 4096, "Images with more pixels than this run in patches even with no "
                     "scheduler or workers (memory bounded by the patch); 0 never cuts an "
                     "image that runs in this process.")


conf = Conf()

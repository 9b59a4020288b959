"""The ``asid`` command line.

Subcommands: ``detectors``, ``find``, ``demo``, and, when their subpackages
are installed, ``simulate``, ``train``, ``evaluate`` and ``classify-4fgl``.
"""

import argparse
import importlib
import sys
import warnings

__all__ = ["main"]

# subcommands implemented in other subpackages: name -> (module, help)
# each module provides add_arguments(parser) and run(args) -> int
_EXTERNAL_COMMANDS = {
    "simulate": ("astro_asid.simulate.cli", "simulate data sets with truth tables"),
    "train": ("astro_asid.training.cli", "train a deep detector on simulated skies"),
    "evaluate": ("astro_asid.evaluate.cli", "score detectors on the Fermi-LAT data challenge"),
    "classify-4fgl": ("astro_asid.fermi_catalog.cli",
                      "classify 4FGL sources from spectra and light curves"),
}


def _cmd_detectors(args):
    from astro_asid.plugins.manager import get_registry, list_detectors

    table = list_detectors(instrument=args.instrument)
    table.pprint_all()
    regs = get_registry()
    for name, err in regs.failed.items():
        print(f"plugin {name!r} failed to load: {err}", file=sys.stderr)
    for name in regs.disabled:
        print(f"plugin {name!r} is disabled in astro_asid.conf", file=sys.stderr)
    return 0


def _parse_options(pairs):
    """``key=value`` strings -> dict, values parsed as Python literals where possible."""
    import ast

    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"asid: option {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _cmd_find(args):
    from astro_asid.scale.scheduler import check_scheduler, is_serial, open_client

    if len(args.images) > 1 and (args.output or args.regions or args.plot):
        for path in (args.output, args.regions, args.plot):
            if path and "{stem}" not in path:
                raise SystemExit("asid find: with several images, output names must contain "
                                 "'{stem}' (e.g. -o '{stem}.ecsv')")
    try:
        plan = check_scheduler(args.scheduler, args.workers)
    except (ImportError, ValueError, TypeError) as exc:
        raise SystemExit(f"asid find: {exc}") from None
    if is_serial(plan):
        return _find_files(args, scheduler=None)
    # one cluster (started here, or the one at --scheduler) for all the files
    with open_client(plan) as client:
        return _find_files(args, scheduler=client)


def _find_files(args, scheduler=None):
    from tqdm import tqdm

    from astro_asid.catalog import to_regions, write_catalog
    from astro_asid.find import find_sources
    from astro_asid.scale.scheduler import SchedulerError
    from astro_asid.utils.exceptions import WeightsError
    from astro_asid.visualization import plot_catalog

    options = _parse_options(args.option)
    status = 0
    for path in tqdm(args.images, disable=len(args.images) < 2 or args.quiet, unit="file"):
        from pathlib import Path

        stem = Path(path).name.split(".")[0]
        try:
            cat = find_sources(path, detector=args.detector, instrument=args.instrument,
                               hdu=args.hdu, characterize=args.characterize,
                               scheduler=scheduler, progress=args.progress and not args.quiet,
                               **options)
        except (ValueError, TypeError, OSError, WeightsError, SchedulerError) as exc:
            print(f"asid find: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.output:
            write_catalog(cat, args.output.format(stem=stem), overwrite=True)
        if args.regions:
            to_regions(cat, args.regions.format(stem=stem), overwrite=True)
        if args.plot:
            from astro_asid.core import as_sky_image

            plot_catalog(as_sky_image(path, hdu=args.hdu), cat,
                         filename=args.plot.format(stem=stem))
        if not args.output and not args.quiet:
            print(f"# {path}: {len(cat)} sources (detector {cat.meta['detector']})")
            cols = ["id", "x_centroid", "y_centroid", "sky_centroid", "flux", "score"]
            cat[cols].pprint(max_lines=-1, max_width=-1)
    return status


def _cmd_demo(args):
    from astro_asid.demo import run_demo

    return run_demo(plot=args.plot, seed=args.seed, detector=args.detector)


def build_parser():
    """The argparse parser of ``asid`` (external subcommands included when importable)."""
    from astro_asid import __version__

    parser = argparse.ArgumentParser(
        prog="asid", description="astro_asid: find astronomical sources with deep learning")
    parser.add_argument("--version", action="version", version=f"astro_asid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("detectors", help="list registered detectors and their origin")
    p.add_argument("--instrument", help="only detectors for this instrument")
    p.set_defaults(func=_cmd_detectors)

    p = sub.add_parser("find", help="find sources in FITS images")
    p.add_argument("images", nargs="+", help="FITS image(s)")
    p.add_argument("-d", "--detector", help="detector name (default: best for the instrument)")
    p.add_argument("-i", "--instrument", help="instrument (fermi-lat, ctao, optical...)")
    p.add_argument("--hdu", help="HDU to read (default: first image HDU)")
    p.add_argument("-o", "--output", help="catalog file (.ecsv or .fits); "
                                          "'{stem}' is replaced by the image name")
    p.add_argument("--regions", help="ds9 region file to write")
    p.add_argument("--plot", help="PNG overlay to write")
    p.add_argument("--option", "-O", action="append", metavar="KEY=VALUE",
                   help="detector option, repeatable (e.g. -O nsigma=4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no table on stdout")
    p.add_argument("--workers", type=int, metavar="N",
                   help="run the blocks, all-sky tiles or patches of each image on a local "
                        "dask cluster of N processes (needs astro-asid[scale])")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="'serial' (default), 'processes' (a local dask cluster, see "
                        "--workers) or the address of a running dask scheduler "
                        "(tcp://host:port)")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar over the blocks, tiles or patches of each image")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-characterize", dest="characterize", action="store_const", const=False,
                   default=None, help="skip the characterisation (positions, fluxes, classes)")
    g.add_argument("--characterizer", dest="characterize", metavar="PATH",
                   help="characteriser weights to use instead of the shipped one")
    p.set_defaults(func=_cmd_find)

    p = sub.add_parser("demo", help="simulate an image with known sources, find them, score")
    p.add_argument("--plot", default="asid_demo.png", help="PNG overlay (default asid_demo.png; "
                                                          "'' for none)")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("-d", "--detector", help="detector to demonstrate")
    p.set_defaults(func=_cmd_demo)

    for name, (modname, helptext) in _EXTERNAL_COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
            p = argparse.ArgumentParser(prog=f"asid {name}", add_help=False)
            mod.add_arguments(p)  # may import heavier modules; fail here, not half-way below
        except ImportError:
            continue  # that subpackage is not available in this installation
        p = sub.add_parser(name, help=helptext)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv=None):
    """Entry point of the ``asid`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    warnings.simplefilter("default")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``asid simulate``: write simulated Fermi-LAT patches (or a full-sky map) with truth tables."""

import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Add the ``asid simulate`` options to an `argparse.ArgumentParser`."""
    parser.add_argument("output", help="output directory")
    parser.add_argument("-n", "--n-patches", type=int, default=1000,
                        help="number of 10x10 deg patches (default 1000)")
    parser.add_argument("--background", default="b1", choices=["b1", "b2", "b3"],
                        help="interstellar-emission model (default b1, the data challenge's)")
    parser.add_argument("--background-scale", type=float, default=1.0,
                        help="factor on the background only (default 1)")
    parser.add_argument("--exposure-scale", type=float, default=None,
                        help="exposure relative to the challenge's 9.5 years (default 1)")
    parser.add_argument("--years", type=float, default=None,
                        help="mission length in years (alternative to --exposure-scale)")
    parser.add_argument("--luminosity", default="flat", choices=["flat", "powerlaw"],
                        help="luminosity function below the 4FGL threshold (default flat)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="patches per batch")
    parser.add_argument("--save-expected", action="store_true",
                        help="also store expected counts and background")
    parser.add_argument("--allsky", action="store_true",
                        help="write one full-sky HEALPix map (allsky.fits + truth.ecsv) instead")
    parser.add_argument("--nside", type=int, default=256, help="HEALPix nside with --allsky")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _exposure_scale(args):
    if args.years is not None and args.exposure_scale is not None:
        raise SystemExit("asid simulate: give --years or --exposure-scale, not both")
    if args.years is not None:
        from .instrument import CHALLENGE_YEARS
        return args.years / CHALLENGE_YEARS
    return 1.0 if args.exposure_scale is None else args.exposure_scale


def run(args):
    """Run ``asid simulate`` with parsed arguments; returns the exit status."""
    from pathlib import Path
    scale = _exposure_scale(args)
    try:
        if args.allsky:
            import healpy as hp
            from .fermi import FermiSkySimulator
            out = Path(args.output)
            out.mkdir(parents=True, exist_ok=True)
            fits_path = out / "allsky.fits"
            if fits_path.exists() and not args.overwrite:
                raise FileExistsError(f"{fits_path} exists (use --overwrite)")
            sim = FermiSkySimulator(background=args.background, exposure_scale=scale,
                                    luminosity=args.luminosity, seed=args.seed,
                                    background_scale=args.background_scale)
            counts, truth = sim.sample_allsky(nside=args.nside)
            hp.write_map(str(fits_path), list(counts), coord="G", overwrite=True,
                         column_names=[f"BAND{i}" for i in range(len(counts))],
                         extra_header=[("EBANDS", "0.5,1,2,7,20,200", "band edges, GeV")])
            truth.write(out / "truth.ecsv", overwrite=True)
            print(f"wrote {fits_path} and {out / 'truth.ecsv'} ({len(truth)} sources)")
            return 0
        from .io import write_dataset
        path = write_dataset(args.output, args.n_patches, background=args.background,
                             exposure_scale=scale, luminosity=args.luminosity, seed=args.seed,
                             background_scale=args.background_scale,
                             batch_size=args.batch_size, save_expected=args.save_expected,
                             overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"asid simulate: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.n_patches} patches to {path}")
    return 0


def main(argv=None):
    """``python -m astro_asid.simulate``."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m astro_asid.simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))

"""``asid train``: the command-line front end of `astro_asid.training.fermi.train_detector`.

The lead wires it into ``astro_asid.cli`` as a sub-command::

    from astro_asid.training import cli as train_cli
    p = subparsers.add_parser("train", help=train_cli.HELP)
    train_cli.add_arguments(p)
    p.set_defaults(func=train_cli.run)
"""

import argparse

__all__ = ["HELP", "add_arguments", "run", "main"]

HELP = "train a deep detector on simulated data (writes weights + model cards)"


def add_arguments(parser):
    """Add the ``asid train`` options to an `argparse.ArgumentParser`."""
    from astro_asid.training.fermi import CTAO_DETECTOR_NAMES, DETECTOR_NAMES

    parser.add_argument("detector", choices=DETECTOR_NAMES + CTAO_DETECTOR_NAMES
                        + ("asid-optical", "characterizer"),
                        help="detector to train (the four Fermi-LAT ones share one "
                             "multi-head U-Net; asid-ctao needs --instrument ctao), or "
                             "'characterizer' (astro_asid.characterize.train)")
    parser.add_argument("--instrument", default="fermi-lat",
                        choices=["fermi-lat", "ctao", "optical"])
    parser.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default 32 (detectors), 512 (characterizer)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (AdamW); default 2e-3 (detectors), "
                             "3e-3 (characterizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="asid-training", help="output directory")
    parser.add_argument("--background", default="b1",
                        help="interstellar-emission model of the simulator")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--simulator", default="auto", choices=["auto", "fermi", "toy", "toy-b1"])
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=None,
                        help="simulated training patches (default 512; asid-optical: fields, "
                             "default 3000)")
    parser.add_argument("--n-val", type=int, default=192)
    parser.add_argument("--n-calibration", type=int, default=None,
                        help="calibration patches (default 384; asid-optical: fields, "
                             "default 200)")
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that simulate the pool and make batches (0 = none; "
                             "use ~the number of CPU cores with a GPU)")
    parser.add_argument("--spectral-tilt", type=float, default=0.0,
                        help="spectral-tilt augmentation of the sources (0 = off)")
    parser.add_argument("--init-weights", default=None,
                        help="start from these weights (fine-tuning)")
    parser.add_argument("--export", nargs="+", default=None,
                        help="detector names to write (default: all four)")
    group = parser.add_argument_group("asid-optical options")
    group.add_argument("--trail-probability", type=float, default=0.3,
                       help="chance of a satellite trail in a training field")
    group.add_argument("--cosmic-ray-density", type=float, nargs=2, default=(1e-4, 1e-3),
                       metavar=("MIN", "MAX"),
                       help="cosmic rays per pixel in training fields (log-uniform range)")
    group.add_argument("--artefact-weight", type=float, default=0.0,
                       help="extra loss weight on artefact pixels (cosmic rays, trails, "
                            "bleed streaks)")
    group.add_argument("--fwhm-range", type=float, nargs=2, default=(1.8, 5.0),
                       metavar=("LO", "HI"),
                       help="PSF FWHM range of the simulated fields in pixels (log-uniform; "
                            "down to 1 for undersampled data)")
    group.add_argument("--psf-variation", type=float, default=0.0, metavar="V",
                       help="PSF variation within a field: FWHM within +-V of the field's, "
                            "ellipticity up to V (0-0.5; 0 = one round PSF)")
    group.add_argument("--bleed-probability", type=float, default=0.0, metavar="P",
                       help="fraction of simulated fields whose saturated stars bleed "
                            "along the columns")
    group.add_argument("--remove-trails", action="store_true",
                       help="train on S/N images with the satellite trails found folded into "
                            "the background, as the detector prepares them at run time")
    group = parser.add_argument_group("characterizer options")
    from astro_asid.characterize.train import add_arguments as add_char_arguments
    add_char_arguments(group)
    return parser


def run(args):
    """Run ``asid train`` with parsed arguments; returns the exit status."""
    import shlex
    import sys

    from astro_asid.training.fermi import train_detector

    command = "asid train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if sys.argv[1:2] == ["train"]:
        command = "asid " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.detector == "asid-optical":
        from astro_asid.training.optical import train_optical_detector
        train_optical_detector(args.out, n_fields=args.pool_size or 3000,
                               n_calibration=args.n_calibration or 200, steps=args.steps,
                               batch_size=args.batch_size or 16, lr=args.lr or 2e-3,
                               base_width=args.base_width, depth=args.depth, seed=args.seed,
                               workers=max(1, args.workers), device=args.device,
                               threads=args.threads, command=command,
                               trail_probability=args.trail_probability,
                               cosmic_ray_density=args.cosmic_ray_density,
                               artefact_weight=args.artefact_weight,
                               init_weights=args.init_weights,
                               fwhm_range=args.fwhm_range, psf_variation=args.psf_variation,
                               bleed_probability=args.bleed_probability,
                               remove_trails=args.remove_trails)
        return 0
    if args.detector == "characterizer":
        from astro_asid.characterize.train import train_characterizer
        train_characterizer(args.instrument, n_patches=args.n_patches,
                            n_calibration=args.n_calibration_patches, n_test=args.n_test,
                            members=args.members, epochs=args.epochs,
                            batch_size=args.batch_size or 512, lr=args.lr or 3e-3,
                            seed=args.seed, width=args.width, hidden=args.hidden, out=args.out,
                            cache=args.cache, threads=args.threads, workers=args.sim_workers,
                            command=command)
        return 0
    train_detector(args.detector, instrument=args.instrument, steps=args.steps,
                   batch_size=args.batch_size or 32, lr=args.lr or 2e-3, seed=args.seed,
                   out=args.out,
                   background=args.background, device=args.device, simulator=args.simulator,
                   base_width=args.base_width, depth=args.depth,
                   pool_size=args.pool_size or 512, n_val=args.n_val,
                   n_calibration=args.n_calibration or 384, export=args.export,
                   threads=args.threads, val_every=args.val_every,
                   init_weights=args.init_weights, command=command,
                   spectral_tilt=args.spectral_tilt, workers=args.workers)
    return 0


def main(argv=None):
    """Stand-alone entry point: ``python -m astro_asid.training.cli``."""
    parser = argparse.ArgumentParser(prog="asid train", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``asid classify-4fgl`` subcommand.

::

    asid classify-4fgl --release DR2 --task agn-psr -o candidates.ecsv --plots plots/

classifies the task's candidates (unassociated sources, or BCUs for
``bll-fsrq``; for ``msp-young`` the unassociated sources that the ``agn-psr``
model calls pulsars) with a shipped or saved model and writes them with their class
probabilities and spreads. `add_arguments` fills an argparse (sub)parser and
`run` executes it, so the main ``asid`` command can mount it.
"""

import argparse
import sys

import numpy as np

__all__ = ["add_arguments", "run", "main"]

_COPY_COLUMNS = ("CLASS1", "GLON", "GLAT", "Signif_Avg", "Variability_Index", "LP_SigCurv",
                 "PL_Index")


def add_arguments(parser):
    """Add the ``classify-4fgl`` options to an `argparse.ArgumentParser`."""
    from astro_asid.fermi_catalog.classifier import PRETRAINED
    from astro_asid.fermi_catalog.io import RELEASES

    parser.add_argument("--release", default="DR4",
                        help=f"4FGL release ({', '.join(RELEASES)}) or path of a gll_psc_v*.fit "
                             "file (default: DR4)")
    parser.add_argument("--task", default="agn-psr", choices=list(PRETRAINED),
                        help="classification task (default: agn-psr)")
    parser.add_argument("-o", "--output", default=None,
                        help="output table (.ecsv, .fits, .csv...); default: print a summary only")
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="write the latitude, variability-curvature and uncertainty plots here")
    parser.add_argument("--model", default=None,
                        help="saved model (path without suffix) instead of the shipped one")
    parser.add_argument("--sources", default="candidates", choices=("candidates", "all"),
                        help="classify the task's candidates (unassociated sources, or BCUs "
                             "for bll-fsrq; default) or every source")
    parser.add_argument("--psr-min", type=float, default=0.5, metavar="P",
                        help="msp-young only: classify the candidates whose PSR probability "
                             "from the shipped agn-psr model is at least P (default 0.5; 0 "
                             "keeps all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def run(args):
    """Execute ``asid classify-4fgl``; returns the exit status."""
    from astro_asid.fermi_catalog.classifier import CatalogClassifier
    from astro_asid.fermi_catalog.features import candidate_mask, task_labels
    from astro_asid.fermi_catalog.io import load_4fgl

    try:
        table = load_4fgl(args.release)
        clf = (CatalogClassifier.load(args.model) if args.model
               else CatalogClassifier.pretrained(args.task))
    except (FileNotFoundError, ValueError) as exc:
        print(f"asid classify-4fgl: error: {exc}", file=sys.stderr)
        return 2
    if clf.task != args.task:
        print(f"asid classify-4fgl: error: the model was trained for task {clf.task!r}, "
              f"not {args.task!r}", file=sys.stderr)
        return 2
    rows = candidate_mask(table, args.task) if args.sources == "candidates" \
        else np.ones(len(table), bool)
    try:
        psr_prob = None
        if args.task == "msp-young" and args.sources == "candidates":
            # Young vs MSP only makes sense for pulsars: pre-select pulsar-like
            # unassociated sources with the AGN/PSR model.
            psr_prob = CatalogClassifier.pretrained("agn-psr").predict_proba(table[rows])[0][:, 1]
            keep = psr_prob >= args.psr_min
            rows = np.flatnonzero(rows)[keep]
            psr_prob = psr_prob[keep]
        sel = table[rows]
        result = clf.predict(sel)
    except ValueError as exc:  # e.g. a model needing more bands or years than the release
        print(f"asid classify-4fgl: error: {exc}", file=sys.stderr)
        return 2
    if psr_prob is not None:
        result["psr_prob"] = psr_prob.astype(np.float32)
    for name in _COPY_COLUMNS:
        if name in sel.colnames:
            result[name] = sel[name]
    result.meta["release"] = table.meta["release"]
    result.meta["selection"] = args.sources

    names = result.meta["class_names"]
    counts = {n: int((result["class_label"] == n).sum()) for n in names}
    confident = {n: int(((result["class_label"] == n)
                         & (result["class_prob"].max(axis=1) > 0.9)).sum()) for n in names}
    print(f"4FGL-{table.meta['release']} {args.task}: {len(result)} sources classified; "
          + ", ".join(f"{n}: {counts[n]} ({confident[n]} with p > 0.9)" for n in names))

    if args.output:
        try:
            result.write(args.output, overwrite=args.overwrite)
        except OSError as exc:
            print(f"asid classify-4fgl: error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.output}")
    if args.plots:
        from astro_asid.fermi_catalog.plots import save_plots

        try:
            labels = task_labels(table, args.task)
            labelled, labelled_y = table[labels >= 0], labels[labels >= 0]
        except ValueError:  # the release does not label the task's classes
            labelled = labelled_y = None
        for path in save_plots(args.plots, sel, result, labelled, labelled_y):
            print(f"wrote {path}")
    return 0


def main(argv=None):
    """Stand-alone entry point (``python -m astro_asid.fermi_catalog.cli``)."""
    parser = argparse.ArgumentParser(prog="asid classify-4fgl",
                                     description="Classify 4FGL sources with uncertainties.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

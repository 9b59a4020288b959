"""Choosing and running a characteriser inside `~astro_asid.find_sources`."""

from pathlib import Path

from astro_asid.characterize.model import Characterizer, shipped_characterizer

__all__ = ["resolve_characterizer", "characterize_candidates", "characterizer_meta",
           "CHARACTERIZER_META_KEYS"]

#: Keys a characteriser sets in the candidates' ``meta`` that belong in the catalog's.
CHARACTERIZER_META_KEYS = ("characterizer", "characterizer_skipped", "flux_band",
                           "flux_exposure", "flux_energy_range")

# detector columns that the characteriser replaces; the detector's values are kept
_RENAMED = {"flux": "flux_detector", "flux_err": "flux_err_detector",
            "x_err": "x_err_detector", "y_err": "y_err_detector"}


def resolve_characterizer(option, instrument):
    """The `Characterizer` that ``option`` asks for, or None.

    Parameters
    ----------
    option : None, bool, str, path or `Characterizer`
        None (the default): the characteriser shipped for ``instrument`` when
        there is one; True: the same, but its absence is an error; False: none;
        a path: a characteriser's weights; an instance: itself.
    instrument : str or None

    Raises
    ------
    ValueError
        ``True`` was given and no characteriser ships for ``instrument``.
    TypeError
        ``option`` is of another type.
    """
    if option is False:
        return None
    if option is None or option is True:
        model = shipped_characterizer(instrument)
        if model is None and option is True:
            raise ValueError(f"characterize=True, but astro_asid ships no characteriser for "
                             f"instrument {instrument!r}; pass a Characterizer or a weights "
                             "path, or characterize=False")
        return model
    if isinstance(option, Characterizer):
        return option
    if isinstance(option, (str, Path)):
        return Characterizer.load(option)
    raise TypeError(f"characterize must be None, a bool, a weights path or a Characterizer, "
                    f"not {type(option).__name__}")


def characterize_candidates(option, image, candidates, detector=None, model=None):
    """Run the characteriser ``option`` selects on ``candidates`` of ``image``.

    ``detector`` names the detector that found the candidates (see
    `Characterizer.characterize`); ``model`` is the characteriser already
    resolved from ``option`` (so that tiles of one map resolve it once). Returns the candidates unchanged when no
    characteriser applies. An
    explicitly requested characteriser that cannot run on the image raises
    `ValueError`; the default one is skipped and
    ``meta["characterizer_skipped"]`` says why (the columns stay masked).
    """
    if model is None:
        model = resolve_characterizer(option, image.instrument)
    if model is None:
        return candidates
    problems = model.check_image(image)
    if problems:
        msg = f"characteriser {model.card.get('name')!r}: " + "; ".join(problems)
        if option is None:
            # the default is best effort: maps binned otherwise are common (e.g. CTAO
            # datasets); the catalog's meta says why the columns are masked
            candidates.meta["characterizer_skipped"] = msg
            return candidates
        raise ValueError(msg)
    if len(candidates) == 0:
        return candidates
    for old, new in _RENAMED.items():
        if old in candidates.colnames:
            candidates.rename_column(old, new)
    return model.characterize(image, candidates, detector=detector)


def characterizer_meta(candidates):
    """The `CHARACTERIZER_META_KEYS` entries of ``candidates.meta`` that are set."""
    return {k: candidates.meta[k] for k in CHARACTERIZER_META_KEYS
            if candidates.meta.get(k) is not None}

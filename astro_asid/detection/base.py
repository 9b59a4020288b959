"""The `Detector` base class that built-in and third-party detectors subclass."""

import abc
import inspect

__all__ = ["Detector"]


class Detector(abc.ABC):
    """Base class of every source detector.

    Subclasses set the class attributes and implement `detect`. Options go in
    ``__init__`` (gammapy estimator style: configuration in the constructor,
    data in the call).

    Attributes
    ----------
    name : str
        Unique registry name, e.g. ``"peaks"``.
    description : str
        One line for ``asid detectors``.
    instruments : tuple of str
        Instruments the detector was made for (``"any"`` for all).
    needs_counts : bool
        True when the detector models Poisson counts, so negative input is an
        error rather than a silent wrong answer.
    """

    name = None
    description = ""
    instruments = ("any",)
    needs_counts = False

    def __init__(self, **options):
        if options:
            raise TypeError(f"detector {self.name!r} got unknown option(s) {sorted(options)}")

    @abc.abstractmethod
    def detect(self, image):
        """Find source candidates.

        Parameters
        ----------
        image : `~astro_asid.SkyImage`
            The normalised input.

        Returns
        -------
        `~astropy.table.QTable`
            At least ``x_centroid``, ``y_centroid`` (pixels, 0-based, in the
            image's frame) and ``score`` (0..1, higher is more confident).
            Optional: ``x_err``, ``y_err`` (1-sigma, pixels), ``flux``,
            ``flux_err`` and any extra column.
        """

    @property
    def options(self):
        """Options of this instance, as given to ``__init__`` (for catalog metadata)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters
                if k not in ("self", "options") and hasattr(self, k)}

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

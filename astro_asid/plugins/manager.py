"""Plugin loading and the detector/adapter registries.

Built-in detectors are registered first, through the same hooks as
third-party plugins. Then every module of the entry-point group
``astro_asid.detectors`` is loaded one at a time: a plugin that fails to
import or to register is reported with an `ASIDPluginWarning` naming it and
leaves the registry exactly as it was before that plugin was tried.
"""

import importlib
import inspect
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from astro_asid.config import conf
from astro_asid.plugins.hooks import ENTRY_POINT_GROUP, PROJECT_NAME, AsidHookSpecs
from astro_asid.utils.exceptions import ASIDPluginWarning, PluginError

__all__ = ["DetectorRegistry", "AdapterRegistry", "PluginRegistries", "get_registry",
           "reload", "list_detectors", "get_detector", "instantiate_detector",
           "BUILTIN_PLUGIN_MODULES"]

#: Modules holding the built-in hook implementations, registered before any plugin.
BUILTIN_PLUGIN_MODULES = ("astro_asid.plugins.builtin",)


@dataclass
class _Entry:
    obj: object
    origin: str


class _Registry:
    """Name -> object mapping that remembers which package registered what."""

    kind = "object"

    def __init__(self):
        self._entries = {}
        self._origin = "astro_asid"

    def _check(self, obj):
        raise NotImplementedError

    def add(self, obj):
        """Register ``obj`` under its ``name`` attribute.

        Raises
        ------
        PluginError
            Invalid object or a name that is already taken.
        """
        self._check(obj)
        name = obj.name
        if name in self._entries:
            raise PluginError(f"{self.kind} name {name!r} from {self._origin} is already "
                              f"registered by {self._entries[name].origin}")
        self._entries[name] = _Entry(obj, self._origin)
        return obj

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def names(self):
        """Registered names, in registration order."""
        return list(self._entries)

    def origin(self, name):
        """Package (distribution) that registered ``name``."""
        return self._entries[name].origin

    def get(self, name):
        """The registered object, or `ValueError` listing the known names."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._entries)}") \
                from None


class DetectorRegistry(_Registry):
    """Registry of `~astro_asid.detection.Detector` subclasses."""

    kind = "detector"

    def _check(self, cls):
        from astro_asid.detection.base import Detector

        if not (inspect.isclass(cls) and issubclass(cls, Detector)):
            raise PluginError(f"{self._origin}: {cls!r} is not a subclass of "
                              "astro_asid.detection.Detector")
        if not isinstance(cls.name, str) or not cls.name:
            raise PluginError(f"{self._origin}: detector class {cls.__name__} has no string "
                              "'name' attribute")
        if inspect.isabstract(cls):
            raise PluginError(f"{self._origin}: detector {cls.name!r} does not implement "
                              f"{sorted(cls.__abstractmethods__)}")


class AdapterRegistry(_Registry):
    """Registry of instrument adapters.

    An adapter has a ``name``, ``accepts(obj) -> bool`` telling whether it
    handles an input object, and ``find_sources(obj, **kwargs)`` returning a
    catalog.
    """

    kind = "adapter"

    def _check(self, adapter):
        for attr in ("name", "accepts", "find_sources"):
            if not hasattr(adapter, attr):
                raise PluginError(f"{self._origin}: adapter {adapter!r} lacks {attr!r}")


class PluginRegistries:
    """The loaded detectors and adapters, plus what happened while loading."""

    def __init__(self):
        self.detectors = DetectorRegistry()
        self.adapters = AdapterRegistry()
        self.plugins = {}   # plugin name -> origin distribution
        self.failed = {}    # plugin name -> error message
        self.disabled = []

    def _register_from(self, module, name, origin):
        """Run one module's hooks on scratch registries and keep the result only on success."""
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(AsidHookSpecs)
        pm.register(module, name=name)
        staged = (_Stage(self.detectors, origin), _Stage(self.adapters, origin))
        for hook, stage in zip((pm.hook.asid_register_detectors, pm.hook.asid_register_adapters),
                               staged):
            hook(registry=stage)
        for stage in staged:
            stage.commit()
        self.plugins[name] = origin


class _Stage:
    """Collects a plugin's registrations; commits them only if all succeed."""

    def __init__(self, target, origin):
        self._target = target
        self._origin = origin
        self._added = []

    def add(self, obj):
        saved = self._target._origin
        self._target._origin = self._origin
        try:
            self._target._check(obj)
        finally:
            self._target._origin = saved
        taken = [o.name for o in self._added]
        if obj.name in self._target or obj.name in taken:
            owner = (self._target.origin(obj.name) if obj.name in self._target
                     else self._origin)
            raise PluginError(f"{self._target.kind} name {obj.name!r} from {self._origin} is "
                              f"already registered by {owner}")
        self._added.append(obj)
        return obj

    def commit(self):
        saved = self._target._origin
        self._target._origin = self._origin
        try:
            for obj in self._added:
                self._target.add(obj)
        finally:
            self._target._origin = saved


def _load():
    regs = PluginRegistries()
    for modname in BUILTIN_PLUGIN_MODULES:
        # built-ins must work: let their errors surface
        regs._register_from(importlib.import_module(modname), modname, "astro_asid")

    disabled = set(conf.disabled_plugins or [])
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        origin = ep.dist.name if getattr(ep, "dist", None) is not None else ep.value
        if ep.name in disabled or origin in disabled:
            regs.disabled.append(ep.name)
            continue
        try:
            module = ep.load()
            regs._register_from(module, ep.name, origin)
        except Exception as exc:  # a broken plugin must never break the host
            msg = f"{type(exc).__name__}: {exc}"
            regs.failed[ep.name] = msg
            warnings.warn(f"detector plugin {ep.name!r} ({origin}, {ep.value}) was not loaded: "
                          f"{msg}", ASIDPluginWarning, stacklevel=3)
    return regs


_REGISTRIES = None


def get_registry():
    """The loaded `PluginRegistries` (plugins are loaded on first use)."""
    global _REGISTRIES
    if _REGISTRIES is None:
        _REGISTRIES = _load()
    return _REGISTRIES


def reload():
    """Forget loaded plugins and load them again (after installing one, or changing config)."""
    global _REGISTRIES
    _REGISTRIES = None
    return get_registry()


def list_detectors(instrument=None):
    """Registered detectors.

    Parameters
    ----------
    instrument : str, optional
        Only detectors made for this instrument (or for ``"any"``).

    Returns
    -------
    `~astropy.table.Table`
        Columns ``name``, ``description``, ``instruments``, ``origin``.
    """
    from astropy.table import Table

    reg = get_registry().detectors
    rows = []
    for name in reg.names():
        cls = reg.get(name)
        inst = tuple(cls.instruments)
        if instrument is not None and instrument not in inst and "any" not in inst:
            continue
        rows.append((name, cls.description, ", ".join(inst), reg.origin(name)))
    return Table(rows=rows or None, names=("name", "description", "instruments", "origin"),
                 dtype=(str, str, str, str))


def get_detector(name, **options):
    """An instance of the registered detector ``name`` with ``options``.

    Raises
    ------
    ValueError
        Unknown detector name (the message lists the known ones).
    TypeError
        Options the detector does not accept.
    """
    if not isinstance(name, str):
        raise TypeError(f"detector must be a name (str) or a Detector instance, not "
                        f"{type(name).__name__}")
    cls = get_registry().detectors.get(name)
    return instantiate_detector(cls, options)


def instantiate_detector(cls, options):
    """``cls(**options)`` with a `TypeError` that lists the accepted options."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = [k for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise TypeError(f"detector {cls.name!r} got unknown option(s) {unknown}; "
                        f"it accepts {accepted}")
    return cls(**options)

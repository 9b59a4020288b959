"""The pluggy detector registry with real, pip-installed third-party plugin packages."""

import importlib
import subprocess
import sys
import warnings
from importlib.metadata import distributions
from pathlib import Path

import numpy as np
import pytest
from astropy.table import QTable

import astro_asid
from astro_asid.detection import Detector
from astro_asid.plugins import DetectorRegistry, get_registry, hookimpl, reload
from astro_asid.utils.exceptions import ASIDPluginWarning, PluginError

from helpers import make_wcs

PKGS = Path(__file__).parent / "plugin_pkgs"


def _pip_install_to(target, pkg):
    """A real pip install of a plugin package into a private folder (no global side effects)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(pkg)],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A folder with both test plugin distributions installed by pip."""
    target = tmp_path_factory.mktemp("site")
    for name in ("asid_example_plugin", "asid_broken_plugin"):
        _pip_install_to(target, PKGS / name)
    return target


@pytest.fixture
def with_plugins(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()
    yield plugin_site
    monkeypatch.undo()
    for mod in [m for m in sys.modules if m.startswith(("asid_example_plugin", "asid_broken"))]:
        del sys.modules[mod]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ASIDPluginWarning)
        reload()


def _installed_globally(dist_name):
    return any(d.metadata["Name"] == dist_name for d in distributions())


def test_builtins_registered_first():
    names = get_registry().detectors.names()
    for name in ("peaks", "dao", "log", "tsmap"):
        assert name in names
        assert get_registry().detectors.origin(name) == "astro_asid"
    listing = astro_asid.list_detectors()
    assert {"name", "description", "instruments", "origin"} <= set(listing.colnames)


def test_third_party_plugin_discovered_and_broken_ones_only_warn(with_plugins):
    with pytest.warns(ASIDPluginWarning) as record:
        regs = reload()
    messages = " ".join(str(w.message) for w in record)
    assert "broken_import" in messages and "a_module_that_does_not_exist" in messages
    assert "broken_register" in messages and "not-a-detector" in messages.replace(
        "NotADetector", "not-a-detector")
    # the good plugin works, its origin is its distribution
    assert "brightest" in regs.detectors
    assert regs.detectors.origin("brightest") == "asid-example-plugin"
    # a plugin that failed half-way leaves nothing behind
    assert "half-good" not in regs.detectors
    # built-ins untouched
    assert "peaks" in regs.detectors and "tsmap" in regs.detectors
    assert set(regs.failed) == {"broken_import", "broken_register"}


def test_plugin_used_by_find_sources(with_plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ASIDPluginWarning)
        reload()
    data = np.zeros((32, 32))
    data[5, 7] = 10
    data[20, 25] = 5
    cat = astro_asid.find_sources(data, make_wcs(shape=(32, 32)), detector="brightest", n=2)
    assert len(cat) == 2
    assert (float(cat["x_centroid"][0].value), float(cat["y_centroid"][0].value)) == (7, 5)
    assert cat.meta["detector_origin"] == "asid-example-plugin"


def test_disable_list(with_plugins):
    with astro_asid.conf.set_temp("disabled_plugins", ["brightest", "broken_import",
                                                       "broken_register"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ASIDPluginWarning)  # disabled: nothing to warn
            regs = reload()
    assert "brightest" not in regs.detectors
    assert set(regs.disabled) == {"brightest", "broken_import", "broken_register"}


@pytest.mark.skipif(not _installed_globally("asid-example-plugin"),
                    reason="asid-example-plugin is pip-installed by the README test command")
def test_globally_installed_example_plugin():
    regs = reload()
    assert regs.detectors.origin("brightest") == "asid-example-plugin"


def test_registry_validation():
    reg = DetectorRegistry()

    class NoName(Detector):
        def detect(self, image):
            return None

    class Abstract(Detector):
        name = "abstract"

    class Good(Detector):
        name = "good"

        def detect(self, image):
            return None

    with pytest.raises(PluginError, match="no string 'name'"):
        reg.add(NoName)
    with pytest.raises(PluginError, match="does not implement"):
        reg.add(Abstract)
    with pytest.raises(PluginError, match="not a subclass"):
        reg.add(object)
    reg.add(Good)
    with pytest.raises(PluginError, match="already registered"):
        reg.add(Good)


def test_unknown_detector_name():
    with pytest.raises(ValueError, match="unknown detector 'nope'.*peaks"):
        astro_asid.get_detector("nope")
    with pytest.raises(TypeError, match="unknown option"):
        astro_asid.get_detector("peaks", not_an_option=1)


def test_hookimpl_marker_project_name():
    @hookimpl
    def asid_register_detectors(registry):
        pass

    assert hasattr(asid_register_detectors, "astro_asid_impl")

# Sphinx configuration for astro_asid (sphinx-astropy defaults).
import datetime
import os
import sys

from sphinx_astropy.conf.v2 import *  # noqa: F401,F403
from sphinx_astropy.conf.v2 import exclude_patterns

sys.path.insert(0, os.path.abspath(".."))

import astro_asid  # noqa: E402

project = "astro_asid"
author = "astro_asid developers"
copyright = f"{datetime.datetime.now().year}, {author}"
version = astro_asid.__version__
release = astro_asid.__version__

# The build machines have no internet access: no inventories to fetch.
intersphinx_mapping = {}

exclude_patterns = list(exclude_patterns) + ["_build"]
html_title = f"{project} v{release}"
html_theme_options = {
    "github_url": "https://github.com/astro-asid/astro_asid",
    "use_edit_page_button": False,
}
html_static_path = []
numpydoc_show_class_members = False
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
suppress_warnings = ["ref.citation"]

"""Sphinx configuration: the API reference (numpydoc docstrings) and the guides in this folder.

Build with ``bash scripts/build_docs.sh`` (warnings are errors). Nothing is fetched from the
network: no intersphinx, the default theme.
"""

from __future__ import annotations

import medkern

project = "medkern"
author = "medkern maintainers"
copyright = "medkern maintainers"
version = release = medkern.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# the figure and validation scripts that live beside the guides are not pages
exclude_patterns = ["_build", "**/__pycache__"]

# autodoc: signatures as written, members in source order, no import-time side effects beyond
# `import medkern`
autodoc_typehints = "none"  # the numpydoc Parameters section is the typed documentation
autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": False}
# the summary tables on each page link to entries on the same page: no stub pages are generated
autosummary_generate = False

# numpydoc: classes list their members through autodoc's :members:, not through numpydoc's own
# autosummary tables (those would need generated stub pages)
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# markdown guides: $...$ math and ::: fences are not used; headings get anchors for links
myst_heading_anchors = 3

# no network at build time: no intersphinx inventories
intersphinx_mapping: dict[str, tuple[str, None]] = {}

html_theme = "alabaster"
html_title = f"medkern {release}"
html_static_path: list[str] = []

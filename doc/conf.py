"""Sphinx configuration of the skbilevel documentation."""

import warnings

import skbilevel

project = "skbilevel"
author = "the skbilevel developers"
copyright = "2026, the skbilevel developers"
version = release = skbilevel.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
html_theme = "pydata_sphinx_theme"
html_title = f"skbilevel {version}"

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
}

# The figures of the user guide's plot directives: the code shown above its
# figure, one PNG, no links to other formats.
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]

# Matplotlib in a headless build.
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")


def _skip_scikit_learn_members(app, what, name, obj, skip, options):
    """Leave out members inherited from scikit-learn (score, set_params,
    set_*_request): their docstrings cross-reference scikit-learn's own
    glossary and user guide, which this documentation does not hold."""
    defined = getattr(obj, "fget", obj)  # properties carry their getter's module
    module = getattr(defined, "__module__", None) or ""
    if what == "class" and module.startswith("sklearn"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_scikit_learn_members)

"""Sphinx configuration of the sklearn-gpa documentation (build: ``make -C doc html``)."""

import os

import sklearn_gpa

# The gallery runs every example in its fast mode, on a non-interactive backend.
os.environ["SKLEARN_GPA_EXAMPLES_FAST"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

project = "sklearn-gpa"
author = "sklearn-gpa developers"
copyright = "sklearn-gpa developers"
release = sklearn_gpa.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "README.md"]
autosummary_generate = ["api.rst"]
autosummary_imported_members = False
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "inherited-members": True}


def skip_foreign_members(app, what, name, obj, skip, options):
    """Document only what sklearn_gpa defines: scikit-learn's own methods (get_params,
    set_output, set_*_request, ...) are documented by scikit-learn, and their docstrings
    refer to labels of its documentation."""
    defined = getattr(obj, "fget", obj)  # a property's module is its getter's
    module = getattr(defined, "__module__", None) or ""
    if what == "class" and not module.startswith("sklearn_gpa"):
        return True
    return None


# Members are listed by the autosummary class template, not again by numpydoc.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-gpa {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Execute every example (sphinx-gallery only runs files matching this pattern).
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "reset_modules": ("matplotlib",),
    # Back-references feed the "Examples using ..." galleries of the API pages.
    "doc_module": ("sklearn_gpa",),
    "backreferences_dir": "generated/backreferences",
    "show_memory": False,
}


def setup(app):
    app.connect("autodoc-skip-member", skip_foreign_members)

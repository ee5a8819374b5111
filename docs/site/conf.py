"""Sphinx configuration of the paulkit website (``make site``; built by docs/site/build.py).

Sphinx + MyST-NB + sphinx-book-theme, all from the package index (the ``dev`` extra): the
build reads nothing from the network. The notebooks are rendered with their stored outputs
(``nb_execution_mode = "off"``); the landing page says why this stack was chosen.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch

project = "paulkit"
author = "paulkit contributors"
copyright = "paulkit contributors"
html_title = "paulkit: PAUL as a tutorial series"

extensions = [
    "myst_nb",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/: formulas render offline
]
root_doc = "index"
# build.py copies index.md, notebooks/, docs/ and data/README.md next to each other.
exclude_patterns = ["**/.ipynb_checkpoints", "_generated"]

# MyST: $...$ maths in the notebooks, ::: admonitions, #anchors for headings up to ###.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Notebooks: the committed outputs, never executed here.
nb_execution_mode = "off"
# Progress bars and the explorer are ipywidgets views whose state nbstripout removed: they
# cannot be drawn without a kernel, so their text form is shown (the explorer's says how to
# use it) and no widget JavaScript is loaded (it would come from a CDN).
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_ipywidgets_js = {}

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,  # the page's source: the .ipynb or .md
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
# Light or dark as the reader's system says; without it a first visit logs "invalid theme
# mode" as a console error.
html_context = {"default_mode": "auto"}
html_last_updated_fmt = None
html_show_sphinx = False

# A note that only the site adds to a notebook's page, after its title cell: the notebook
# stays as it is. Keyed by a glob over the page's name.
LIVE_NOTES = {
    "notebooks/08_*": """:::{admonition} Run the explorer live
:class: tip

The patch explorer is an ipywidgets app: it needs a running Python kernel, which a web page
does not have. This page shows the outputs stored in the notebook: below the explorer cell,
`explorer.show_static()` draws the explorer's views as still images. To move the
sliders and click the patches yourself, run `make lab` in a clone of paulkit (it sets up
`.venv` and the synthetic data, then opens JupyterLab on `notebooks/`) and run this notebook
from the top. It loads the checkpoints notebooks 05 and 06 leave, or trains the two models
first (a few minutes on a CPU).
:::
""",
}


def add_live_note(app, docname: str, source: list[str]) -> None:
    """``source-read``: insert the page's note as a Markdown cell after the title cell."""
    notes = [text for pattern, text in LIVE_NOTES.items() if fnmatch(docname, pattern)]
    if not notes or not app.env.doc2path(docname).suffix == ".ipynb":
        return
    nb = json.loads(source[0])
    cell = {"cell_type": "markdown", "id": "paulkit-site-note", "metadata": {}, "source": notes}
    nb["cells"].insert(1, cell)
    source[0] = json.dumps(nb)


# Pages the landing page lists that another part of the project may not have written yet:
# while one is missing, its line is left out of the table of contents.
OPTIONAL_PAGES = ["docs/teaching"]
# The landing page's last entry, "docs/*", lists the documents not named before it (a new
# docs/*.md appears on the site by itself); it is left out while there are none, because
# Sphinx warns about a glob that matches nothing.
REST = "docs/*"


def fit_toctree(app, docname: str, source: list[str]) -> None:
    """``source-read`` of the landing page: leave out the optional pages that are missing,
    and the "docs/*" entry while every document is listed by name."""
    if docname != root_doc:
        return
    lines = source[0].splitlines(keepends=True)
    named = {line.strip() for line in lines}
    missing = {p for p in OPTIONAL_PAGES if p not in app.env.found_docs}
    rest = [d for d in app.env.found_docs if fnmatch(d, REST) and d not in named]
    if not rest:
        missing.add(REST)
    source[0] = "".join(line for line in lines if line.strip() not in missing)


def all_when_pages_change(app, env, added, changed, removed) -> list[str]:
    """``env-get-outdated``: a page added or removed changes every page's sidebar and the
    previous/next links around it, so an incremental build then rewrites every page."""
    return sorted(env.found_docs) if added or removed else []


def setup(app):
    app.connect("env-get-outdated", all_when_pages_change)
    app.connect("source-read", add_live_note)
    app.connect("source-read", fit_toctree)

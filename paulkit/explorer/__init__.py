"""The patch explorer: what PAUL's patches look at, and why two people are matched.

One purpose per module:

- :mod:`paulkit.explorer.data`: the tensors the views show, pure functions of tensors
  (patch neighbours in the patch memory, patch-to-patch similarities, activation maps,
  rank-1 per query) and :func:`explorer_data`, one model's pass over a target data set;
- :mod:`paulkit.explorer.figures`: the views' matplotlib figures, whose artists are updated
  in place (``plot_patch_boxes``, ``plot_patch_heatmaps``, ``plot_patch_neighbours``,
  ``plot_ranking``, ``plot_patch_match``);
- :mod:`paulkit.explorer.app`: :class:`PatchExplorer`, the ipywidgets wiring.

The explorer never trains and never reads a configuration: the models and the records it
shows are its arguments. ipywidgets is imported only when a :class:`PatchExplorer` is built.

Paper: docs/paper.md "Network: PatchNet", "PEDAL", "Evaluation".
Taught in: notebooks/08_patch_explorer.ipynb.
"""

from paulkit.explorer.app import VIEWS, PatchExplorer
from paulkit.explorer.data import (
    ExplorerData,
    Neighbours,
    explorer_data,
    match_contributions,
    patch_activation_maps,
    patch_features,
    patch_neighbours,
    patch_similarity,
    rank1_correct,
)
from paulkit.explorer.figures import (
    PATCH_COLORS,
    figure_png,
    patch_boxes,
    patch_color,
    plot_patch_boxes,
    plot_patch_heatmaps,
    plot_patch_match,
    plot_patch_neighbours,
    plot_ranking,
)

__all__ = [
    "Neighbours",
    "patch_neighbours",
    "patch_similarity",
    "match_contributions",
    "patch_activation_maps",
    "patch_features",
    "rank1_correct",
    "ExplorerData",
    "explorer_data",
    "PATCH_COLORS",
    "patch_color",
    "patch_boxes",
    "plot_patch_boxes",
    "plot_patch_heatmaps",
    "plot_patch_neighbours",
    "plot_ranking",
    "plot_patch_match",
    "figure_png",
    "VIEWS",
    "PatchExplorer",
]

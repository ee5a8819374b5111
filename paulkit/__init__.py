"""paulkit: PAUL (CVPR 2019) patch-based unsupervised person re-identification, taught in
notebooks and implemented as a small tested package.

The pipeline is the module layout (``paths``: the folders): ``config`` -> ``data`` -> ``models`` -> ``memory`` ->
``losses`` -> ``train`` -> ``evaluation`` -> ``viz`` / ``widgets``.
"""

__version__ = "0.1.0"

from paulkit import (  # noqa: E402,F401
    baselines,
    cluster,
    config,
    data,
    evaluation,
    losses,
    memory,
    models,
    paths,
    reproduce,
    train,
    utils,
    viz,
    widgets,
)

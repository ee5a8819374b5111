"""paulkit: PAUL (CVPR 2019) patch-based unsupervised person re-identification, taught in
notebooks and implemented as a small tested package.

The pipeline is the module layout: ``config`` -> ``data`` -> ``models`` -> ``memory`` ->
``losses`` -> ``train`` -> ``evaluation`` -> ``viz`` / ``explorer``; beside it ``paths`` (the
folders), ``runtime`` (where a run happens), ``distributed``, ``reproduce``, ``cluster``.
"""

__version__ = "0.1.0"

from paulkit import (  # noqa: E402,F401
    baselines,
    cluster,
    config,
    data,
    evaluation,
    explorer,
    losses,
    memory,
    models,
    paths,
    reproduce,
    runtime,
    train,
    utils,
    viz,
)

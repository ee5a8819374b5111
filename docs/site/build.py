"""Build the paulkit website into build/site/ (``make site``).

Sphinx reads one source folder, but the site's pages live in three places of the
repository: the landing page (docs/site/index.md), the notebooks (notebooks/NN_*.ipynb) and
the documents (docs/*.md). This script lays them side by side in ``build/site-src/`` as
copies, so every relative link and image path the repository uses also works on
the site, draws the landing page's results figure from ``docs/results.json`` and runs
Sphinx with the configuration in docs/site/conf.py. The notebooks are rendered with the
outputs they were committed with; nothing is executed.

Sphinx builds incrementally: a second run rewrites only the pages whose sources changed.
``--clean`` starts from nothing.

Usage: ``python docs/site/build.py [--clean] [--out build/site]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = Path(__file__).resolve().parent
# Name in the staged folder -> path in the repository. The staged names are the
# repository's, so that docs/data.md's ``../data/README.md`` resolves on the site too.
SOURCES = {
    "index.md": CONF / "index.md",
    "notebooks": ROOT / "notebooks",
    "docs": ROOT / "docs",
    "data/README.md": ROOT / "data" / "README.md",
}
IGNORE = ("site", "*.json", ".ipynb_checkpoints", "__pycache__")  # docs/site/ is the config
RESULTS_PRESET = "tutorial"  # the preset whose held-out table the landing page draws


def stage(src: Path) -> None:
    """Copy the site's sources into ``src`` (copies, not links: MyST resolves a relative
    link from the file's real path). ``copy2`` keeps modification times, so Sphinx still
    rebuilds only the pages whose sources changed; a file gone from the repository (a
    renamed notebook) is gone from the site too."""
    for name, source in SOURCES.items():
        if not source.exists():
            raise SystemExit(f"site: {source} is missing; the site needs it (see {__file__})")
        dest = src / name
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*IGNORE))
        else:
            shutil.copy2(source, dest)


def draw_results(results_json: Path, out: Path, preset: str = RESULTS_PRESET) -> None:
    """The landing page's figure: target mAP of every row of ``docs/results.md`` (mean and
    standard deviation over the held-out runs), read from ``docs/results.json``, which
    ``python -m paulkit reproduce --preset tutorial`` writes. Skipped while the figure is
    newer than what it is drawn from (importing paulkit takes seconds), and written only
    when it changed, so that an unchanged table does not rebuild the landing page."""
    inputs = [results_json, Path(__file__), ROOT / "paulkit" / "reproduce.py"]
    if out.exists() and out.stat().st_mtime > max(p.stat().st_mtime for p in inputs):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paulkit.reproduce import LABELS, ROWS

    results = json.loads(results_json.read_text())
    if preset not in results:
        raise SystemExit(
            f"site: {results_json} has no '{preset}' entry (it has {sorted(results)}); "
            f"run `python -m paulkit reproduce --preset {preset}`"
        )
    entry = results[preset]
    rows = [r for r in ROWS if entry.get(r)]
    means = [100 * entry[r]["mAP"] for r in rows]
    stds = [100 * entry[r].get("mAP_std", 0.0) for r in rows]
    colors = ["#c44e52" if r.startswith("paul") else "#4c72b0" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=150)
    y = list(range(len(rows)))[::-1]
    ax.barh(y, means, xerr=stds, color=colors, capsize=3)
    for yi, m in zip(y, means):
        ax.text(m + 1, yi + 0.22, f"{m:.1f}", fontsize=9)
    ax.set_yticks(y, [LABELS[r] for r in rows], fontsize=10)
    ax.set_xlabel("target mAP (%), mean ± std over the runs", fontsize=10)
    draws, seeds = entry.get("data_seeds", []), entry.get("seeds", [])
    ax.set_title(f"Synthetic target, held-out draws {draws} x model seeds {seeds}", fontsize=11)
    ax.set_xlim(0, max(m + s for m, s in zip(means, stds)) + 8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    tmp = out.with_suffix(".new.png")
    fig.savefig(tmp)
    plt.close(fig)
    if out.exists() and out.read_bytes() == tmp.read_bytes():
        tmp.unlink()
        out.touch()  # up to date with its inputs
        return
    os.replace(tmp, out)  # atomic: a reader never sees half a figure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "build" / "site"), help="HTML output folder")
    p.add_argument("--clean", action="store_true", help="rebuild every page from scratch")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    src = out.parent / f"{out.name}-src"
    doctrees = out.parent / f"{out.name}-doctrees"
    if args.clean:
        for d in (out, src, doctrees):
            shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    src.mkdir(parents=True, exist_ok=True)
    stage(src)
    (src / "_generated").mkdir(exist_ok=True)
    draw_results(ROOT / "docs" / "results.json", src / "_generated" / "results.png")
    from sphinx.cmd.build import build_main

    rc = build_main(["-b", "html", "-q", "-c", str(CONF), "-d", str(doctrees), str(src), str(out)])
    if rc == 0:
        print(f"site: {out / 'index.html'} ({time.perf_counter() - t0:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Committed notebook outputs must read as results, not as accidents of the run that made them:
no stray object reprs (``<matplotlib.legend.Legend at 0x...>``: end the cell with ``;``), no
progress bars frozen as widgets (a saved ipywidgets bar shows ``0%``: pass ``progress=False``),
no folders of the machine that executed them (paulkit prints paths relative to the project,
``paulkit.paths.shown_path``), and no figure call that showed nothing (a ``Figure`` returned
inside a block is not displayed: ``display(...)`` it)."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex")
OBJECT_REPR = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+>")
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's "  0%|          | 0/79 [...]"
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|tmp|root)/")
FIGURE_CALL = re.compile(r"\bplot_\w+\(")  # paulkit.viz / paulkit.explorer figure functions


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def defects(nb: dict) -> list[str]:
    """One line per defect found in a notebook's stored outputs: ``cell N: what``."""
    found = []
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for n, cell in enumerate(code, 1):
        shown = any(
            k.startswith("image/") for o in cell.get("outputs", []) for k in o.get("data", {})
        )
        if FIGURE_CALL.search(_text(cell.get("source", ""))) and not shown:
            found.append(f"code cell {n}: draws a figure but shows none (display(...) it)")
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                texts = [_text(out.get("text", ""))]
            elif kind in ("execute_result", "display_data"):
                data = out.get("data", {})
                texts = [_text(data[t]) for t in TEXT_TYPES if t in data]
                plain = _text(data.get("text/plain", ""))
                if set(data) == {"text/plain"} and OBJECT_REPR.fullmatch(plain.strip()):
                    found.append(
                        f"code cell {n}: object repr {plain.strip()!r} (end the line with ';')"
                    )
                if WIDGET in data and PROGRESS_BAR.search(plain):
                    found.append(
                        f"code cell {n}: progress bar saved as a widget ({plain.strip()[:40]!r}); "
                        "pass progress=False"
                    )
            else:
                continue
            for text in texts:
                m = MACHINE_PATH.search(text)
                if m:
                    line = text[max(0, m.start() - 30) : m.end() + 30].replace("\n", " ")
                    found.append(f"code cell {n}: absolute path of a machine: ...{line}...")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_results_not_accidents(path):
    problems = defects(json.loads(path.read_text()))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def _nb(*outputs):
    return {"cells": [{"cell_type": "code", "source": "", "outputs": list(outputs)}]}


def test_the_check_finds_each_kind_of_defect():
    legend = {
        "output_type": "execute_result",
        "data": {"text/plain": "<matplotlib.legend.Legend at 0x7f7c1c>"},
    }
    bar = {
        "output_type": "display_data",
        "data": {
            WIDGET: {"model_id": "x"},
            "text/plain": "adapt 1/4:   0%|          | 0/38 [00:00<?, ?it/s]",
        },
    }
    path = {"output_type": "stream", "name": "stdout", "text": ["loaded /work/main/outputs/a.pt\n"]}
    assert len(defects(_nb(legend))) == 1
    assert len(defects(_nb(bar))) == 1
    assert len(defects(_nb(path))) == 1
    figure = {
        "output_type": "display_data",
        "data": {"image/png": "iVBOR", "text/plain": "<Figure size 640x480 with 1 Axes>"},
    }
    explorer = {
        "output_type": "execute_result",
        "data": {WIDGET: {"model_id": "y"}, "text/plain": "PatchExplorer"},
    }
    relative = {
        "output_type": "stream",
        "name": "stdout",
        "text": "loaded outputs/tutorial/a.pt (data/synth)",
    }
    assert defects(_nb(figure, explorer, relative)) == []
    hidden = {"cell_type": "code", "source": "if t:\n    viz.plot_results(t)", "outputs": []}
    assert len(defects({"cells": [hidden]})) == 1
    assert defects({"cells": [dict(hidden, outputs=[figure])]}) == []

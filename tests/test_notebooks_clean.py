"""Committed notebooks must be executed top to bottom and cleaned with
``nbstripout --keep-output --keep-count`` (see README, "Changing a notebook")."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALLOWED_NB_METADATA = {"kernelspec", "language_info"}
ALLOWED_CELL_METADATA = {"tags"}


def test_series_is_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_and_clean(path):
    nb = json.loads(path.read_text())
    assert set(nb["metadata"]) <= ALLOWED_NB_METADATA, f"stale notebook metadata in {path.name}"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code"
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts), f"unexecuted cells in {path.name}: {counts}"
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name} was not executed once top to bottom (counts {counts}); run `make notebooks`"
    )
    for cell in nb["cells"]:
        extra = set(cell.get("metadata", {})) - ALLOWED_CELL_METADATA
        assert not extra, f"stale cell metadata {extra} in {path.name}; run nbstripout"
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"error output stored in {path.name}"
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), (
        f"{path.name}: the first code cell must be tagged `parameters`"
    )
    assert "PAULKIT_PRESET" in "".join(first["source"])

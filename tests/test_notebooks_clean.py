"""Committed notebooks must be executed top to bottom and cleaned with
``nbstripout --keep-output --keep-count`` (see README, "Changing a notebook")."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALLOWED_NB_METADATA = {"kernelspec", "language_info"}
ALLOWED_CELL_METADATA = {"tags", "nbgrader"}  # nbgrader: the student edition (make student)


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbgrader_marks_are_consistent(path):
    """Solution regions sit in nbgrader solution cells, every autograded test cell follows a
    solution, grade ids are unique, and each exercise's <details> answer is its own manually
    graded cell (nbgrader drops it from the student edition)."""
    nb = json.loads(path.read_text())
    ids, solution_seen = [], False
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        meta = cell.get("metadata", {}).get("nbgrader")
        if "### BEGIN SOLUTION" in source:
            assert meta and meta["solution"], (
                f"{path.name}: a solution region outside a solution cell"
            )
            assert source.count("### BEGIN SOLUTION") == source.count("### END SOLUTION")
        if "<details>" in source:
            assert meta and meta["solution"] and meta["grade"], (
                f"{path.name}: a <details> answer that is not a manually graded answer cell"
            )
        if meta is None:
            continue
        ids.append(meta["grade_id"])
        solution_seen |= cell["cell_type"] == "code" and meta["solution"]
        if meta["grade"] and not meta["solution"]:
            assert solution_seen, f"{path.name}: test cell {meta['grade_id']} before any solution"
            assert meta["locked"] and meta["points"] > 0
    assert len(ids) == len(set(ids)), f"{path.name}: repeated nbgrader grade ids"


def test_student_edition_drops_solutions_and_keeps_tests():
    """nbgrader's own ClearSolutions, as `make student` runs it, on notebook 03 (no execution)."""
    nbformat = pytest.importorskip("nbformat")
    clear = pytest.importorskip("nbgrader.preprocessors").ClearSolutions()
    nb = nbformat.read(NOTEBOOKS[3], as_version=4)
    tests_before = [
        c.source for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("points")
    ]
    student, _ = clear.preprocess(nb, {"language": "python"})
    text = "\n".join(c.source for c in student.cells)
    assert "### BEGIN SOLUTION" not in text and "<details>" not in text
    assert "raise NotImplementedError()" in text and "YOUR ANSWER HERE" in text
    kept = [
        c.source for c in student.cells if c.get("metadata", {}).get("nbgrader", {}).get("points")
    ]
    assert [s for s in kept if "assert" in s] == [s for s in tests_before if "assert" in s]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_edition_of_every_notebook_hides_every_answer(path):
    """No notebook's student edition keeps a solution region or a <details> answer."""
    nbformat = pytest.importorskip("nbformat")
    clear = pytest.importorskip("nbgrader.preprocessors").ClearSolutions()
    student, _ = clear.preprocess(nbformat.read(path, as_version=4), {"language": "python"})
    text = "\n".join(c.source for c in student.cells)
    assert "### BEGIN SOLUTION" not in text, f"{path.name}: a solution left in the student edition"
    assert "<details>" not in text, f"{path.name}: an answer left in the student edition"

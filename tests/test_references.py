"""The repository's references to its method specification stay valid.

docs/paper.md is the specification; code, benchmarks, tests, notebooks and documents cite
its sections by the file name followed by the quoted heading (several headings joined by
"and"), e.g. ``docs/paper.md "IPFL"``. Every cited heading must exist, and nothing may point
at files outside the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "paper.md"
PLACES = ("paulkit", "bench", "tests", "notebooks", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".json", ".cfg", ".txt", ".toml", ".yml", ".yaml"}
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}

# A citation: the file name, then one or more quoted headings joined by "and" or commas.
CITATION = re.compile(r'docs/paper\.md\s*((?:"[^"]+"(?:\s*(?:,|and|,\s*and)\s*)?)+)')
QUOTED = re.compile(r'"([^"]+)"')

# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("PAPER" + ".md", "MEASURED" + ".md", ".." + "/shared")


def _files() -> list[Path]:
    out = []
    for place in PLACES:
        path = ROOT / place
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix in TEXT_SUFFIXES
                and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
            )
    return out


def _text(path: Path) -> str:
    """The file's text; a notebook's cell sources (so quotes are not JSON-escaped)."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        nb = json.loads(raw)
        return "\n\n".join("".join(cell.get("source", [])) for cell in nb.get("cells", []))
    return raw


def _unwrap(text: str) -> str:
    # Citations may wrap across lines, including comment lines ("# ...").
    return re.sub(r"\s*\n\s*(?:#+\s*)?", " ", text)


def _headings() -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^##\s+(.+?)\s*$", SPEC.read_text(), re.M)}


def _citations() -> list[tuple[str, str]]:
    found = []
    for path in _files():
        for m in CITATION.finditer(_unwrap(_text(path))):
            for heading in QUOTED.findall(m.group(1)):
                found.append((str(path.relative_to(ROOT)), " ".join(heading.split())))
    return found


def test_spec_has_the_cited_core_sections():
    required = {
        "Network: PatchNet",
        "Supervised pretraining",
        "Unsupervised training",
        "PEDAL",
        "IPFL",
        "Evaluation",
        "Data set layouts",
    }
    missing = required - _headings()
    assert not missing, f"docs/paper.md lacks the sections {sorted(missing)}"


def test_every_citation_names_an_existing_heading():
    headings = _headings()
    citations = _citations()
    assert citations, "no docs/paper.md citation found: is the pattern still right?"
    bad = sorted({(f, h) for f, h in citations if h not in headings})
    assert not bad, (
        "citations of headings that docs/paper.md does not have (file, heading): "
        f"{bad}; existing headings: {sorted(headings)}"
    )


def test_no_reference_points_outside_the_repository():
    hits = []
    for path in _files():
        if path == Path(__file__).resolve():
            continue
        text = _text(path)
        hits.extend(f"{path.relative_to(ROOT)}: {word}" for word in FORBIDDEN if word in text)
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)

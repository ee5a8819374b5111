"""bench/gpu_check.py end to end on the CPU (--dry-run), its import fallback, and
bench/render_gpu.py on a hand-made JSON and with no JSON yet."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
PARTS = [
    "environment",
    "import",
    "unit_tests",
    "step_share",
    "adaptation",
    "evaluation",
    "synth_run",
    "cluster",
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("OUT", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--threads", "1", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _errors(obj, path="") -> list[str]:
    """Every "error" key anywhere in the JSON, with where it is."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("error", "reference_errors", "traceback"):
                found.append(f"{path}/{k}: {str(v)[:300]}")
            found += _errors(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _errors(v, f"{path}[{i}]")
    return found


def _positive(*xs) -> bool:
    return all(isinstance(x, (int, float)) and x > 0 for x in xs)


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run(["--json", str(out), "--synth-root", str(tmp_path / "synth")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["dry_run"] is True and data["schema"] == "paulkit-gpu-check/1"
    assert not _errors(data), _errors(data)
    for part in PARTS:
        assert part in data, part
        assert data[part]["status"] == "ok", part
    assert data["cluster"]["functions"] == ["jaccard_distance", "cluster_labels"]

    env = data["environment"]
    assert env["torch"] and env["python"] and env["date_utc"]
    assert env["commit"] != "" and "commit_source" in env
    assert data["import"]["ok"] and data["import"]["used_stub"] is False

    ut = data["unit_tests"]  # the CUDA-only test is collected and skipped on a CPU
    assert ut["returncode"] == 0 and ut["failed"] == 0 and ut["passed"] + ut["skipped"] >= 1

    st = data["step_share"]
    assert _positive(st["step_ms"], st["floor_ms"], st["net_fwd_bwd_ms"], st["share_pct"])
    assert st["share_pct"] == pytest.approx(100 * st["step_ms"] / st["net_fwd_bwd_ms"])

    ad = data["adaptation"]
    assert set(ad["modes"]) == {"bf16", "fp32"}
    for m in ad["modes"].values():
        assert _positive(
            m["adapt_images_per_s"],
            m["bare_resnet50_views_per_s"],
            m["backbone_stride1_views_per_s"],
            m["patchnet_trivial_loss_views_per_s"],
            m["ratio_vs_bare_pct"],
            m["step_ms"],
        )
        assert m["loss"] == m["loss"]  # not NaN
        assert m["adapt_views_per_s"] == pytest.approx(2 * m["adapt_images_per_s"])

    ev = data["evaluation"]
    assert ev["queries"] == 200 and ev["gallery"] == 600 and ev["dim"] == 1536
    assert _positive(ev["device_seconds_best"], ev["cpu_seconds"], ev["mAP"], ev["rank1"])
    assert ev["max_abs_diff_vs_cpu"] < 1e-6

    sr = data["synth_run"]
    assert len(sr["pretrain"]["loss"]) == 2 and len(sr["adapt"]["loss"]) == 1
    assert _positive(*sr["pretrain"]["images_per_s"], *sr["adapt"]["images_per_s"])
    assert [e["epoch"] for e in sr["eval"]] == [0, 1]
    assert 0 < sr["mAP_end"] <= 1 and 0 <= sr["rank1_end"] <= 1
    assert _positive(sr["synth_generation_s"], data["total_wall_s"])
    assert (tmp_path / "synth" / "synth").is_dir()  # data went to --synth-root, not data/

    # the renderer refuses a dry run unless told, and then says it is one
    render = _load("render_gpu")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert render.main([str(out), "--doc", str(doc)]) == 2
    assert render.main([str(out), "--doc", str(doc), "--allow-dry-run"]) == 0
    text = doc.read_text()
    assert "Dry run on a CPU" in text and "kept" in text and text.count("<!-- gpu:begin -->") == 1


def test_missing_dependency_is_stubbed(tmp_path):
    """ipywidgets / tqdm / matplotlib absent (as on a bare GPU machine): paulkit still imports,
    through stub modules, and the JSON says so."""
    out = tmp_path / "imp.json"
    proc = _run(
        [
            "--parts",
            "import",
            "--json",
            str(out),
            "--simulate-missing",
            "tqdm,ipywidgets,matplotlib",
        ],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    imp = json.loads(out.read_text())["import"]
    assert imp["status"] == "ok" and imp["used_stub"] is True
    assert "tqdm" in imp["stubbed_modules"] and "matplotlib" in imp["stubbed_modules"]
    assert imp["simulated_missing"] == ["ipywidgets", "matplotlib", "tqdm"]


HAND_MADE = {
    "schema": "paulkit-gpu-check/1",
    "dry_run": False,
    "command": "python3 bench/gpu_check.py",
    "total_wall_s": 251.4,
    "setup": {"import_torch_s": 3.25, "cuda_init_s": 1.75, "synth_generation_s": 11.5},
    "environment": {
        "status": "ok",
        "device": "NVIDIA H200",
        "device_memory_gib": 139.8,
        "torch": "2.11.0+cu128",
        "cuda": "12.8",
        "cudnn": 91002,
        "python": "3.12.3",
        "cpu_count": 16,
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "commit_source": "git rev-parse HEAD",
        "date_utc": "2030-01-02 03:04 UTC",
    },
    "import": {"status": "ok", "stubbed_modules": ["ipywidgets"], "used_stub": True},
    "unit_tests": {
        "status": "ok",
        "passed": 1,
        "failed": 0,
        "skipped": 0,
        "seconds": 6.5,
        "tests": ["tests/test_evaluation.py::test_cuda_matches_cpu"],
    },
    "step_share": {
        "status": "ok",
        "slots": 12936,
        "batch": 42,
        "views": 2,
        "arch": "resnet50",
        "input": "384x128",
        "step_ms": 3.21,
        "floor_ms": 2.5,
        "step_x_floor": 1.284,
        "net_fwd_bwd_ms": 187.6,
        "net_fwd_bwd_amp_ms": 77.7,
        "share_pct": 1.711,
        "share_amp_pct": 4.131,
        "goal_share_pct": 5.0,
    },
    "adaptation": {
        "status": "ok",
        "arch": "resnet50",
        "input": "256x128",
        "batch": 42,
        "views": 2,
        "slots": 12936,
        "goal_ratio_pct": 90.0,
        "modes": {
            "bf16": {
                "adapt_images_per_s": 1234.5,
                "step_ms": 34.0,
                "bare_resnet50_views_per_s": 3456.0,
                "ratio_vs_bare_pct": 71.44,
                "ratio_vs_stride1_pct": 88.8,
                "ratio_vs_patchnet_pct": 97.7,
                "peak_memory_gib": 21.3,
            },
            "fp32": {"error": "RuntimeError: out of memory"},
        },
    },
    "evaluation": {
        "status": "ok",
        "queries": 3368,
        "gallery": 15913,
        "dim": 1536,
        "device_seconds_best": 0.4321,
        "repeats": 3,
        "cpu_seconds": 2.5,
        "cpu_threads": 16,
        "mAP": 0.348,
        "max_abs_diff_vs_cpu": 0.0,
    },
    "synth_run": {"status": "error", "error": "FloatingPointError: the loss became nan"},
    "cluster": {"status": "not available", "reason": "paulkit/cluster.py does not exist yet"},
}


def test_render_hand_made_json(tmp_path):
    render = _load("render_gpu")
    src = tmp_path / "gpu.json"
    src.write_text(json.dumps(HAND_MADE))
    doc = tmp_path / "benchmarks.md"
    before = "# Benchmarks\n\n## Evaluation\n\nuntouched 1.23 s\n"
    doc.write_text(before + "\n## GPU\n\n<!-- gpu:begin -->\nold\n<!-- gpu:end -->\n\n## After\n")
    assert render.main([str(src), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(before) and text.endswith("<!-- gpu:end -->\n\n## After\n")
    assert "old" not in text and text.count("## GPU") == 1
    for figure in (
        "NVIDIA H200",
        "2.11.0+cu128",
        "CUDA 12.8",
        "`0123456789ab`",
        "2030-01-02 03:04 UTC",
        "`python3 bench/gpu_check.py`",
        "ipywidgets",
        "1 passed, 0 failed",
        "3.21 ms",
        "**1.71 %**",
        "1234 img/s",
        "1728 img/s",  # 3456 views/s of 2-view images
        "**71.4 %**",
        "97.7 %",
        "out of memory",
        "**0.43 s**",
        "3368 x 15913",
        "34.8 %",
        "FloatingPointError",
        "not available",
        "cuda_init_s 1.8 s",
        "251 s",
    ):
        assert figure in text, figure
    again = doc.read_text()
    assert render.main([str(src), "--doc", str(doc)]) == 0
    assert doc.read_text() == again  # idempotent
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_render_without_json(tmp_path):
    render = _load("render_gpu")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Evaluation\n\nkept\n")
    assert render.main([str(tmp_path / "missing.json"), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Evaluation\n\nkept\n")
    assert "## GPU\n\n<!-- gpu:begin -->\nNot measured yet: run `python bench/gpu_check.py`" in text
    assert "`python bench/render_gpu.py`" in text and text.rstrip().endswith("<!-- gpu:end -->")
    assert render.main([str(tmp_path / "missing.json"), "--doc", str(doc)]) == 0
    assert doc.read_text() == text


def test_repository_section_is_rendered():
    """docs/benchmarks.md carries the generated section (figures only from docs/gpu.json)."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert text.count("<!-- gpu:begin -->") == 1 and text.count("<!-- gpu:end -->") == 1
    render = _load("render_gpu")
    gpu = ROOT / "docs" / "gpu.json"
    data = json.loads(gpu.read_text()) if gpu.exists() else None
    body = text.split("<!-- gpu:begin -->\n", 1)[1].split("\n<!-- gpu:end -->", 1)[0]
    assert body == render.render(data)

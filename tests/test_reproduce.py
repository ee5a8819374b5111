"""The results table: rows, seeds, mean ± std, the results.json schema and results.md."""

import json
import statistics

import pytest

from paulkit import config as C
from paulkit import reproduce

FAKE_MAP = {  # per seed: mAP of each row (fractions)
    0: {"direct_transfer": 0.18, "adabn": 0.28, "pedal_only": 0.30, "ipfl_only": 0.29},
    1: {"direct_transfer": 0.20, "adabn": 0.30, "pedal_only": 0.33, "ipfl_only": 0.31},
    2: {"direct_transfer": 0.16, "adabn": 0.26, "pedal_only": 0.31, "ipfl_only": 0.27},
}
PAUL = {0: 0.34, 1: 0.36, 2: 0.32}


def metrics(m: float) -> dict[str, float]:
    return {
        "rank1": min(1.0, m + 0.1),
        "rank5": min(1.0, m + 0.2),
        "rank10": min(1.0, m + 0.25),
        "mAP": m,
        "mAP_trapezoid": m - 0.01,
        "mINP": m / 2,
    }


def fake_rows(cfg, rows=None, device=None, out=None, progress=False):
    maps = FAKE_MAP[cfg.seed] | {"paul": PAUL[cfg.seed], "oracle": 0.65}
    return {row: metrics(m) for row, m in maps.items()}


@pytest.fixture
def entry(monkeypatch):
    monkeypatch.setattr(reproduce, "evaluate_rows", fake_rows)
    hist = metrics(0.02) | {"descriptor": "stripes"}
    monkeypatch.setattr(reproduce, "histogram_row", lambda cfg: hist)
    return reproduce.reproduce("tutorial", seeds=[0, 1, 2], device="cpu", command="cmd")


def test_entry_has_every_row_as_mean_and_std_over_seeds(entry):
    for row in ("direct_transfer", "adabn", "pedal_only", "ipfl_only", "paul", "oracle"):
        assert set(reproduce.METRICS) <= set(entry[row])
        assert all(0.0 <= entry[row][m] <= 1.0 for m in reproduce.METRICS)
    vals = [PAUL[s] for s in (0, 1, 2)]
    assert entry["paul"]["mAP"] == pytest.approx(statistics.fmean(vals))
    assert entry["paul"]["mAP_std"] == pytest.approx(statistics.stdev(vals))
    assert entry["seeds"] == [0, 1, 2] and entry["seed"] == 0
    assert set(entry["per_seed"]) == {"0", "1", "2"}
    assert entry["per_seed"]["1"]["adabn"]["mAP"] == 0.30
    assert entry["histogram"]["mAP"] == 0.02 and entry["command"] == "cmd"
    assert entry["config_hash"] == C.config_hash(C.get_preset("tutorial"))


def test_write_results_merges_presets_and_states_the_attribution(entry, tmp_path):
    reproduce.write_results(entry, "tutorial", tmp_path)
    reproduce.write_results(entry, "synth_small", tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data) == {"tutorial", "synth_small"}
    assert data["tutorial"]["per_seed"]["2"]["paul"]["mAP"] == 0.32
    md = (tmp_path / "results.md").read_text()
    assert "## `tutorial`" in md and "## `synth_small`" in md
    for label in reproduce.LABELS.values():
        assert label in md
    # the headline compares PAUL with AdaBN as well as with direct transfer
    assert "PAUL − direct transfer: +16.0 mAP" in md
    assert "PAUL − AdaBN: +6.0 mAP" in md
    assert "PAUL − AdaBN ≥ +5 mAP: met" in md and "oracle above PAUL: met" in md
    assert "The paper's numbers (not measured here)" in md
    (tmp_path / "results.md").unlink()
    reproduce.render_results(tmp_path)
    assert (tmp_path / "results.md").read_text() == md


def test_attribution_verdict_says_not_met_when_adabn_is_close():
    e = {"paul": {"mAP": 0.33}, "adabn": {"mAP": 0.30}, "direct_transfer": {"mAP": 0.12}}
    text = reproduce.attribution_verdict(e)
    assert "PAUL − AdaBN ≥ +5 mAP: not met" in text
    assert "direct transfer ≥ 15 mAP: not met" in text
    assert "oracle" not in text


def test_evaluate_rows_direct_transfer_and_adabn_for_real(tmp_path):
    """A real (tiny) pretraining; AdaBN changes only BatchNorm statistics, so it moves the
    metrics but never reads a label, and both rows carry every metric."""
    cfg = C.override(
        C.get_preset("tutorial"),
        "data.limit_train=96",
        "model.small_width=8",
        "pretrain.epochs=1",
        "pretrain.batch_size=16",
    )
    rows = reproduce.evaluate_rows(cfg, ["direct_transfer", "adabn"], "cpu", tmp_path)
    assert set(rows) == {"direct_transfer", "adabn"}
    for r in rows.values():
        assert set(reproduce.METRICS) <= set(r) and all(0 <= r[m] <= 1 for m in reproduce.METRICS)
    assert rows["adabn"] != rows["direct_transfer"]
    assert (tmp_path / "tutorial" / "seed0" / "pretrain.pt").exists()

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
    # model seeds 0, 1, 2 of the old fixture become runs (data seed 1, seed 0/1), (2, 0)
    k = {(1, 0): 0, (1, 1): 1, (2, 0): 2, (2, 1): 1}[(cfg.data.synth_seed, cfg.seed)]
    maps = FAKE_MAP[k] | {"paul": PAUL[k], "oracle": 0.65}
    maps |= {"paul_eval_init": PAUL[k] - 0.01, "paul_adabn": PAUL[k] + 0.01}
    maps |= {"cluster_contrast": PAUL[k] + 0.05}
    res = {row: metrics(m) for row, m in maps.items()}
    if "histogram" in (rows or []):
        res["histogram"] = metrics(0.02 * cfg.data.synth_seed) | {"descriptor": "stripes"}
    return res


@pytest.fixture
def entry(monkeypatch):
    monkeypatch.setattr(reproduce, "evaluate_rows", fake_rows)
    return reproduce.reproduce(
        "tutorial", seeds=[0, 1], device="cpu", command="cmd", data_seeds=[1, 2]
    )


RUNS = {"data1-seed0": 0, "data1-seed1": 1, "data2-seed0": 2, "data2-seed1": 1}


def test_entry_has_every_row_as_mean_and_std_over_all_runs(entry):
    for row in reproduce.ROWS:
        assert set(reproduce.METRICS) <= set(entry[row]), row
        assert all(0.0 <= entry[row][m] <= 1.0 for m in reproduce.METRICS)
    vals = [PAUL[k] for k in RUNS.values()]
    assert entry["paul"]["mAP"] == pytest.approx(statistics.fmean(vals))
    assert entry["paul"]["mAP_std"] == pytest.approx(statistics.stdev(vals))
    assert entry["seeds"] == [0, 1] and entry["data_seeds"] == [1, 2] and entry["seed"] == 0
    assert set(entry["per_seed"]) == set(RUNS)
    assert entry["per_seed"]["data1-seed1"]["adabn"]["mAP"] == 0.30
    # one histogram per data draw, shared by its model seeds
    assert entry["histogram"]["mAP"] == pytest.approx(0.03) and entry["command"] == "cmd"
    assert entry["per_seed"]["data2-seed1"]["histogram"]["mAP"] == 0.04
    # the spread between draws is the std of the per-draw means
    d1, d2 = statistics.fmean([0.34, 0.36]), statistics.fmean([0.32, 0.36])
    assert entry["per_data_seed"]["1"]["paul"] == pytest.approx(d1)
    assert entry["data_spread"]["paul"] == pytest.approx(statistics.stdev([d1, d2]))
    assert entry["config_hash"] == C.config_hash(C.get_preset("tutorial"))


def test_write_results_merges_presets_and_states_the_attribution(entry, tmp_path):
    reproduce.write_results(entry, "tutorial", tmp_path)
    reproduce.write_results(entry, "synth_small", tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data) == {"tutorial", "synth_small"}
    assert data["tutorial"]["per_seed"]["data2-seed0"]["paul"]["mAP"] == 0.32
    md = (tmp_path / "results.md").read_text()
    assert "## `tutorial`" in md and "## `synth_small`" in md
    for label in reproduce.LABELS.values():
        assert label in md
    # the headline: PAUL against AdaBN on held-out draws, paired by run
    assert "PAUL beats AdaBN on held-out data draws [1, 2]: +6.0 ± 0.0 mAP" in md
    assert "better in 4 of 4 runs" in md
    assert "tuning draw" in md and "| spread |" in md
    assert "The paper's numbers (not measured here)" in md
    (tmp_path / "results.md").unlink()
    reproduce.render_results(tmp_path)
    assert (tmp_path / "results.md").read_text() == md


def test_add_rows_measures_a_row_on_some_runs_and_merges_it(entry, monkeypatch, tmp_path):
    """A new method's row on an existing table: measured on the chosen runs only, the other
    rows untouched, its mean/spread over those runs, and results.md says so."""
    old = {row: dict(entry[row]) for row in ("paul", "adabn")}
    for run in entry["per_seed"].values():
        run.pop("cluster_contrast")
    del entry["cluster_contrast"]
    asked = []

    def rows_only(cfg, rows=None, **kw):
        asked.append((cfg.data.synth_seed, cfg.seed, tuple(rows)))
        return {r: v for r, v in fake_rows(cfg, rows).items() if r in rows}

    monkeypatch.setattr(reproduce, "evaluate_rows", rows_only)
    out = reproduce.add_rows(entry, "tutorial", ["cluster_contrast"], seeds=[0], command="cmd2")
    assert asked == [(1, 0, ("cluster_contrast",)), (2, 0, ("cluster_contrast",))]
    assert {row: out[row] for row in old} == old
    vals = [PAUL[0] + 0.05, PAUL[2] + 0.05]
    assert out["cluster_contrast"]["mAP"] == pytest.approx(statistics.fmean(vals))
    assert "cluster_contrast" not in out["per_seed"]["data1-seed1"]
    assert out["per_data_seed"]["2"]["cluster_contrast"] == pytest.approx(vals[1])
    assert out["added_rows"]["cluster_contrast"]["runs"] == ["data1-seed0", "data2-seed0"]
    reproduce.write_results(out, "tutorial", tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "was added later on 2 of the 4 runs with `cmd2`" in md
    with pytest.raises(ValueError, match="unknown row"):
        reproduce.add_rows(entry, "tutorial", ["magic"])
    with pytest.raises(ValueError, match="other settings|re-run the whole table"):
        reproduce.add_rows(entry, C.override(C.get_preset("tutorial"), "seed=5"), ["paul"])


def test_attribution_verdict_says_so_when_adabn_wins():
    runs = {
        "a": {"paul": {"mAP": 0.33}, "adabn": {"mAP": 0.30}, "direct_transfer": {"mAP": 0.1}},
        "b": {"paul": {"mAP": 0.28}, "adabn": {"mAP": 0.32}, "direct_transfer": {"mAP": 0.1}},
    }
    text = reproduce.attribution_verdict({"per_seed": runs, "data_seeds": [1]})
    assert text.startswith("PAUL does not beat AdaBN on held-out data draws [1]: -0.5")
    assert "better in 1 of 2 runs" in text


def test_evaluate_rows_direct_transfer_adabn_and_cluster_contrast_for_real(tmp_path):
    """A real (tiny) pretraining; AdaBN changes only BatchNorm statistics, so it moves the
    metrics but never reads a label; Cluster Contrast trains from the same pretraining; every
    row carries every metric."""
    cfg = C.override(
        C.get_preset("tutorial"),
        "data.limit_train=96",
        "model.small_width=8",
        "pretrain.epochs=1",
        "pretrain.batch_size=16",
        "cluster.epochs=1",
        "cluster.iters=2",
        "cluster.batch_size=16",
        "cluster.k1=10",
        "cluster.k2=3",
    )
    names = ["direct_transfer", "adabn", "cluster_contrast"]
    rows = reproduce.evaluate_rows(cfg, names, "cpu", tmp_path)
    assert set(rows) == set(names)
    for r in rows.values():
        assert set(reproduce.METRICS) <= set(r) and all(0 <= r[m] <= 1 for m in reproduce.METRICS)
    assert rows["adabn"] != rows["direct_transfer"]
    assert rows["cluster_contrast"] != rows["direct_transfer"]
    run = tmp_path / "tutorial" / "seed0"
    assert (run / "pretrain.pt").exists() and (run / "cluster-cluster_contrast.pt").exists()


def test_reproduce_run_twice_gives_the_same_numbers(tmp_path):
    """The same config and seeds give the same table, whether or not progress bars show and
    whatever ran before (two fresh output folders: everything is trained twice)."""
    cfg = C.override(
        C.get_preset("tutorial"),
        "data.limit_train=64",
        "model.small_width=8",
        "pretrain.epochs=1",
        "pretrain.batch_size=16",
        "adapt.epochs=1",
        "adapt.batch_size=16",
        "adapt.pedal_k=3",
    )
    rows = ["direct_transfer", "adabn", "paul", "paul_adabn"]
    a = reproduce.evaluate_rows(cfg, rows, "cpu", tmp_path / "a", progress=False)
    b = reproduce.evaluate_rows(cfg, rows, "cpu", tmp_path / "b", progress=True)
    assert a == b

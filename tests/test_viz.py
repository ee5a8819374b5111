"""Tests for paulkit.viz: what each figure shows (frames, titles, curves), not how it looks."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from paulkit import evaluation, viz


def small_problem():
    """Three queries, six gallery images; the query's own-camera copy must never be shown."""
    g_pids = np.array([1, 2, 1, 0, 2, 1])
    g_camids = np.array([1, 1, 0, 2, 2, 2])
    q_pids, q_camids = np.array([1, 2, 1]), np.array([0, 0, 1])
    distmat = np.array(
        [
            [0.3, 0.1, 0.0, 0.2, 0.4, 0.5],  # g2 is q0's same-camera copy: ignored
            [0.5, 0.0, 0.2, 0.3, 0.1, 0.6],  # both matches (g1, g4) first: AP 1
            [0.1, 0.5, 0.2, 0.3, 0.4, 0.6],  # g0 same camera (ignored): g2 first, g5 last
        ]
    )
    return distmat, q_pids, g_pids, q_camids, g_camids


def images(n, h=16, w=8):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def frame_color(ax):
    return to_hex(ax.spines["top"].get_edgecolor())


def test_select_queries_orders_by_ap():
    res = evaluation.evaluate(*small_problem())
    # AP: q0 = (1/3 + 2/5)/2 (matches at positions 2 and 4 of g1 g3 g0 g4 g5), q1 = 1,
    # q2 = (1/1 + 2/5)/2 (positions 0 and 4 of g2 g3 g4 g1 g5)
    np.testing.assert_allclose(res.ap, [(1 / 3 + 2 / 5) / 2, 1, 0.7])
    assert viz.select_queries(res, 2, "worst").tolist() == [0, 2]
    assert viz.select_queries(res, 2, "best").tolist() == [1, 2]
    drawn = viz.select_queries(res, 2, "random", seed=3)
    assert len(set(drawn.tolist())) == 2 and np.array_equal(drawn, np.sort(drawn))
    assert viz.select_queries(res, 10, "worst").tolist() == [0, 2, 1]  # all there are
    with pytest.raises(ValueError, match="mode must be"):
        viz.select_queries(res, 2, "median")


def test_ranked_list_frames_titles_and_exclusions():
    distmat, q_pids, g_pids, q_camids, g_camids = small_problem()
    fig = viz.plot_ranked_lists(
        distmat, q_pids, g_pids, q_camids, g_camids, images(3), images(6), k=4, num_queries=1
    )
    assert isinstance(fig, Figure)
    assert "worst queries (lowest AP)" in fig._suptitle.get_text()
    axes = fig.axes
    assert len(axes) == 5
    assert frame_color(axes[0]) == viz.QUERY
    assert "AP 0.367" in axes[0].get_title()  # (1/3 + 2/5) / 2
    # q0's valid list: g1 (0.1, x), g3 (0.2, distractor x), g0 (0.3, v), g4 (0.4, x)
    colors = [frame_color(ax) for ax in axes[1:]]
    assert colors == [viz.MISS, viz.MISS, viz.MATCH, viz.MISS]
    assert [ax.get_title().split("\n")[1] for ax in axes[1:]] == [
        "0.100",
        "0.200",
        "0.300",
        "0.400",
    ]


def test_ranked_list_modes_paths_and_short_lists(tmp_path):
    distmat, q_pids, g_pids, q_camids, g_camids = small_problem()
    paths = []
    for i, arr in enumerate(images(9)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(arr).save(paths[-1])
    labels = (q_pids, g_pids, q_camids, g_camids)
    best = viz.plot_ranked_lists(distmat, *labels, paths[:3], paths[3:], k=8, mode="best")
    assert "best queries (highest AP)" in best._suptitle.get_text()
    assert len(best.axes) == 3 * 9
    # k=8 but q1 has 6 valid gallery items, q2 and q0 have 5: the spare cells are blank
    assert sum(not ax.axison for ax in best.axes) == 2 + 3 + 3
    rnd = viz.plot_ranked_lists(
        distmat, *labels, paths[:3], paths[3:], k=2, mode="random", title="untrained"
    )
    assert rnd._suptitle.get_text().startswith("untrained: random queries")
    with pytest.raises(ValueError, match="g_images"):
        viz.plot_ranked_lists(distmat, *labels, paths[:3], paths[3:5])


def test_cmc_curves_of_several_models():
    res = evaluation.evaluate(*small_problem(), max_rank=5)
    fig = viz.plot_cmc({"model A": res, "model B": [0.25, 0.5, 1.0]}, max_rank=5)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == [
        f"model A (rank-1 {100 * res.cmc[0]:.1f}%)",
        "model B (rank-1 25.0%)",
    ]
    np.testing.assert_allclose(lines[0].get_ydata(), 100 * res.cmc)
    np.testing.assert_allclose(lines[1].get_xdata(), [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        viz.plot_cmc({})


def test_history_losses_and_evaluations():
    history = {
        "epoch": [1, 2, 3],
        "loss": [3.0, 2.0, 1.0],
        "pedal": [2.0, 1.5, 0.7],
        "ipfl": [1.0, 0.5, 0.3],
        "lr": [0.1, 0.1, 0.01],
        "images_per_s": [50.0, 51.0, 52.0],
        "eval": [{"epoch": 0, "mAP": 0.1, "rank1": 0.2}, {"epoch": 3, "mAP": 0.3, "rank1": 0.5}],
    }
    fig = viz.plot_history(history)
    losses, accuracy = fig.axes
    assert [line.get_label() for line in losses.get_lines()] == ["loss", "pedal", "ipfl"]
    assert [line.get_label() for line in accuracy.get_lines()] == ["mAP (step)", "rank-1"]
    np.testing.assert_allclose(accuracy.get_lines()[0].get_ydata(), [10, 30])  # in percent
    np.testing.assert_allclose(accuracy.get_lines()[1].get_xdata(), [0, 3])


def test_history_is_tolerant():
    only_losses = viz.plot_history({"loss": [1.0, 0.5], "ce": [0.9, 0.4], "note": "x"})
    assert len(only_losses.axes) == 1
    assert [line.get_label() for line in only_losses.axes[0].get_lines()] == ["loss", "ce"]
    only_eval = viz.plot_history({"eval": [{"epoch": 2, "mAP": 41.0}, {"rank1": 0.3}]})
    assert len(only_eval.axes) == 1
    np.testing.assert_allclose(only_eval.axes[0].get_lines()[0].get_ydata(), [41.0])
    chosen = viz.plot_history({"epoch": [1, 2], "loss": [1, 2], "ce": [1, 1]}, loss_keys=["ce"])
    assert [line.get_label() for line in chosen.axes[0].get_lines()] == ["ce"]
    mismatched = viz.plot_history({"epoch": [1, 2], "loss": [1.0, 0.5], "pedal": [1.0]})
    assert [line.get_label() for line in mismatched.axes[0].get_lines()] == ["loss"]
    with pytest.raises(ValueError, match="nothing to plot"):
        viz.plot_history({"epoch": [1, 2], "eval": []})


def test_plot_results_draws_the_results_json_and_names_what_is_missing(tmp_path):
    import json
    from pathlib import Path

    from paulkit import reproduce

    docs = Path(__file__).resolve().parents[1] / "docs"
    table = json.loads((docs / "results.json").read_text())["tutorial"]
    assert len(viz.plot_results(table).axes[0].patches) == 7  # notebook 07: PAUL's rows
    fig = viz.plot_results(table, cluster=True)
    bars, runs = fig.axes
    assert len(bars.patches) == 8 and bars.get_ylabel() == "target mAP (%)"
    assert len(runs.lines) == len(table["per_seed"]) and runs.get_legend() is not None
    assert "cluster_contrast" in [t.get_text() for t in bars.get_xticklabels()]
    assert len(runs.lines[0].get_xdata()) == 4  # direct, AdaBN, PAUL, Cluster Contrast
    # a table measured before the Cluster Contrast row (or with it on only some runs)
    older = {k: v for k, v in table.items() if k != "cluster_contrast"}
    assert len(viz.plot_results(older, cluster=True).axes[0].patches) == 7
    some = dict(table, per_seed=dict(table["per_seed"]))
    first = next(iter(some["per_seed"]))
    some["per_seed"][first] = {
        k: v for k, v in some["per_seed"][first].items() if k != "cluster_contrast"
    }
    assert len(viz.plot_results(some, cluster=True).axes[0].patches) == 7
    with pytest.raises(ValueError, match="paulkit reproduce"):
        viz.plot_results({k: v for k, v in table.items() if k != "adabn"})
    (tmp_path / "results.json").write_text(json.dumps({"tutorial": table}))
    out = reproduce.render_results_figure(tmp_path)
    assert out == tmp_path / "results.png" and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no preset"):
        reproduce.render_results_figure(tmp_path, preset="synth_small")


def test_photo_figures_are_figures_and_the_style_is_readable():
    import matplotlib as mpl

    assert issubclass(viz.PhotoFigure, viz.Figure)
    assert mpl.rcParams["font.size"] >= 10 and mpl.rcParams["legend.fontsize"] >= 9
    assert viz.SMALL >= 9

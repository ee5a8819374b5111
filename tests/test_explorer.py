"""The patch explorer package (paulkit.explorer): its data (neighbours, similarity matrices,
activation maps), its figures (boxes, views updated in place), the widget's callbacks called
without a browser, and its imports (no training code).

The browser drives the same explorer in tests/test_browser.py.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from paulkit import evaluation, explorer, memory, models, viz  # noqa: E402
from paulkit.data import ImageRecord  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- boxes from thetas


def test_identity_theta_covers_the_whole_image():
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    # Sampling the image itself: -1 and +1 are the centres of its first and last pixels.
    np.testing.assert_allclose(explorer.patch_boxes(theta, (64, 32)), [[0, 0, 31, 63]])


def test_stripes_of_a_16x8_map_on_a_64x32_image():
    # Hand-worked: stripe i spans feature rows 2.5 i .. 2.5 (i + 1) (of 0..15) and columns
    # 0..7; a feature cell j covers pixels [4 j, 4 j + 4), centre 4 j + 1.5.
    boxes = explorer.patch_boxes(models.stripe_thetas(6), (64, 32), map_size=(16, 8))
    expected = [[1.5, 10 * i + 1.5, 29.5, 10 * i + 11.5] for i in range(6)]
    np.testing.assert_allclose(boxes, expected, atol=1e-5)


def test_axis_aligned_theta_spans_t_plus_minus_scale():
    # theta [[a, 0, tx], [0, d, ty]]: x in tx +- a, y in ty +- d (normalised), then pixels.
    theta = np.array([[[0.5, 0, 0.25], [0, 0.25, -0.5]]])
    box = explorer.patch_boxes(theta, (41, 33))  # (H, W): pixel = (c + 1) / 2 * (size - 1)
    np.testing.assert_allclose(box, [[12.0, 5.0, 28.0, 15.0]])


def test_rotated_theta_corners_are_transformed_one_by_one():
    theta = np.array([[[0.0, -0.5, 0.0], [0.5, 0.0, 0.0]]])  # 90 degrees, half size
    corners = viz.patch_corners(torch.from_numpy(theta), (9, 9)).numpy()  # pixel = (c + 1) * 4
    # (u, v) = (-1,-1), (1,-1), (1,1), (-1,1)  ->  (x, y) = (-v/2, u/2)
    np.testing.assert_allclose(corners[0], [[6, 2], [6, 6], [2, 6], [2, 2]])
    np.testing.assert_allclose(explorer.patch_boxes(theta, (9, 9)), [[2, 2, 6, 6]])


def test_corners_agree_with_affine_grid():
    # Without a feature size the corners are exactly where affine_grid (align_corners=True)
    # puts the corner samples, unnormalised as grid_sample does.
    torch.manual_seed(0)
    thetas = torch.randn(5, 2, 3) * 0.5
    h, w = 7, 5
    grid = F.affine_grid(thetas, [5, 1, h, w], align_corners=True)  # (P, h, w, 2)
    pick = torch.stack([grid[:, 0, 0], grid[:, 0, -1], grid[:, -1, -1], grid[:, -1, 0]], 1)
    pix = torch.stack([(pick[..., 0] + 1) / 2 * (w - 1), (pick[..., 1] + 1) / 2 * (h - 1)], -1)
    corners = viz.patch_corners(thetas, (h, w))
    np.testing.assert_allclose(corners, pix.double().numpy(), atol=1e-5)


def test_boxes_reject_bad_input():
    with pytest.raises(ValueError, match="thetas must be"):
        explorer.patch_boxes(torch.zeros(1, 6, 2, 3), (64, 32))
    with pytest.raises(ValueError, match="image_size"):
        explorer.patch_boxes(models.stripe_thetas(), (64,))
    with pytest.raises(ValueError, match="map_size"):
        explorer.patch_boxes(models.stripe_thetas(), (64, 32), map_size=(0, 8))


# --------------------------------------------------------------------------- explorer data


def _unit(*v):
    x = torch.tensor(v, dtype=torch.float32)
    return x / x.norm()


def test_neighbours_from_a_known_memory():
    # P = 2 patches, D = 2. Patch 0 of the query points along x, patch 1 along y.
    feats = torch.stack([_unit(1, 0), _unit(0, 1)])
    bank = torch.stack(
        [
            torch.stack([_unit(0, 1), _unit(0, 1)]),  # slot 0: patch 1 identical
            torch.stack([_unit(1, 1), _unit(1, 0)]),  # slot 1: patch 0 at 45 degrees
            torch.stack([_unit(1, 0), _unit(-1, 0)]),  # slot 2: patch 0 identical
            torch.stack([_unit(-1, 0), _unit(1, 1)]),  # slot 3: patch 1 at 45 degrees
        ]
    )
    nb = explorer.patch_neighbours(feats, bank, k=2)
    assert nb.indices.tolist() == [[2, 1], [0, 3]]
    c45 = math.cos(math.pi / 4)
    torch.testing.assert_close(nb.similarities, torch.tensor([[1.0, c45], [1.0, c45]]))
    # PEDAL's distance: squared Euclidean, 2 - 2 cos for unit vectors.
    torch.testing.assert_close(
        nb.distances, torch.tensor([[0.0, 2 - 2 * c45]] * 2), atol=1e-6, rtol=0
    )
    # Leaving out the image's own slot ("other images"):
    nb = explorer.patch_neighbours(feats, bank, k=3, exclude=2)
    assert nb.indices[0].tolist() == [1, 0, 3]


def test_neighbours_rank_by_distance_not_by_cosine():
    # A memory slot is a moving average, not of unit norm: PEDAL's distance decides.
    feats = _unit(1, 0)[None]
    bank = torch.stack([torch.tensor([[3.0, 0.0]]), torch.tensor([[0.9, 0.3]])])
    nb = explorer.patch_neighbours(feats, bank, k=2)
    assert nb.indices.tolist() == [[1, 0]]  # slot 0 points the same way but lies far
    assert nb.similarities[0, 1] == pytest.approx(1.0)


def test_neighbours_ties_go_to_the_lower_slot():
    feats = _unit(1, 0)[None]
    bank = _unit(0, 1).expand(5, 1, 2).clone()
    assert explorer.patch_neighbours(feats, bank, k=5).indices.tolist() == [[0, 1, 2, 3, 4]]


def test_neighbours_reject_bad_input():
    feats, bank = torch.randn(6, 4), torch.randn(3, 6, 4)
    with pytest.raises(ValueError, match="k must be in 1..2"):
        explorer.patch_neighbours(feats, bank, k=3, exclude=0)
    with pytest.raises(ValueError, match="bank must be"):
        explorer.patch_neighbours(feats, torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="patch_feats"):
        explorer.patch_neighbours(feats[None], bank)
    with pytest.raises(ValueError, match="exclude"):
        explorer.patch_neighbours(feats, bank, k=1, exclude=[7])


def test_patch_similarity_and_contributions_by_hand():
    q = torch.stack([_unit(1, 0), _unit(0, 1)])
    g = torch.stack([_unit(1, 1), _unit(0, -1)])
    c = math.cos(math.pi / 4)
    torch.testing.assert_close(explorer.patch_similarity(q, g), torch.tensor([[c, 0.0], [c, -1.0]]))
    torch.testing.assert_close(explorer.match_contributions(q, g), torch.tensor([c / 2, -0.5]))


def test_contributions_sum_to_the_descriptor_similarity():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(6, 16), dim=-1)
    g = F.normalize(torch.randn(6, 16), dim=-1)
    d = evaluation.compute_distmat(q.flatten()[None], g.flatten()[None], metric="cosine")
    total = explorer.match_contributions(q, g).sum()
    torch.testing.assert_close(total, 1 - d[0, 0])
    with pytest.raises(ValueError, match="same"):
        explorer.patch_similarity(q, g[:5])


def test_rank1_skips_same_camera_matches_and_junk():
    q_pids, q_camids = torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0])
    g_pids = torch.tensor([1, -1, 1, 2, 3])
    g_camids = torch.tensor([0, 1, 1, 1, 0])
    distmat = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.9, 0.9],  # same-camera pid 1 and junk skipped: right at g2
            [0.9, 0.1, 0.5, 0.5, 0.2],  # junk skipped, g4 (pid 3) beats g3: wrong
            [0.9, 0.9, 0.9, 0.9, 0.1],  # its only pid-3 image is in its camera: wrong
        ]
    )
    got = explorer.rank1_correct(distmat, q_pids, g_pids, q_camids, g_camids)
    assert got.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="distmat"):
        explorer.rank1_correct(distmat[:2], q_pids, g_pids, q_camids, g_camids)


def test_activation_maps_are_pool_weights_times_the_map_norm():
    torch.manual_seed(0)
    net = models.PatchNet(arch="small", small_width=4, patch_dim=8, embed_dim=4).eval()
    x = torch.randn(2, 3, 64, 32)
    heat, thetas = explorer.patch_activation_maps(net, x)
    assert heat.shape == (2, 6, 16, 8) and thetas.shape == (2, 6, 2, 3)
    fmap = net.feature_map(x)
    w = models.patch_pool_weights(thetas, 16, 8)
    torch.testing.assert_close(heat, w * fmap.norm(dim=1, keepdim=True))
    # The initial stripes: stripe 0 samples rows 0..2.5 of 16 (its last sample row, at 2.5,
    # reads rows 2 and 3 half each) and nothing from row 4 on.
    assert heat[:, 0, 4:].abs().max() == 0 and heat[:, 0, :4].min() > 0


# --------------------------------------------------------------------------- figures


def _img(h=64, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def no_pyplot():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "explorer figures must not go through pyplot"


def test_patch_boxes_figure_draws_the_corners(no_pyplot):
    thetas = models.stripe_thetas()
    fig = explorer.plot_patch_boxes(_img(), thetas, map_size=(16, 8), highlight=2)
    assert isinstance(fig, Figure)
    polys = {a.get_gid(): a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith("box"))}
    np.testing.assert_allclose(
        polys["box2"].get_xy()[:4], viz.patch_corners(thetas, (64, 32), (16, 8))[2].numpy()
    )
    assert polys["box2"].get_linewidth() > polys["box1"].get_linewidth()


def test_figures_update_in_place_without_growing(no_pyplot):
    t = models.stripe_thetas()
    heat = np.random.default_rng(0).random((6, 16, 8))
    fig = explorer.plot_patch_heatmaps(_img(), t, heat, highlight=0)
    n = len(fig.findobj())
    png = explorer.figure_png(fig)
    again = explorer.plot_patch_heatmaps(_img(seed=1), t * 0.5, heat[::-1], highlight=4, fig=fig)
    assert again is fig and len(fig.findobj()) == n
    assert explorer.figure_png(fig) != png and explorer.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"

    sim = np.eye(6) * 0.9
    fig = explorer.plot_patch_match(_img(), _img(seed=2), t, t, sim, map_size=(16, 8), highlight=1)
    n = len(fig.findobj())
    explorer.plot_patch_match(_img(), _img(seed=3), t, t, sim.T * 0.5, map_size=(16, 8), fig=fig)
    assert len(fig.findobj()) == n
    bars = {a.get_gid(): a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith("bar"))}
    assert bars["bar3"].get_width() == pytest.approx(0.45 / 6)  # sim(i, i) / P
    cells = {a.get_gid(): a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith("cell"))}
    assert cells["cell2-2"].get_text() == "0.45" and cells["cell0-1"].get_text() == "0.00"


def test_neighbour_and_ranking_figures(no_pyplot):
    t = models.stripe_thetas()
    fig = explorer.plot_patch_neighbours(
        _img(),
        t,
        [_img(seed=i) for i in range(3)],
        t.expand(3, 6, 2, 3),
        [0.9, 0.8, 0.7],
        patch=4,
        map_size=(16, 8),
        labels=["a", "b", "c"],
    )
    texts = [
        a.get_text() for a in fig.findobj(lambda a: (a.get_gid() or "").startswith("nb-title"))
    ]
    assert texts == ["sim 0.90\na", "sim 0.80\nb", "sim 0.70\nc"]
    fig = explorer.plot_ranking(
        _img(),
        [_img(seed=i) for i in range(4)],
        [0.1, 0.2, 0.3, 0.4],
        [True, False, False, True],
        selected=1,
    )
    frames = {
        a.get_gid(): a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith("g-frame"))
    }
    assert frames["g-frame0"].get_edgecolor()[:3] == pytest.approx(
        matplotlib.colors.to_rgb(viz.MATCH)
    )
    assert frames["g-frame1"].get_linewidth() > frames["g-frame0"].get_linewidth()
    with pytest.raises(ValueError, match="fig was not made"):
        explorer.plot_ranking(_img(), [_img()] * 5, [0.1] * 5, [True] * 5, fig=fig)
    with pytest.raises(ValueError, match="one entry per rank"):
        explorer.plot_ranking(_img(), [_img()] * 2, [0.1], [True] * 2)
    with pytest.raises(ValueError, match="patch"):
        explorer.plot_patch_neighbours(_img(), t, [_img()], t[None], [0.5], patch=6)


# --------------------------------------------------------------------------- the widget


def _records(folder, pids, camids, tag):
    recs = []
    rng = np.random.default_rng(len(tag))
    for i, (pid, cam) in enumerate(zip(pids, camids)):
        path = folder / f"{tag}{i:03d}.png"
        colour = np.array([40 * (pid % 6), 200 - 30 * (pid % 5), 60 + 50 * cam], dtype=np.uint8)
        img = np.broadcast_to(colour, (48, 24, 3)) + rng.integers(
            0, 30, (48, 24, 3), dtype=np.uint8
        )
        Image.fromarray(img.astype(np.uint8)).save(path)
        recs.append(ImageRecord(str(path), int(pid), int(cam)))
    return recs


@pytest.fixture(scope="module")
def explorer_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explorer")
    query = _records(folder, [1, 2, 3, 4], [0, 0, 1, 1], "q")
    gallery = _records(folder, [1, 2, 3, 4, 1, 2, 0, -1], [1, 1, 0, 0, 2, 2, 1, 0], "g")
    train = _records(folder, list(range(10)), [i % 3 for i in range(10)], "t")
    torch.manual_seed(0)
    nets = [
        models.PatchNet(arch="small", small_width=4, patch_dim=8, embed_dim=4) for _ in range(2)
    ]
    pm = memory.PatchMemory(len(train), 6, 8)
    pm.update(torch.arange(len(train)), F.normalize(torch.randn(len(train), 6, 8), dim=-1))
    nets[1].patch_memory = pm
    data = {
        name: explorer.explorer_data(net, query, gallery, train, 32, 16, name=name)
        for name, net in zip(("direct", "adapted"), nets)
    }
    return data, pm


def test_explorer_data_shapes_and_memory(explorer_inputs):
    data, pm = explorer_inputs
    d = data["direct"]
    assert d.query_feats.shape == (4, 6, 8) and d.gallery_thetas.shape == (8, 6, 2, 3)
    assert d.feature_size == (8, 4) and d.distmat.shape == (4, 8)
    # Without a memory, the bank is the training images' patch features, made on first use.
    assert d.bank is None
    feats, thetas = explorer.patch_features(d.model, d.train, 32, 16)
    torch.testing.assert_close(d.memory_bank(), feats)
    torch.testing.assert_close(d.thetas_of_train([3, 1]), thetas[[3, 1]])
    # An adapted model's patch memory is the bank.
    a = data["adapted"]
    assert a.bank_source == "patch memory"
    torch.testing.assert_close(a.memory_bank(), pm.bank)
    with pytest.raises(ValueError, match="bank must be"):
        explorer.explorer_data(
            d.model, d.query, d.gallery, d.train, 32, 16, bank=torch.zeros(3, 6, 8)
        )


@pytest.fixture
def made_widgets():
    """Every ipywidgets widget constructed during the test (public construction hook)."""
    from ipywidgets import Widget

    made = []
    Widget.on_widget_constructed(made.append)
    yield made
    Widget.on_widget_constructed(None)


def test_explorer_callbacks_redraw_what_they_affect(explorer_inputs, no_pyplot, made_widgets):
    data, _ = explorer_inputs
    ex = explorer.PatchExplorer(data, top_k=3, num_neighbours=2, model="adapted")
    assert ex.model_name == "adapted" and ex.model_buttons.layout.display is None
    assert all(ex.png(v).startswith(b"\x89PNG") for v in explorer.VIEWS)
    shown = {v: ex.png(v) for v in explorer.VIEWS}
    counts = dict(ex.render_count)
    n_artists = {v: len(f.findobj()) for v, f in ex.figures.items()}
    figs = dict(ex.figures)

    ex.set_patch(3)
    assert ex.patch_buttons.value == 3 and "patch 4" in ex.status.value
    assert ex.render_count["ranking"] == counts["ranking"]  # the ranked list does not change
    assert ex.png("neighbours") != shown["neighbours"] and ex.png("patches") != shown["patches"]

    ex.set_query(2)
    assert ex.query == 2 and ex.query_slider.value == 2
    assert "pid 3, camid 1" in ex.status.value
    assert all(
        ex.render_count[v] == counts[v] + (1 if v == "ranking" else 2) for v in explorer.VIEWS
    )
    assert ex.png("ranking") != shown["ranking"]

    ranked, _, _ = data["adapted"].ranking(2)
    assert [v for _, v in ex.gallery_dropdown.options][:3] == [0, 1, 2]
    before_match = ex.png("match")
    ex.set_gallery(1)
    assert ex.png("match") != before_match and ex.rank_pos == 1

    ex.set_model("direct")
    assert ex.model_buttons.value == "direct" and ex.rank_pos == 0
    # Figures are reused and updated in place: same objects, same number of artists.
    assert all(ex.figures[v] is figs[v] for v in explorer.VIEWS)
    assert {v: len(f.findobj()) for v, f in ex.figures.items()} == n_artists

    with pytest.raises(ValueError, match="patch must be in 0..5"):
        ex.set_patch(6)
    with pytest.raises(ValueError, match="name must be one of"):
        ex.set_model("nope")
    with pytest.raises(ValueError, match="rank_pos"):
        ex.set_gallery(99)
    ex.close()
    open_ = [type(w).__name__ for w in made_widgets if w.comm is not None]
    assert made_widgets and not open_, f"close() must release every widget it made: {open_}"
    assert ex.figures == {}


def test_explorer_controls_call_the_callbacks(explorer_inputs):
    data, _ = explorer_inputs
    ex = explorer.PatchExplorer(data["direct"], top_k=2, num_neighbours=2)
    assert ex.model_buttons.layout.display == "none"  # one model: no model selector
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("PatchExplorer (direct)")
    png = ex.png("patches")
    ex.query_slider.value = 1  # as the browser does
    assert ex.query == int(ex.subset[1]) and ex.png("patches") != png
    ex.patch_buttons.value = 5
    assert ex.patch == 5
    ex.close()


def test_static_views_for_exported_html(explorer_inputs, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))
    ex = explorer.PatchExplorer(explorer_inputs[0]["direct"], top_k=2, num_neighbours=1)
    ex.show_static()
    images = [o for o in shown if isinstance(o, IPython.display.Image)]
    assert len(images) == len(explorer.VIEWS)
    assert all(im.data[:2] == b"\xff\xd8" for im in images)  # JPEG: small committed notebooks
    shown.clear()
    ex.show_static(format="png")
    assert [o.data for o in shown if isinstance(o, IPython.display.Image)][0] == ex.png("patches")
    with pytest.raises(ValueError, match="format"):
        ex.show_static(format="gif")
    ex.close()


def test_filters_pick_the_queries_the_models_disagree_on(explorer_inputs):
    data, _ = explorer_inputs
    a, b = data["direct"].rank1.numpy(), data["adapted"].rank1.numpy()
    ex = explorer.PatchExplorer(data, top_k=2, num_neighbours=1)
    expected = {
        "all": np.arange(4),
        "b-only": np.flatnonzero(b & ~a),
        "a-only": np.flatnonzero(a & ~b),
        "both-wrong": np.flatnonzero(~a & ~b),
        "both-right": np.flatnonzero(a & b),
    }
    assert set(ex.filters) == {k for k, v in expected.items() if len(v)}
    for key in ex.filters:
        ex.set_filter(key)
        np.testing.assert_array_equal(ex.subset, expected[key])
        assert ex.query == expected[key][0] and ex.query_slider.max == len(expected[key]) - 1
    # A query outside the filter's subset brings back all queries.
    ex.set_filter(list(ex.filters)[-1])
    outside = next(q for q in range(4) if q not in ex.subset)
    ex.set_query(outside)
    assert ex.filter == "all" and ex.query_slider.value == outside
    ex.close()


def test_errors_in_a_control_show_in_the_status_line(explorer_inputs):
    data, _ = explorer_inputs
    ex = explorer.PatchExplorer(data["direct"], top_k=2, num_neighbours=1)

    def broken(p):
        raise RuntimeError("boom")

    ex.set_patch = broken
    ex.patch_buttons.value = 2
    assert "paulkit-error" in ex.status.value and "RuntimeError: boom" in ex.status.value
    ex.close()


def test_explorer_rejects_mismatched_data(explorer_inputs):
    data, _ = explorer_inputs
    d = data["direct"]
    short = explorer.explorer_data(d.model, d.query[:2], d.gallery, d.train, 32, 16, name="short")
    with pytest.raises(ValueError, match="same query/gallery/train"):
        explorer.PatchExplorer({"a": d, "b": short})
    with pytest.raises(ValueError, match="model must be one of"):
        explorer.PatchExplorer(d, model="PAUL")


def test_from_models_takes_the_models_and_records_it_shows(explorer_inputs):
    data, _ = explorer_inputs
    d, a = data["direct"], data["adapted"]
    ex = explorer.PatchExplorer.from_models(
        {"direct": d.model, "adapted": a.model},
        d.query,
        d.gallery,
        d.train,
        32,
        16,
        top_k=2,
        num_neighbours=1,
        model="adapted",
    )
    assert list(ex.data) == ["direct", "adapted"] and ex.model_name == "adapted"
    torch.testing.assert_close(ex.data["direct"].distmat, d.distmat)
    assert ex.data["adapted"].bank_source == "patch memory"
    ex.close()


# --------------------------------------------------------------------------- imports

_LOADED = """
import importlib.util, sys, types
# paulkit without its __init__ (which imports every module): only what the explorer pulls in.
pkg = types.ModuleType("paulkit")
pkg.__path__ = list(importlib.util.find_spec("paulkit").submodule_search_locations)
sys.modules["paulkit"] = pkg
import paulkit.explorer
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("paulkit", "ipywidgets"))))
"""


def test_explorer_imports_no_training_code_and_no_ipywidgets():
    out = subprocess.run(
        [sys.executable, "-c", _LOADED], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(out.stdout.split())
    assert {"paulkit.explorer.data", "paulkit.explorer.figures", "paulkit.explorer.app"} <= loaded
    assert "paulkit.train" not in loaded, "the explorer takes models and records as arguments"
    assert not {m for m in loaded if m.startswith("ipywidgets")}, "ipywidgets only when built"
    # Imports inside functions too (they run only when called).
    for path in sorted((ROOT / "paulkit" / "explorer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.startswith("paulkit.train")], (path.name, names)

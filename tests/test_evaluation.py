"""Tests for paulkit.evaluation: hand-worked rankings, both AP conventions, the protocol's
exclusions, a brute-force per-query reference, error paths and feature extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paulkit import evaluation as E

# --------------------------------------------------------------------------- reference


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Plain per-query loop, written like the original Market-1501 evaluator."""
    cmc_sum, aps, traps, inps, skipped = np.zeros(max_rank), [], [], [], 0
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")  # ties: lower gallery index first
        kept = [
            j
            for j in order
            if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])
        ]
        rows_good = [r for r, j in enumerate(kept) if g_pids[j] == q_pids[i]]
        if not rows_good:
            skipped += 1
            continue
        ngood = len(rows_good)
        ap = trap = 0.0
        for k, r in enumerate(rows_good):
            precision = (k + 1) / (r + 1)
            old_precision = k / r if r != 0 else 1.0
            ap += precision / ngood
            trap += (1.0 / ngood) * (old_precision + precision) / 2
        aps.append(ap)
        traps.append(trap)
        inps.append(ngood / (rows_good[-1] + 1))
        cmc_sum[rows_good[0] :] += 1
    n = len(aps)
    if n == 0:
        return cmc_sum, np.nan, np.nan, np.nan, 0, skipped
    return cmc_sum / n, np.mean(aps), np.mean(traps), np.mean(inps), n, skipped


# --------------------------------------------------------------------------- hand-worked


def three_queries():
    """Seven gallery items; three queries, all with a valid match.

    gallery  g0   g1   g2   g3   g4   g5   g6
    pid       1    2    1    0    1   -1    3      (0: distractor, -1: junk)
    cam       1    1    0    2    2    1    2
    """
    g_pids = np.array([1, 2, 1, 0, 1, -1, 3])
    g_camids = np.array([1, 1, 0, 2, 2, 1, 2])
    q_pids = np.array([1, 2, 3])
    q_camids = np.array([0, 0, 1])
    distmat = np.array(
        [
            [0.5, 0.2, 0.1, 0.3, 0.6, 0.05, 0.4],
            [0.3, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7],
            [0.2, 0.1, 0.3, 0.05, 0.6, 0.4, 0.3],
        ]
    )
    return distmat, q_pids, g_pids, q_camids, g_camids


def test_three_queries_by_hand():
    # q0 (pid 1, cam 0): sorted g5(junk) g2(pid 1 cam 0: same camera, ignored) g1 g3 g6 g0 g4.
    #   valid list: g1 x, g3 x (distractor), g6 x, g0 v (pos 3), g4 v (pos 4)
    #   step AP = (1/4 + 2/5) / 2 = 0.325
    #   trapezoid = 1/2 * ((0 + 1/4)/2 + (1/4 + 2/5)/2) = 1/2 * (0.125 + 0.325) = 0.225
    #   INP = 2 / 5 = 0.4; first match at position 3 (rank 4)
    # q1 (pid 2, cam 0): g1 first -> AP 1 (both conventions), INP 1, rank 1
    # q2 (pid 3, cam 1): g3 g1 g0 then g2 and g6 tie at 0.3: g2 (lower index) goes first;
    #   valid list: g3 x, g1 x, g0 x, g2 x, g6 v (pos 4) (g5 junk, g4 after)
    #   step AP = 1/5 = 0.2; trapezoid = (0 + 1/5)/2 = 0.1; INP = 1/5; rank 5
    # CMC: rank1 1/3 (q1), rank4 2/3 (+q0), rank5 1 (+q2)
    res = E.evaluate(*three_queries(), max_rank=6)
    np.testing.assert_allclose(res.cmc, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(res.ap, [0.325, 1.0, 0.2])
    np.testing.assert_allclose(res.ap_trapezoid, [0.225, 1.0, 0.1])
    np.testing.assert_allclose(res.inp, [0.4, 1.0, 0.2])
    np.testing.assert_array_equal(res.first_match, [3, 0, 4])
    np.testing.assert_array_equal(res.num_good, [2, 1, 1])
    assert res.mAP == pytest.approx(1.525 / 3)
    assert res.mAP_trapezoid == pytest.approx(1.325 / 3)
    assert res.mINP == pytest.approx(1.6 / 3)
    assert (res.num_valid, res.num_skipped) == (3, 0)
    d = res.as_dict()
    assert set(d) == {"rank1", "rank5", "rank10", "mAP", "mAP_trapezoid", "mINP"}
    assert d["rank1"] == pytest.approx(1 / 3) and d["rank5"] == 1.0
    cmc, mAP = E.evaluate_rank(*three_queries(), max_rank=6)
    np.testing.assert_allclose(cmc, res.cmc)
    assert mAP == pytest.approx(res.mAP)
    assert E.evaluate_rank(*three_queries(), ap="trapezoid")[1] == pytest.approx(1.325 / 3)


def test_tie_goes_to_lower_gallery_index():
    distmat, q_pids, g_pids, q_camids, g_camids = three_queries()
    # Swap the labels of g2 and g6 (the tied pair of q2): now the true match has the lower
    # index and wins the tie: q2's match moves from position 4 to position 3.
    g_pids, g_camids = g_pids[[0, 1, 6, 3, 4, 5, 2]], g_camids[[0, 1, 6, 3, 4, 5, 2]]
    distmat = distmat[:, [0, 1, 6, 3, 4, 5, 2]]
    distmat[2] = [0.2, 0.1, 0.3, 0.05, 0.6, 0.4, 0.3]
    res = E.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)
    assert res.first_match[2] == 3
    assert res.ap[2] == pytest.approx(1 / 4)


def test_step_and_trapezoid_on_one_ranking():
    # One query, true matches at positions 0, 2 and 5 of a 7-item list.
    # step      = (1/1 + 2/3 + 3/6) / 3                                    = 0.72222
    # trapezoid = ((1 + 1)/2 + (1/2 + 2/3)/2 + (2/5 + 3/6)/2) / 3           = 0.67778
    g_pids = np.array([7, 0, 7, 0, 0, 7, 0])
    res = E.evaluate(np.arange(7.0)[None], [7], g_pids, [0], np.ones(7, int))
    assert res.mAP == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert res.mAP_trapezoid == pytest.approx((1 + (0.5 + 2 / 3) / 2 + (0.4 + 0.5) / 2) / 3)
    assert res.mAP_trapezoid < res.mAP
    assert res.mINP == pytest.approx(3 / 6)


def test_junk_distractors_and_skipped_queries():
    # Gallery: a junk image and a distractor closest, a same-camera copy, then the match.
    g_pids = np.array([-1, 0, 5, 5, 9])
    g_camids = np.array([1, 1, 0, 1, 1])
    q_pids = np.array([5, 9, 9])
    q_camids = np.array([0, 0, 1])  # query 2: its only match is in its own camera -> skipped
    distmat = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]] * 3)
    res = E.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    # q0: junk ignored, distractor counts as wrong, same-camera g2 ignored -> match at pos 1
    # q1: valid list g1 g2 g3 g4 (the junk is gone) -> match at pos 3
    np.testing.assert_array_equal(res.first_match, [1, 3, -1])
    np.testing.assert_allclose(res.ap[:2], [1 / 2, 1 / 4])
    assert np.isnan(res.ap[2]) and np.isnan(res.ap_trapezoid[2]) and np.isnan(res.inp[2])
    assert (res.num_valid, res.num_skipped) == (2, 1)
    assert res.valid.tolist() == [True, True, False]
    np.testing.assert_allclose(res.cmc, [0, 0.5, 0.5])


def test_cmc_keeps_its_length_past_the_gallery():
    res = E.evaluate([[0.3, 0.1]], [1], [1, 2], [0], [1, 1], max_rank=5)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1, 1])
    assert res.rank(1) == 0 and res.rank(2) == 1


# --------------------------------------------------------------------------- brute force


def random_problem(rng):
    Q, G = rng.integers(1, 10), rng.integers(1, 30)
    num_pids = rng.integers(1, 6)
    cams = 1 if rng.random() < 0.2 else rng.integers(2, 4)  # sometimes a single camera
    q_pids = rng.integers(-1, num_pids, Q)
    g_pids = rng.integers(-1, num_pids, G)
    q_camids, g_camids = rng.integers(0, cams, Q), rng.integers(0, cams, G)
    if rng.random() < 0.5:
        distmat = rng.integers(0, 4, (Q, G)).astype(np.float64)  # many ties
    else:
        distmat = rng.random((Q, G)).astype(np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def test_matches_brute_force_reference_on_random_problems():
    rng = np.random.default_rng(0)
    checked = skipped_seen = 0
    for _ in range(400):
        prob = random_problem(rng)
        cmc, mAP, trap, mINP, n, skipped = reference(*prob, max_rank=8)
        if n == 0:
            with pytest.raises(ValueError, match="no query has a valid"):
                E.evaluate(*prob)
            continue
        res = E.evaluate(*prob, max_rank=8, chunk_size=int(rng.integers(1, 5)))
        np.testing.assert_allclose(res.cmc, cmc)
        assert res.mAP == pytest.approx(mAP)
        assert res.mAP_trapezoid == pytest.approx(trap)
        assert res.mINP == pytest.approx(mINP)
        assert (res.num_valid, res.num_skipped) == (n, skipped)
        checked += 1
        skipped_seen += skipped > 0
    assert checked > 200 and skipped_seen > 50


def test_many_ties_resolved_in_small_blocks(monkeypatch):
    # Every distance equal: the ranking is the gallery order; force the tie path in blocks.
    monkeypatch.setattr(E, "_TIE_ELEMENTS", 7)
    rng = np.random.default_rng(1)
    q_pids, g_pids = rng.integers(0, 3, 12), rng.integers(-1, 3, 40)
    q_camids, g_camids = rng.integers(0, 2, 12), rng.integers(0, 2, 40)
    distmat = np.zeros((12, 40), dtype=np.float32)
    cmc, mAP, trap, mINP, *_ = reference(distmat, q_pids, g_pids, q_camids, g_camids, 10)
    res = E.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    np.testing.assert_allclose(res.cmc, cmc)
    assert (res.mAP, res.mAP_trapezoid, res.mINP) == pytest.approx((mAP, trap, mINP))


def test_infinite_distances_are_ranked_last():
    distmat = np.array([[np.inf, 0.5, np.inf, 0.1]])
    prob = (distmat, [1], [1, 2, 1, 2], [0], [1, 1, 1, 1])
    cmc, mAP, trap, mINP, *_ = reference(*prob, max_rank=4)
    res = E.evaluate(*prob, max_rank=4)
    np.testing.assert_allclose(res.cmc, cmc)
    assert (res.mAP, res.mAP_trapezoid) == pytest.approx((mAP, trap))


def test_larger_random_problem_matches_reference():
    rng = np.random.default_rng(2)
    q_pids, g_pids = rng.integers(0, 40, 60), rng.integers(-1, 40, 500)
    q_camids, g_camids = rng.integers(0, 4, 60), rng.integers(0, 4, 500)
    distmat = rng.random((60, 500)).astype(np.float32).round(2)  # some ties
    cmc, mAP, trap, mINP, n, skipped = reference(distmat, q_pids, g_pids, q_camids, g_camids)
    res = E.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, chunk_size=7)
    np.testing.assert_allclose(res.cmc, cmc)
    assert (res.mAP, res.mAP_trapezoid, res.mINP) == pytest.approx((mAP, trap, mINP))
    assert (res.num_valid, res.num_skipped) == (n, skipped)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_torch_inputs_give_the_numpy_result(dtype):
    prob = three_queries()
    expected = E.evaluate(*prob)
    t = [torch.as_tensor(x) for x in prob]
    res = E.evaluate(t[0].to(dtype), *t[1:])
    np.testing.assert_allclose(res.cmc, expected.cmc)
    assert res.mAP == pytest.approx(expected.mAP)
    lists = E.evaluate(prob[0].tolist(), *[x.tolist() for x in prob[1:]])
    assert lists.mAP == pytest.approx(expected.mAP)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    prob = random_problem(rng)
    while reference(*prob)[4] == 0:
        prob = random_problem(rng)
    cpu = E.evaluate(*prob)
    gpu = E.evaluate(torch.as_tensor(prob[0]).cuda(), *prob[1:])
    assert gpu.mAP == pytest.approx(cpu.mAP)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: (p[0], p[1][:2], *p[2:]), "q_pids has 2 entries"),
        (lambda p: (p[0], p[1], p[2][:-1], *p[3:]), "g_pids has 6 entries"),
        (lambda p: (*p[:3], p[3][:1], p[4]), "q_camids has 1 entries"),
        (lambda p: (*p[:4], p[4][1:]), "g_camids has 6 entries"),
        (lambda p: (np.zeros((0, 7)), np.zeros(0, int), p[2], np.zeros(0, int), p[4]), "non-empty"),
        (lambda p: (np.zeros((3, 0)), p[1], np.zeros(0, int), p[3], np.zeros(0, int)), "non-empty"),
        (lambda p: (np.where(p[0] > 0.55, np.nan, p[0]), *p[1:]), "NaN"),
        (lambda p: (p[0], p[1] + 100, *p[2:]), "no query has a valid"),
        (lambda p: (p[0][0], *p[1:]), "2-D"),
        (lambda p: (p[0], p[1] + 0.5, *p[2:]), "integer labels"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        E.evaluate(*change(three_queries()))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="ap must be"):
        E.evaluate_rank(*three_queries(), ap="area")
    with pytest.raises(ValueError, match="max_rank"):
        E.evaluate(*three_queries(), max_rank=0)
    with pytest.raises(ValueError, match="chunk_size"):
        E.evaluate(*three_queries(), chunk_size=0)


# --------------------------------------------------------------------------- distances


def test_compute_distmat_cosine_and_euclidean():
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(9, 5, generator=g), torch.randn(13, 5, generator=g)
    cos = 1 - torch.nn.functional.normalize(qf, dim=1) @ torch.nn.functional.normalize(gf, dim=1).T
    torch.testing.assert_close(E.compute_distmat(qf, gf), cos)
    torch.testing.assert_close(E.compute_distmat(qf, gf, chunk_size=2), cos)
    euc = E.compute_distmat(qf.numpy(), gf.numpy(), metric="euclidean", chunk_size=4)
    torch.testing.assert_close(euc, torch.cdist(qf, gf), atol=1e-5, rtol=1e-5)
    assert E.compute_distmat(qf.double(), gf.double()).dtype == torch.float32
    # hand-worked: orthogonal unit vectors are at cosine distance 1, Euclidean sqrt(2)
    e = torch.eye(2)
    torch.testing.assert_close(E.compute_distmat(e, e), torch.tensor([[0.0, 1], [1, 0]]))
    torch.testing.assert_close(
        E.compute_distmat(e, 2 * e, metric="euclidean"), torch.tensor([[1.0, 5**0.5], [5**0.5, 1]])
    )


def test_compute_distmat_errors():
    with pytest.raises(ValueError, match="metric"):
        E.compute_distmat(torch.ones(2, 3), torch.ones(2, 3), metric="manhattan")
    with pytest.raises(ValueError, match="dims"):
        E.compute_distmat(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        E.compute_distmat(torch.full((2, 3), float("nan")), torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-empty"):
        E.compute_distmat(torch.ones(0, 3), torch.ones(2, 3))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_features_equals_evaluate_on_distmat(metric):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(20, 16))
    q_pids, g_pids = rng.integers(0, 20, 50), rng.integers(0, 20, 300)
    qf = centres[q_pids] + rng.normal(scale=1.0, size=(50, 16))
    gf = centres[g_pids] + rng.normal(scale=1.0, size=(300, 16))
    q_camids, g_camids = rng.integers(0, 3, 50), rng.integers(0, 3, 300)
    labels = (q_pids, g_pids, q_camids, g_camids)
    full = E.evaluate(E.compute_distmat(qf, gf, metric), *labels)
    chunked = E.evaluate_features(qf, gf, *labels, metric=metric, chunk_size=7)
    np.testing.assert_allclose(chunked.cmc, full.cmc)
    np.testing.assert_allclose(chunked.ap, full.ap)
    assert full.mAP > 0.3  # identity structure is found


# --------------------------------------------------------------------------- rank_gallery


def test_rank_gallery_leaves_out_what_the_evaluator_ignores():
    distmat, q_pids, g_pids, q_camids, g_camids = three_queries()
    idx, dist, match = E.rank_gallery(distmat[0], 1, 0, g_pids, g_camids, k=4)
    np.testing.assert_array_equal(idx, [1, 3, 6, 0])
    np.testing.assert_allclose(dist, [0.2, 0.3, 0.4, 0.5])
    np.testing.assert_array_equal(match, [False, False, False, True])
    idx, _, _ = E.rank_gallery(distmat[2], 3, 1, g_pids, g_camids, k=10)
    np.testing.assert_array_equal(idx, [3, 1, 0, 2, 6, 4])  # tie 2 before 6; junk 5 gone


# --------------------------------------------------------------------------- extraction


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.seen = []

    def descriptor(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.lin(x.mean(dim=(2, 3)))


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((3, 4, 2), float(i)), i % 2, i % 3, f"img_{i}.jpg"


def test_extract_features_eval_mode_no_grad_and_restores_mode():
    model = Recorder().train()
    loader = torch.utils.data.DataLoader(Images(), batch_size=2)
    feats, pids, camids, paths = E.extract_features(model, loader, "cpu", progress=False)
    assert feats.shape == (5, 4) and feats.dtype == torch.float32 and not feats.requires_grad
    assert pids.tolist() == [0, 1, 0, 1, 0] and camids.tolist() == [0, 1, 2, 0, 1]
    assert paths == [f"img_{i}.jpg" for i in range(5)]
    assert model.seen == [(False, False)] * 3
    assert model.training
    expected = model.lin(torch.arange(5.0)[:, None].expand(5, 3))
    torch.testing.assert_close(feats, expected.detach())
    model.eval()
    E.extract_features(model, loader, "cpu", progress=False)
    assert not model.training


def test_extract_features_restores_mode_on_error_and_checks_inputs():
    model = Recorder().train()
    with pytest.raises(ValueError, match="\\(img, pid, camid, path\\)"):
        E.extract_features(model, [(torch.zeros(1, 3, 2, 2), [0])], "cpu", progress=False)
    assert model.training
    with pytest.raises(ValueError, match="descriptor"):
        E.extract_features(nn.Linear(2, 2), [], "cpu", progress=False)
    with pytest.raises(ValueError, match="no batches"):
        E.extract_features(model, [], "cpu", progress=False)

"""paulkit.losses: hand-worked cases, the loop-form reference, gradients, stability, errors."""

from __future__ import annotations

import math

import pytest
import reference as R
import torch
import torch.nn.functional as F

from paulkit import losses as L
from paulkit.memory import PatchMemory

# --------------------------------------------------------------------------- PEDAL


def _toy_bank():
    # one patch, 2-d; slot 0 is the image's own, then distances 0, 2 and 4 from f = (1, 0)
    f = torch.tensor([[[1.0, 0.0]]])
    bank = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]])
    return f, bank


def test_pedal_by_hand():
    f, bank = _toy_bank()
    own = torch.tensor([0])
    # d = (0, 2, 4) over the other slots; S = the k nearest
    want_k1 = math.log(1 + math.exp(-2) + math.exp(-4)) - math.log(1.0)
    want_k2 = math.log(1 + math.exp(-2) + math.exp(-4)) - math.log(1 + math.exp(-2))
    torch.testing.assert_close(L.pedal_loss(f, bank, own, scale=1.0, k=1), torch.tensor(want_k1))
    torch.testing.assert_close(L.pedal_loss(f, bank, own, scale=1.0, k=2), torch.tensor(want_k2))
    # k = N - 1: S holds every other slot and the loss is 0
    torch.testing.assert_close(L.pedal_loss(f, bank, own, scale=1.0, k=3), torch.tensor(0.0))


def test_pedal_excludes_the_images_own_slot():
    f, bank = _toy_bank()
    near = L.pedal_loss(f, bank, torch.tensor([0]), scale=1.0, k=1)
    bank[0, 0] = torch.tensor([-3.0, 0.0])  # moving the own slot far changes nothing
    torch.testing.assert_close(L.pedal_loss(f, bank, torch.tensor([0]), scale=1.0, k=1), near)
    # while excluding slot 1 (d = 0) instead changes the answer
    other = L.pedal_loss(f, bank, torch.tensor([1]), scale=1.0, k=1)
    assert not torch.isclose(other, near)


@pytest.mark.parametrize("scale, k", [(15.0, 10), (5.0, 1), (30.0, 3), (1.0, 39)])
def test_pedal_equals_the_loop_form_in_value_and_gradient(scale, k):
    torch.manual_seed(0)
    b, p, d, n = 6, 3, 8, 40
    feats = F.normalize(torch.randn(b, p, d, dtype=torch.float64), dim=-1)
    bank = 0.9 * F.normalize(torch.randn(n, p, d, dtype=torch.float64), dim=-1)
    index = torch.tensor([0, 5, 39, 12, 7, 3])
    mine_in, ref_in = feats.clone().requires_grad_(), feats.clone().requires_grad_()
    mine = L.pedal_loss(mine_in, bank, index, scale, k)
    ref = R.pedal_loop(ref_in, bank, index, scale, k)
    torch.testing.assert_close(mine, ref)
    mine.backward()
    ref.backward()
    torch.testing.assert_close(mine_in.grad, ref_in.grad)


def test_pedal_gradcheck_and_unnormalised_features():
    torch.manual_seed(1)
    feats = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)  # not unit norm
    bank = torch.randn(12, 2, 4, dtype=torch.float64)
    index = torch.tensor([1, 4, 11])
    assert torch.autograd.gradcheck(lambda x: L.pedal_loss(x, bank, index, 2.0, 3), (feats,))
    torch.testing.assert_close(
        L.pedal_loss(feats, bank, index, 2.0, 3), R.pedal_loop(feats, bank, index, 2.0, 3)
    )


def test_pedal_gradient_flows_only_into_the_batch_features():
    torch.manual_seed(0)
    feats = torch.randn(4, 2, 5, requires_grad=True)
    bank = torch.randn(20, 2, 5, requires_grad=True)
    L.pedal_loss(feats, bank, torch.arange(4), 15.0, 5).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert bank.grad is None


def test_pedal_on_a_momentum_updated_memory():
    torch.manual_seed(0)
    mem = PatchMemory(50, 3, 6)
    mem.update(torch.arange(50), F.normalize(torch.randn(50, 3, 6), dim=-1))
    mem.update(torch.arange(10), F.normalize(torch.randn(10, 3, 6), dim=-1))  # not unit now
    feats = F.normalize(torch.randn(10, 3, 6), dim=-1)
    idx = torch.arange(10)
    plain = L.pedal_loss(feats, mem.bank, idx, 15.0, 10)
    torch.testing.assert_close(plain, R.pedal_loop(feats, mem.bank, idx, 15.0, 10))


def test_pedal_is_stable_at_large_scales():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(4, 2, 8), dim=-1)
    bank = F.normalize(torch.randn(30, 2, 8), dim=-1)
    loss = L.pedal_loss(feats, bank, torch.arange(4), scale=1e4, k=2)
    assert torch.isfinite(loss)  # exp(-1e4 d) underflows; the softmax form does not care
    ref = R.pedal_loop(feats.double(), bank.double(), torch.arange(4), 1e4, 2)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(patch_feats=torch.zeros(2, 3)), "patch_feats"),
        (dict(bank=torch.zeros(10, 2, 5)), "bank"),
        (dict(index=torch.tensor([0, 10])), "out of range"),
        (dict(index=torch.tensor([0])), "index"),
        (dict(k=10), "k must"),
        (dict(k=0), "k must"),
        (dict(scale=0.0), "scale"),
    ],
)
def test_pedal_rejects_bad_input(kwargs, word):
    args = dict(
        patch_feats=torch.zeros(2, 2, 4),
        bank=torch.zeros(10, 2, 4),
        index=torch.tensor([0, 1]),
        scale=15.0,
        k=3,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        L.pedal_loss(**args)


# --------------------------------------------------------------------------- IPFL


def _toy_ipfl():
    # centres on a line: c0 = 0, c1 = 1, c2 = 3. With nearest = 2 each list holds the centre
    # and its nearest other: c0 -> {c0, c1}, c1 -> {c1, c0}, c2 -> {c2, c1}.
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    views = torch.tensor([[0.2, 0.0], [1.0, 0.5], [3.0, 0.0]])  # one view per image
    return views, centers


def test_ipfl_cycle_ranking_by_hand():
    views, centers = _toy_ipfl()
    # x0: d_pos 0.2; c1 (0.8) is not trusted (c0 is in c1's list), c2 (2.8) is:
    #     max(0, 3 + 0.2 - 2.8) = 0.4
    # x1: d_pos 0.5; neither c0 nor c2 is trusted (c1 is in both lists): d_neg = 0 -> 3.5
    # x2: d_pos 0; c1 (2) is trusted (c2 is not in c1's list): 3 + 0 - 2 = 1
    loss = L.ipfl_loss(views, centers, num_views=1, margin=3.0, nearest=2)
    torch.testing.assert_close(loss, torch.tensor((0.4 + 3.5 + 1.0) / 3))
    off = L.ipfl_loss(views, centers, num_views=1, margin=3.0, nearest=2, fallback_zero=False)
    torch.testing.assert_close(off, torch.tensor((0.4 + 0.0 + 1.0) / 3))
    # walking only one candidate, x0 finds no trusted one either: 3 + 0.2 - 0 = 3.2
    short = L.ipfl_loss(views, centers, num_views=1, margin=3.0, nearest=2, max_iter=1)
    torch.testing.assert_close(short, torch.tensor((3.2 + 3.5 + 1.0) / 3))


@pytest.mark.parametrize(
    "num, max_iter, nearest, fallback",
    [(2, 15, 3, True), (2, 2, 3, True), (3, 15, 5, False), (2, 4, 1, True), (1, 15, 4, False)],
)
def test_ipfl_equals_the_loop_form_in_value_and_gradient(num, max_iter, nearest, fallback):
    torch.manual_seed(num + max_iter + nearest)
    b, e = 9, 6
    centers = torch.randn(b, e, dtype=torch.float64)
    views = centers.repeat_interleave(num, 0) + 0.7 * torch.randn(b * num, e, dtype=torch.float64)
    mine_in, ref_in = views.clone().requires_grad_(), views.clone().requires_grad_()
    mine = L.ipfl_loss(mine_in, centers, num, 2.0, max_iter, nearest, fallback)
    ref = R.ipfl_loop(ref_in, centers, num, 2.0, max_iter, nearest, fallback)
    torch.testing.assert_close(mine, ref)
    mine.backward()
    ref.backward()
    torch.testing.assert_close(mine_in.grad, ref_in.grad)


def test_ipfl_gradient_flows_only_into_the_views():
    torch.manual_seed(0)
    views = torch.randn(8, 5, requires_grad=True)
    centers = torch.randn(4, 5, requires_grad=True)
    L.ipfl_loss(views, centers, num_views=2).backward()
    assert views.grad is not None and centers.grad is None


def test_ipfl_on_a_one_image_batch_uses_the_official_fallback():
    """A last partial batch of one image: no other centre, so d_neg = 0 (official)."""
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    centers = views.mean(0, keepdim=True)
    d_pos = (views - centers).norm(dim=1)
    torch.testing.assert_close(L.ipfl_loss(views, centers, num_views=2), (2.0 + d_pos).mean())


@pytest.mark.parametrize(
    "views, centers, kwargs, word",
    [
        (torch.zeros(0, 4), torch.zeros(0, 4), {}, "non-empty batch"),
        (torch.zeros(5, 4), torch.zeros(2, 4), {}, "num"),
        (torch.zeros(4, 3), torch.zeros(2, 4), {}, "same E"),
        (torch.zeros(4, 4), torch.zeros(2, 4), dict(max_iter=0), "max_iter"),
    ],
)
def test_ipfl_rejects_bad_input(views, centers, kwargs, word):
    with pytest.raises(ValueError, match=word):
        L.ipfl_loss(views, centers, **kwargs)


# --------------------------------------------------------------------------- supervised


def test_patch_cross_entropy_sums_over_patches():
    logits = torch.zeros(4, 6, 5)  # uniform: each patch's cross-entropy is log 5
    pids = torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(L.patch_cross_entropy(logits, pids), torch.tensor(6 * math.log(5)))
    torch.manual_seed(0)
    logits = torch.randn(5, 3, 7)
    pids = torch.randint(0, 7, (5,))
    torch.testing.assert_close(
        L.patch_cross_entropy(logits, pids), R.patch_cross_entropy_loop(logits, pids)
    )
    with pytest.raises(ValueError, match="pids"):
        L.patch_cross_entropy(logits, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match="logits"):
        L.patch_cross_entropy(logits[:, 0], pids)


def test_triplet_by_hand_nearest_versus_farthest_positive():
    # identity 0 at angles 0, 30 and 90 degrees; identity 1 at 180 (unit circle, margin 1)
    ang = torch.tensor([0.0, 30.0, 90.0, 180.0]) * math.pi / 180
    emb = torch.stack([ang.cos(), ang.sin()], 1)
    pids = torch.tensor([0, 0, 0, 1])
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    # anchors: 0 deg (pos 30 / 90, neg 180), 30 (pos 0 / 90, neg 180), 90 (pos 30 / 0, neg 180),
    # 180 (pos none: left out)
    near = [1 + chord(30) - 2, 1 + chord(30) - chord(150), 1 + chord(60) - chord(90)]
    far = [1 + chord(90) - 2, 1 + chord(60) - chord(150), 1 + chord(90) - chord(90)]
    want_near = sum(max(0.0, v) for v in near) / 3
    want_far = sum(max(0.0, v) for v in far) / 3
    got_near = L.triplet_loss(emb, pids, margin=1.0)
    got_far = L.triplet_loss(emb, pids, margin=1.0, positive="farthest")
    torch.testing.assert_close(got_near, torch.tensor(want_near), atol=1e-4, rtol=0)
    torch.testing.assert_close(got_far, torch.tensor(want_far), atol=1e-4, rtol=0)


@pytest.mark.parametrize("positive", ["nearest", "farthest"])
def test_triplet_equals_the_loop_form(positive):
    torch.manual_seed(0)
    emb = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5])  # 5 has no positive
    mine = L.triplet_loss(emb, pids, positive=positive)
    ref = R.triplet_loop(emb, pids, positive=positive)
    torch.testing.assert_close(mine, ref)
    (g1,) = torch.autograd.grad(mine, emb)
    (g2,) = torch.autograd.grad(ref, emb)
    torch.testing.assert_close(g1, g2)


def test_triplet_rejects_bad_input():
    emb = torch.randn(4, 3)
    with pytest.raises(ValueError, match="positive"):
        L.triplet_loss(emb, torch.tensor([0, 0, 1, 1]), positive="hardest")
    with pytest.raises(ValueError, match="pids"):
        L.triplet_loss(emb, torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="pids"):
        L.triplet_loss(emb, torch.tensor([0, 1]))

"""paulkit.memory: first sight, momentum updates, the loop-form reference, state dicts, errors."""

from __future__ import annotations

import pytest
import reference as R
import torch

from paulkit.memory import ImageMemory, PatchMemory


def test_patch_memory_first_sight_then_momentum_by_hand():
    mem = PatchMemory(4, num_patches=1, dim=2, momentum=0.1)
    assert mem.bank.shape == (4, 1, 2) and not mem.seen.any()
    mem.update(torch.tensor([2]), torch.tensor([[[1.0, 0.0]]]))
    torch.testing.assert_close(mem.bank[2, 0], torch.tensor([1.0, 0.0]))  # set, not averaged
    mem.update(torch.tensor([2, 0]), torch.tensor([[[0.0, 1.0]], [[3.0, 4.0]]]))
    torch.testing.assert_close(mem.bank[2, 0], torch.tensor([0.9, 0.1]))  # 0.9 old + 0.1 new
    torch.testing.assert_close(mem.bank[0, 0], torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(mem.bank[[1, 3]], torch.zeros(2, 1, 2))  # untouched
    assert mem.seen.tolist() == [True, False, True, False]


def test_patch_memory_matches_the_loop_form_over_many_updates():
    torch.manual_seed(0)
    n, p, d = 30, 3, 5
    mem = PatchMemory(n, p, d, momentum=0.3)
    bank, seen = torch.zeros(n, p, d), torch.zeros(n, dtype=torch.bool)
    for _ in range(6):
        index = torch.randperm(n)[:8]
        feats = torch.randn(8, p, d)
        mem.update(index, feats)
        R.memory_update_loop(bank, seen, index, feats, 0.3)
    torch.testing.assert_close(mem.bank, bank)
    assert torch.equal(mem.seen, seen)


def test_patch_bank_is_stored_patch_major_and_gets_no_gradient():
    mem = PatchMemory(10, 6, 4)
    assert mem.bank.transpose(0, 1).is_contiguous()  # each patch's (N, D) matrix contiguous
    feats = torch.randn(2, 6, 4, requires_grad=True)
    mem.update(torch.tensor([1, 5]), feats)
    assert not mem.bank.requires_grad
    assert mem.bank.to(torch.float64).transpose(0, 1).is_contiguous()  # kept by .to()


def test_patch_memory_state_dict_round_trip():
    torch.manual_seed(0)
    mem = PatchMemory(6, 2, 3)
    mem.update(torch.tensor([0, 4]), torch.randn(2, 2, 3))
    state = mem.state_dict()
    assert set(state) == {"bank", "seen"}
    other = PatchMemory(6, 2, 3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.bank, mem.bank)
    assert torch.equal(other.seen, mem.seen)
    with pytest.raises(ValueError, match="same images"):
        PatchMemory(7, 2, 3).load_state_dict(state)


@pytest.mark.parametrize(
    "index, feats, word",
    [
        (torch.tensor([0, 9]), torch.zeros(2, 2, 3), "out of range"),
        (torch.tensor([-1, 2]), torch.zeros(2, 2, 3), "out of range"),
        (torch.tensor([1, 1]), torch.zeros(2, 2, 3), "twice"),
        (torch.tensor([0.0, 1.0]), torch.zeros(2, 2, 3), "integers"),
        (torch.tensor([0, 1]), torch.zeros(2, 3, 3), "patch_feats"),
        (torch.tensor([0, 1]), torch.zeros(3, 2, 3), "patch_feats"),
    ],
)
def test_patch_memory_rejects_bad_updates(index, feats, word):
    with pytest.raises(ValueError, match=word):
        PatchMemory(5, 2, 3).update(index, feats)


def test_memory_constructors_validate():
    with pytest.raises(ValueError, match="momentum"):
        PatchMemory(5, momentum=1.5)
    with pytest.raises(ValueError, match="num_images"):
        ImageMemory(0)


def test_image_memory_centres_by_hand():
    mem = ImageMemory(3, dim=2, momentum=0.1)
    views = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 0.0]])  # 2 images x 2 views
    centres = mem.update(torch.tensor([2, 0]), views, num_views=2)
    torch.testing.assert_close(centres, torch.tensor([[2.0, 1.0], [1.0, 2.0]]))  # view means
    centres = mem.update(torch.tensor([2]), torch.tensor([[0.0, 0.0], [2.0, 2.0]]), num_views=2)
    torch.testing.assert_close(centres, torch.tensor([[1.9, 1.0]]))  # 0.9 (2, 1) + 0.1 (1, 1)
    torch.testing.assert_close(mem.centers[2], torch.tensor([1.9, 1.0]))
    assert not centres.requires_grad


def test_image_memory_matches_the_loop_form():
    torch.manual_seed(0)
    n, e, num = 20, 4, 3
    mem = ImageMemory(n, e, momentum=0.2)
    centers, seen = torch.zeros(n, e), torch.zeros(n, dtype=torch.bool)
    for _ in range(5):
        index = torch.randperm(n)[:6]
        emb = torch.randn(6 * num, e, requires_grad=True)
        got = mem.update(index, emb, num_views=num)
        want = R.image_memory_update_loop(centers, seen, index, emb.detach(), num, 0.2)
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(mem.centers, centers)
    other = ImageMemory(n, e)
    other.load_state_dict(mem.state_dict())
    torch.testing.assert_close(other.centers, centers)


def test_image_memory_rejects_bad_updates():
    mem = ImageMemory(5, dim=3)
    with pytest.raises(ValueError, match="num"):
        mem.update(torch.tensor([0, 1]), torch.zeros(5, 3), num_views=2)
    with pytest.raises(ValueError, match="embeddings"):
        mem.update(torch.tensor([0, 1]), torch.zeros(4, 2), num_views=2)
    with pytest.raises(ValueError, match="out of range"):
        mem.update(torch.tensor([5]), torch.zeros(2, 3), num_views=2)

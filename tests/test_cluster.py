"""paulkit.cluster: the Jaccard distance against the loop transcription of the authors'
algorithm (random, clustered and tied features, every block size), DBSCAN labels, the
cluster memory against its loop form, the loss, the display-only scores, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference as R
import torch
import torch.nn.functional as F

from paulkit.cluster import (
    ClusterMemory,
    cluster_contrast_loss,
    cluster_labels,
    jaccard_distance,
    pseudo_label_quality,
)


def _clustered(n_ids=6, per_id=9, dim=16, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_ids, dim, generator=g)
    ids = torch.arange(n_ids).repeat_interleave(per_id)
    return centers[ids] + noise * torch.randn(len(ids), dim, generator=g), ids


# --------------------------------------------------------------------------- jaccard_distance


@pytest.mark.parametrize(
    ("n", "k1", "k2"), [(60, 30, 6), (40, 10, 3), (45, 7, 1), (30, 5, 5), (12, 1, 1), (25, 3, 2)]
)
def test_jaccard_equals_the_loop_transcription_on_random_features(n, k1, k2):
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(n + k1))
    ref = R.jaccard_distance_loop(x, k1, k2)
    for chunk in (1, 97, 5000, 2**22):  # one row a block ... everything in one block
        torch.testing.assert_close(jaccard_distance(x, k1, k2, chunk=chunk), ref, atol=1e-5, rtol=0)


def test_jaccard_equals_the_loop_transcription_on_clustered_features_with_duplicates():
    x, _ = _clustered()
    x = torch.cat([x, x[:10], x[5:8], 3.0 * x[20:22]])  # duplicated rows (and a rescaled pair)
    ref = R.jaccard_distance_loop(x, 30, 6)
    # one block: the same similarity product as the reference, so duplicates tie exactly
    torch.testing.assert_close(jaccard_distance(x), ref, atol=1e-5, rtol=0)
    # the expansion happens: some row has more non-zeros than its k-reciprocal set could give
    assert ((ref < 1).sum(1) > 30).any()


@pytest.mark.parametrize("chunk", [1, 300, 2**22])
def test_jaccard_breaks_exact_ties_by_index_like_the_loop(chunk):
    # +-1 features in 16 dimensions normalise to +-1/4: every similarity is a multiple of
    # 1/16, computed exactly in any order, so ties are exact in every block size
    g = torch.Generator().manual_seed(3)
    base = torch.randint(0, 2, (10, 16), generator=g).float() * 2 - 1
    flips = torch.rand(50, 16, generator=g) < 0.15
    x = base[torch.arange(50) % 10] * torch.where(flips, -1.0, 1.0)
    x = torch.cat([x, x[:8]])
    for k1, k2 in ((30, 6), (9, 4)):
        ref = R.jaccard_distance_loop(x, k1, k2)
        got = jaccard_distance(x, k1, k2, chunk=chunk)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_jaccard_properties():
    x, ids = _clustered()
    d = jaccard_distance(x, k1=10, k2=3)
    assert d.shape == (len(x), len(x)) and d.dtype == torch.float32
    assert torch.all(d.diagonal() < 1e-6) and d.min() >= 0 and d.max() <= 1
    torch.testing.assert_close(d, d.t())
    same = ids[:, None] == ids[None, :]
    assert d[same].mean() < 0.5 < d[~same].mean()
    # scale does not matter: features are L2-normalised first
    torch.testing.assert_close(jaccard_distance(5.0 * x, k1=10, k2=3), d, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.randn(10),), r"\(N, D\)"),
        ((torch.ones(10, 4, dtype=torch.long),), "floating point"),
        ((torch.randn(0, 4),), "empty"),
        ((torch.full((10, 4), float("nan")),), "NaN"),
        ((torch.randn(10, 4), 11, 2), r"k1 must be in \[1, 10\]"),
        ((torch.randn(10, 4), 0, 1), "k1"),
        ((torch.randn(10, 4), 5, 6), r"k2 must be in \[1, 5\]"),
        ((torch.randn(10, 4), 5, 2.0), "k2 must be an integer"),
        ((torch.randn(10, 4), 5, 2, 0), "chunk"),
    ],
)
def test_jaccard_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        jaccard_distance(*args)


# --------------------------------------------------------------------------- DBSCAN


def test_cluster_labels_finds_the_groups():
    x, ids = _clustered(n_ids=4, per_id=8, noise=0.1)
    labels = cluster_labels(jaccard_distance(x, k1=10, k2=3))
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    q = pseudo_label_quality(labels, ids)
    assert q["ari"] == pytest.approx(1.0) and q["num_clusters"] == 4


def test_cluster_labels_by_hand_and_errors():
    d = np.array([[0, 0.1, 0.9], [0.1, 0, 0.9], [0.9, 0.9, 0]])
    assert cluster_labels(d, eps=0.5, min_samples=2).tolist() == [0, 0, -1]
    assert cluster_labels(torch.tensor(d), eps=0.5, min_samples=2).tolist() == [0, 0, -1]
    with pytest.raises(ValueError, match="square"):
        cluster_labels(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        cluster_labels(-np.ones((2, 2)))
    with pytest.raises(ValueError, match="eps"):
        cluster_labels(d, eps=0)
    with pytest.raises(ValueError, match="min_samples"):
        cluster_labels(d, min_samples=0)


# --------------------------------------------------------------------------- memory and loss


def test_memory_centroids_are_normalised_means_without_outliers():
    f = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [5.0, 5.0]])
    mem = ClusterMemory(f, torch.tensor([0, 0, 1, -1]))
    want = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)  # means of unit rows
    torch.testing.assert_close(mem.centroids, want)
    assert mem.momentum == 0.2 and mem.num_clusters == 2
    assert not any(True for _ in mem.parameters())


def test_memory_update_matches_the_per_sample_loop():
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(40, 8, generator=g), torch.randint(-1, 5, (40,), generator=g)
    labels[:5] = torch.arange(5)
    mem = ClusterMemory(feats, labels, momentum=0.3)
    ref = mem.centroids.clone()
    for _ in range(4):
        batch_f = torch.randn(16, 8, generator=g)
        batch_y = torch.randint(0, 5, (16,), generator=g)  # clusters hit several times
        mem.update(batch_f, batch_y)
        R.cluster_memory_update_loop(ref, batch_f, batch_y, 0.3)
    torch.testing.assert_close(mem.centroids, ref)
    torch.testing.assert_close(mem.centroids.norm(dim=1), torch.ones(5))


def test_memory_state_dict_and_errors():
    f, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, -1])
    mem = ClusterMemory(f, y)
    other = ClusterMemory(torch.randn(6, 4), y)
    other.load_state_dict(mem.state_dict())
    torch.testing.assert_close(other.centroids, mem.centroids)
    with pytest.raises(ValueError, match="same pseudo-labels"):
        ClusterMemory(f, torch.tensor([0, 0, 1, 1, 1, -1])).load_state_dict(mem.state_dict())
    with pytest.raises(ValueError, match="without gaps"):
        ClusterMemory(f, torch.tensor([0, 0, 2, 2, 2, -1]))
    with pytest.raises(ValueError, match="outlier"):
        ClusterMemory(f, -torch.ones(6, dtype=torch.long))
    with pytest.raises(ValueError, match="6 feature rows"):
        ClusterMemory(f, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="momentum"):
        ClusterMemory(f, y, momentum=1.5)
    with pytest.raises(ValueError, match="drop the outliers"):
        mem.update(torch.randn(2, 4), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        mem.update(torch.randn(2, 5), torch.tensor([0, 1]))


def test_loss_is_cross_entropy_at_temperature_and_leaves_centroids_alone():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(6, 8, generator=g, requires_grad=True)
    cents = F.normalize(torch.randn(3, 8, generator=g), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = cluster_contrast_loss(feats, labels, cents, temperature=0.05)
    unit = feats / feats.norm(dim=1, keepdim=True)
    by_hand = -((unit @ cents.t() / 0.05).log_softmax(1)[torch.arange(6), labels]).mean()
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert feats.grad is not None and cents.grad is None
    with pytest.raises(ValueError, match="drop the outliers"):
        cluster_contrast_loss(feats, torch.tensor([0, 1, 2, 0, 1, -1]), cents)
    with pytest.raises(ValueError, match="temperature"):
        cluster_contrast_loss(feats, labels, cents, temperature=0)
    with pytest.raises(ValueError, match="centroids"):
        cluster_contrast_loss(feats, labels, cents[:, :4])


def test_pseudo_label_quality():
    true = np.array([0, 0, 1, 1, 2, 2])
    q = pseudo_label_quality(np.array([5, 5, 3, 3, 0, 0]), true)  # names do not matter
    assert q["nmi"] == pytest.approx(1.0) and q["ari"] == pytest.approx(1.0)
    q = pseudo_label_quality(torch.tensor([0, 0, 1, 1, -1, -1]), true)
    assert q["ari"] < 1.0 and q["outlier_share"] == pytest.approx(1 / 3)  # outliers: alone
    assert q["num_clusters"] == 2
    with pytest.raises(ValueError, match="same non-zero length"):
        pseudo_label_quality(np.array([0, 1]), true)


def test_import_paulkit_does_not_import_sklearn():
    code = "import sys, paulkit; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Cluster Contrast's training loop (paulkit.cluster): the P x K sampler, a run as a function
of config and seed, resume equal to an uninterrupted run, hidden identities never read,
checkpoints refused on other settings, the CLI. Tiny data: seconds per run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from paulkit import cli, cluster, train
from paulkit import config as C

# 120 images, a width-8 network, one pretraining epoch; 2 epochs of 2 batches of 16
TINY = (
    "data.limit_train=120",
    "model.small_width=8",
    "pretrain.epochs=1",
    "pretrain.batch_size=16",
    "cluster.epochs=2",
    "cluster.iters=2",
    "cluster.batch_size=16",
    "cluster.k1=10",
    "cluster.k2=3",
    "cluster.eval_every=0",
)


@pytest.fixture(scope="module")
def cfg():
    return C.override(C.get_preset("tutorial"), *TINY)


@pytest.fixture(scope="module")
def pretrained(cfg):
    model, _ = train.pretrain(cfg, "cpu", progress=False)
    return model


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def training_history(h):
    timings = ("images_per_s", "cluster_seconds")
    return {k: v for k, v in h.items() if k not in timings}


# --------------------------------------------------------------------------- sampler


def test_pk_batches_draw_k_images_of_one_cluster_across_cameras():
    labels = np.array([0] * 6 + [1] * 5 + [2] * 4 + [-1] * 3)
    cams = np.array([0, 0, 1, 1, 2, 2] + [0, 1, 1, 1, 1] + [3, 3, 3, 3] + [0, 1, 2])
    batches = cluster.pk_batches(labels, cams, 4, 8, 0, seed=0, epoch=0)
    flat = [i for b in batches for i in b]
    assert all(len(b) == 8 for b in batches)  # one pass of 3 x 4 = 12: the partial 4 dropped
    assert len(flat) == 8 and all(labels[i] >= 0 for i in flat)
    for a in range(0, len(flat), 4):
        group = flat[a : a + 4]
        assert len({labels[i] for i in group}) == 1  # K images of one pseudo-identity
        first, rest = group[0], group[1:]
        if labels[first] in (0, 1) and (cams[labels == labels[first]] != cams[first]).any():
            assert all(cams[j] != cams[first] for j in rest)  # from other cameras
        if labels[first] == 2:  # one camera only: the cluster's other images
            assert first not in rest
    # (seed, epoch) alone decide; another epoch draws otherwise; iters chains passes
    assert cluster.pk_batches(labels, cams, 4, 8, 0, seed=0, epoch=0) == batches
    other = [cluster.pk_batches(labels, cams, 4, 8, 0, seed=0, epoch=e) for e in range(1, 6)]
    assert any(b != batches for b in other)
    assert len(cluster.pk_batches(labels, cams, 4, 8, 5, seed=0, epoch=0)) == 5
    assert cluster.pk_batches(-np.ones(5, int), np.zeros(5, int), 4, 8, 3, 0, 0) == []


def test_config_refuses_impossible_cluster_settings(cfg):
    for item, message in (
        ("cluster.batch_size=18", "multiple of cluster.num_instances"),
        ("cluster.k2=11", "at most cluster.k1"),
        ("cluster.eps=0", "cluster.eps=0.0: must be a number > 0"),
        ("cluster.momentum=2", "within 0..1"),
    ):
        with pytest.raises(ValueError, match=message):
            C.validate(C.override(cfg, item))
    with pytest.raises(ValueError, match="fewer than cluster.k1"):
        cluster.train_cluster(C.override(cfg, "cluster.k1=500"), {}, "cpu", progress=False)


# --------------------------------------------------------------------------- the loop


def test_a_run_is_a_function_of_config_and_seed_and_resumes_exactly(cfg, pretrained, tmp_path):
    a, ha = cluster.train_cluster(cfg, pretrained, "cpu", tmp_path / "a" / "c.pt", False)
    b, hb = cluster.train_cluster(cfg, pretrained, "cpu", None, progress=True)
    assert same_weights(state(a), state(b))
    assert training_history(ha) == training_history(hb)
    assert ha["epoch"] == [1, 2] and all(k > 0 for k in ha["num_clusters"])
    assert all(0 <= s < 1 for s in ha["outlier_share"]) and all(0 <= v <= 1 for v in ha["nmi"])
    assert not same_weights(state(a), state(train.adaptation_model(pretrained, cfg)))
    # interrupted after one epoch, then resumed from the checkpoint: the same model
    path = tmp_path / "r" / "c.pt"
    cluster.train_cluster(cfg, pretrained, "cpu", path, progress=False, stop_after=1)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    r, hr = cluster.train_cluster(cfg, pretrained, "cpu", path, progress=False)
    assert same_weights(state(a), state(r))
    assert training_history(ha) == training_history(hr)
    # another model seed draws other batches and augmentations
    s, _ = cluster.train_cluster(C.override(cfg, "seed=1"), pretrained, "cpu", progress=False)
    assert not same_weights(state(a), state(s))


def test_two_workers_train_the_same_model_as_none(cfg, pretrained):
    one = C.override(cfg, "cluster.epochs=1")
    a, _ = cluster.train_cluster(one, pretrained, "cpu", progress=False)
    b, _ = cluster.train_cluster(
        C.override(one, "data.num_workers=2"), pretrained, "cpu", None, False
    )
    assert same_weights(state(a), state(b))


def test_hidden_identities_never_reach_training(cfg, pretrained, monkeypatch):
    """Scrambling the target's training identities changes the displayed NMI/ARI and
    nothing else: training reads the images, never their labels."""
    one = C.override(cfg, "cluster.epochs=1")
    a, ha = cluster.train_cluster(one, pretrained, "cpu", progress=False)
    real = train.target_dataset

    def scrambled(c):
        target = copy.copy(real(c))
        rng = np.random.default_rng(0)
        perm = rng.permutation(1000)
        target.train = [r._replace(pid=int(perm[r.pid])) for r in target.train]
        return target

    monkeypatch.setattr(train, "target_dataset", scrambled)
    b, hb = cluster.train_cluster(one, pretrained, "cpu", progress=False)
    assert same_weights(state(a), state(b))
    assert ha["loss"] == hb["loss"] and ha["num_clusters"] == hb["num_clusters"]
    assert ha["nmi"] != hb["nmi"]  # the display did read them


def test_checkpoint_of_other_settings_is_refused_never_overwritten(cfg, pretrained, tmp_path):
    path = tmp_path / "c.pt"
    one = C.override(cfg, "cluster.epochs=1")
    cluster.train_cluster(one, pretrained, "cpu", path, progress=False)
    before = path.read_bytes()
    with pytest.raises(train.CheckpointMismatch, match="cluster.eps"):
        cluster.train_cluster(C.override(one, "cluster.eps=0.5"), pretrained, "cpu", path, False)
    with pytest.raises(train.CheckpointMismatch, match="cluster.epochs=1"):
        cluster.check_checkpoint(
            torch.load(path, weights_only=True), C.override(one, "cluster.epochs=0"), path
        )
    assert path.read_bytes() == before
    # eval cadence and epochs are not settings: more epochs continue the checkpoint
    assert "cluster.epochs" not in cluster.settings(one)
    assert "cluster.eval_every" not in cluster.settings(one)
    assert cluster.settings(one) != cluster.settings(C.override(one, "pretrain.epochs=2"))


def test_cli_trains_loads_and_evaluates_a_cluster_checkpoint(tmp_path, capsys):
    sets = [a for item in TINY + ("cluster.epochs=1",) for a in ("--set", item)]
    args = ["cluster", "--preset", "tutorial", "--seed", "3", "--out", str(tmp_path), "--quiet"]
    assert cli.main(args + sets) == 0
    out = capsys.readouterr().out
    assert "epoch   1:" in out and "clusters, outliers" in out and "NMI" in out
    path = tmp_path / "tutorial" / "seed3" / "cluster.pt"
    assert path.exists() and (tmp_path / "tutorial" / "seed3" / "pretrain.pt").exists()
    assert cli.main(args + sets) == 0  # a finished checkpoint is loaded, not trained again
    assert "loaded cluster checkpoint" in capsys.readouterr().out
    assert cli.main(["evaluate", "--checkpoint", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cluster epoch 1" in out and "mAP(step)" in out
    assert cli.main(args + ["--set", "cluster.k2=99"]) == 2
    assert "cluster.k2=99" in capsys.readouterr().err
    # another setting is refused naming the key; --restart moves the checkpoint aside
    assert cli.main(args + sets + ["--set", "cluster.eps=0.5"]) == 2
    err = capsys.readouterr().err
    assert "cluster.eps" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert cli.main(args + sets + ["--set", "cluster.eps=0.5", "--restart"]) == 0
    assert len(list(path.parent.glob("cluster.pt.old-*"))) == 1 and path.exists()

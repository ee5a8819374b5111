"""paulkit.distributed: PAUL on two gloo processes over loopback equals one process.

One spawn of two ranks (the module fixture) runs the real ``paulkit.train`` code paths as
torchrun would (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* in the environment); the one-process
references run here. To compare two processes with one, the BatchNorm layers keep frozen
statistics and the views are deterministic (flip for the pseudo pair): batch statistics and
random augmentation streams are the two things that legitimately differ (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torchvision.transforms.v2 import functional as TF

from paulkit import config as C
from paulkit import distributed as ddp
from paulkit import losses, runtime, train
from paulkit.data import transforms as T

pytestmark = pytest.mark.distributed

WORLD = 2


def tiny_cfg(**adapt) -> C.Config:
    """The tutorial preset shrunk to seconds: 96 images, global batch 16 (8 per rank)."""
    cfg = C.override(
        C.get_preset("tutorial"),
        "data.limit_train=96",
        "model.small_width=8",
        "adapt.epochs=2",
        "adapt.batch_size=16",
        "adapt.eval_every=0",
        "adapt.pedal_k=3",
    )
    return dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, **adapt))


# --------------------------------------------------------------------------- exact mode


def _frozen_bn(model: nn.Module) -> nn.Module:
    """BatchNorm layers stay in eval mode (running statistics) whatever ``train()`` says."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), m)
            m.eval()
    return model


def _exact_patches() -> list[tuple[object, str, object]]:
    real = train.adaptation_model

    def plain(height, width):
        return T.test_transform(height, width)

    def flipped(height, width):
        tf = T.test_transform(height, width)
        return lambda img: tf(TF.horizontal_flip(img))

    return [
        (train, "adaptation_model", lambda pre, cfg: _frozen_bn(real(pre, cfg))),
        (T, "train_transform", plain),
        (T, "pseudo_pair_transform", flipped),
    ]


# --------------------------------------------------------------------------- the two ranks


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    for obj, name, value in _exact_patches():
        setattr(obj, name, value)
    tmp_path = Path(tmp)
    cfg = tiny_cfg()
    pre = torch.load(tmp_path / "pre.pt", weights_only=True)
    out: dict = {}
    model, hist = train.adapt(cfg, pre, "cpu", tmp_path / "two.pt", progress=False, stop_after=1)
    out["world"] = runtime.make_runtime(cfg, "cpu").world_size
    out["state"] = _weights(model)
    out["bank"] = model.patch_memory.bank
    out["centers"] = model.image_memory.centers
    out["loss"] = hist["loss"]
    out["eval"] = train.evaluate_model(model, train.target_dataset(cfg), cfg, progress=False)
    out["uneven"] = ddp.all_gather_uneven(torch.arange(rank + 1))
    pcfg = C.override(cfg, "pretrain.epochs=1", "pretrain.batch_size=16")
    pmodel, phist = train.pretrain(pcfg, "cpu", tmp_path / "pre2.pt", progress=False)
    out["pretrain"] = (_weights(pmodel), phist["loss"])
    try:
        train.adapt(tiny_cfg(batch_size=15), pre, "cpu", None, progress=False)
    except ValueError as exc:
        out["error"] = str(exc)
    torch.save(out, tmp_path / f"rank{rank}.pt")
    runtime.shutdown()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    # adapt() attaches the memories to the model; they are compared on their own
    return {k: v.clone() for k, v in model.state_dict().items() if "_memory." not in k}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp: Path, limit_s: float = 150.0) -> None:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + limit_s
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} ranks did not finish in {limit_s:.0f} s (a collective hung?)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with the two ranks: no oversubscription
    try:
        yield _runs(tmp)
    finally:
        torch.set_num_threads(threads)


def _runs(tmp: Path) -> types.SimpleNamespace:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    pre = train.build_model(cfg, num_classes=10, pretrain=True).state_dict()
    torch.save(pre, tmp / "pre.pt")
    _spawn(tmp)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    with pytest.MonkeyPatch.context() as mp_:
        for obj, name, value in _exact_patches():
            mp_.setattr(obj, name, value)
        one, h_one = train.adapt(cfg, pre, "cpu", tmp / "one.pt", progress=False, stop_after=1)
        one_state = _weights(one)
        start = train.adaptation_model(pre, cfg).state_dict()
        one_mem = (one.patch_memory.bank.clone(), one.image_memory.centers.clone())
        # the 2-rank model's weights, evaluated by one process
        check = train.adaptation_model(pre, cfg)
        check.load_state_dict(ranks[0]["state"])
        one_eval = train.evaluate_model(check, train.target_dataset(cfg), cfg, progress=False)
        # epoch 2: the one-process run continued, and the 2-rank checkpoint resumed alone
        full, h_full = train.adapt(cfg, pre, "cpu", tmp / "one.pt", progress=False)
        shutil.copy(tmp / "two.pt", tmp / "resumed.pt")
        res, h_res = train.adapt(cfg, pre, "cpu", tmp / "resumed.pt", progress=False)
    return types.SimpleNamespace(
        ranks=ranks,
        one_state=one_state,
        start=start,
        one_mem=one_mem,
        one_loss=h_one["loss"],
        one_eval=one_eval,
        full=full,
        h_full=h_full,
        resumed=res,
        h_res=h_res,
        two_ckpt=torch.load(tmp / "two.pt", weights_only=True),
        pre2=torch.load(tmp / "pre2.pt", weights_only=True),
    )


def _close(a, b, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m: f"{what}: {m}")


def test_ranks_joined_one_gloo_group(runs):
    assert [r["world"] for r in runs.ranks] == [WORLD, WORLD]
    for r in runs.ranks:  # uneven blocks (1 and 2 items) come back whole, in rank order
        assert r["uneven"].tolist() == [0, 0, 1]


def test_pretraining_runs_under_ddp_with_identical_weights(runs):
    (w0, loss0), (w1, loss1) = (r["pretrain"] for r in runs.ranks)
    assert loss0 == loss1 and loss0[0] > 0
    for k, v in w0.items():
        assert torch.equal(v, w1[k]), f"{k} differs between the ranks"
    assert runs.pre2["epoch"] == 1  # written once, by rank 0


def test_memories_identical_on_every_rank_and_equal_to_one_process(runs):
    r0, r1 = runs.ranks
    assert torch.equal(r0["bank"], r1["bank"])
    assert torch.equal(r0["centers"], r1["centers"])
    bank, centers = runs.one_mem
    assert not torch.equal(bank, torch.zeros_like(bank))
    _close(r0["bank"], bank, "patch memory")
    _close(r0["centers"], centers, "image memory")


def test_losses_and_updated_weights_match_one_process(runs):
    r0, r1 = runs.ranks
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"{k} differs between the ranks"
    for k, v in runs.one_state.items():
        _close(r0["state"][k], v, k)
    moved = [k for k, v in runs.start.items() if not torch.equal(v, r0["state"][k])]
    assert any(k.startswith("backbone.") for k in moved)  # training did change the weights
    assert r0["loss"] == r1["loss"]  # the epoch's loss is averaged over the ranks
    _close(torch.tensor(r0["loss"]), torch.tensor(runs.one_loss), "loss")


def test_sharded_evaluation_equals_one_process(runs):
    for r in runs.ranks:
        assert r["eval"].keys() == runs.one_eval.keys()
        for k, v in runs.one_eval.items():
            assert r["eval"][k] == pytest.approx(v, abs=1e-6), k


def test_two_rank_checkpoint_resumes_in_one_process(runs):
    assert runs.two_ckpt["epoch"] == 1 and "patch_memory" in runs.two_ckpt
    assert not any(k.startswith("module.") for k in runs.two_ckpt["model"])  # not DDP's keys
    assert len(runs.h_res["epoch"]) == 2
    _close(torch.tensor(runs.h_res["loss"]), torch.tensor(runs.h_full["loss"]), "loss history")
    sa, sb = _weights(runs.resumed), _weights(runs.full)
    for k in sa:
        _close(sa[k], sb[k], k)
    _close(runs.resumed.patch_memory.bank, runs.full.patch_memory.bank, "patch memory")
    _close(runs.resumed.image_memory.centers, runs.full.image_memory.centers, "image memory")


def test_batch_not_divisible_by_world_size_is_a_clear_error(runs):
    for r in runs.ranks:
        assert "adapt.batch_size = 15 does not divide by the 2 processes" in r["error"]
    with pytest.raises(ValueError, match="use a multiple of 4"):
        ddp.local_batch(42, 4, "adapt.batch_size")
    assert ddp.local_batch(42, 2) == 21


# --------------------------------------------------------------------------- one process


def test_ipfl_owner_offset_splits_the_global_loss():
    torch.manual_seed(0)
    b, num, e = 8, 2, 12
    views = torch.randn(b * num, e, requires_grad=True)
    centers = torch.randn(b, e)
    whole = losses.ipfl_loss(views, centers, num, margin=1.0, max_iter=4, nearest=2)
    (g_whole,) = torch.autograd.grad(whole, views)
    share, rows = b // WORLD, b // WORLD * num
    parts = [
        losses.ipfl_loss(
            views[r * rows : (r + 1) * rows], centers, num, 1.0, 4, 2, owner_offset=r * share
        )
        for r in range(WORLD)
    ]
    mean = sum(parts) / WORLD  # what DDP's gradient averaging optimises
    (g_parts,) = torch.autograd.grad(mean, views)
    torch.testing.assert_close(mean, whole)
    torch.testing.assert_close(g_parts, g_whole)
    # offset 0 with every view is the default
    torch.testing.assert_close(
        losses.ipfl_loss(views, centers, num, owner_offset=0), losses.ipfl_loss(views, centers, num)
    )


@pytest.mark.parametrize(
    "rows, offset",
    [(8, 5), (7, 0), (4, -1), (0, 0)],  # past the end, half an image, negative, empty
)
def test_ipfl_owner_offset_rejects_bad_positions(rows, offset):
    views, centers = torch.randn(rows, 6), torch.randn(8, 6)
    with pytest.raises(ValueError, match="owner_offset"):
        losses.ipfl_loss(views, centers, num_views=2, owner_offset=offset)


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_loaders_share_each_global_batch_of_one_process(drop_last):
    cfg = tiny_cfg()
    data = list(range(53))  # an item is its own index
    cpu = torch.device("cpu")
    for epoch in (0, 3):
        one = train._train_loader(data, 8, runtime.Runtime(cpu), cfg, epoch, drop_last)
        one = [b.tolist() for b in one]
        per_rank = [
            [b.tolist() for b in train._train_loader(data, 8, rt, cfg, epoch, drop_last)]
            for rt in (runtime.Runtime(cpu, rank=r, world_size=WORLD) for r in range(WORLD))
        ]
        assert len(one) == (53 // 8 if drop_last else 53 // 8 + 1)
        assert all(len(p) == len(one) for p in per_rank)
        for k, batch in enumerate(one):
            together = per_rank[0][k] + per_rank[1][k]
            assert len(per_rank[0][k]) == len(per_rank[1][k])  # equal shares for DDP
            # a last batch of 5 gives each rank 2 of its images (the fifth is left out)
            assert together == batch[: len(together)] and len(batch) - len(together) < WORLD
        seen = [i for p in per_rank for b in p for i in b]
        assert len(seen) == len(set(seen)) == (48 if drop_last else 52)


def test_epoch_order_depends_on_seed_and_epoch_alone():
    a = train.epoch_batches(50, 8, seed=3, epoch=2, drop_last=False)
    torch.rand(100)  # the global generator moves: the order must not
    assert a == train.epoch_batches(50, 8, seed=3, epoch=2, drop_last=False)
    assert a != train.epoch_batches(50, 8, seed=3, epoch=1, drop_last=False)
    assert a != train.epoch_batches(50, 8, seed=4, epoch=2, drop_last=False)
    assert sorted(i for b in a for i in b) == list(range(50)) and len(a[-1]) == 2


def test_shard_bounds_cover_everything_in_order():
    blocks = [ddp.shard_bounds(10, r, 3) for r in range(3)]
    assert blocks == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="fewer processes"):
        ddp.shard_bounds(1, 0, 2)


def test_plain_run_is_one_process_without_a_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rt = runtime.make_runtime(tiny_cfg(), "cpu")
    assert (rt.rank, rt.world_size) == (0, 1)
    x = torch.arange(3)
    assert rt.gather(x) is x
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="torchrun"):
        runtime.make_runtime(tiny_cfg(), "cpu", distributed=True)


def test_sync_bn_on_the_cpu_is_a_clear_error():
    rt = runtime.Runtime(torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(ValueError, match="SyncBatchNorm runs on CUDA only"):
        ddp.wrap(nn.BatchNorm1d(3), rt, sync_bn=True)

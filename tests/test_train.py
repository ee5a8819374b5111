import copy
import dataclasses

import pytest
import reference as R
import torch
import torch.nn.functional as F
from torch import nn

import paulkit as pk
from paulkit import config as C
from paulkit import runtime, train


def tiny_cfg(**adapt) -> C.Config:
    """The tutorial preset shrunk to seconds: few images, a narrow network, 2+2 epochs."""
    cfg = C.override(
        C.get_preset("tutorial"),
        "data.limit_train=96",
        "model.small_width=8",
        "pretrain.epochs=2",
        "pretrain.batch_size=16",
        "adapt.epochs=2",
        "adapt.batch_size=16",
        "adapt.eval_every=0",
        "adapt.pedal_k=3",
    )
    return dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, **adapt))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_phase_hash_follows_the_synthetic_data(monkeypatch):
    """Other synthetic knobs or another generator version never reuse a checkpoint; a phase
    depends only on the domains it reads (pretraining: source; oracle: target)."""
    cfg = C.get_preset("tutorial")
    phases = ("pretrain", "oracle", "adapt")
    before = {p: train.phase_hash(cfg, p) for p in phases}
    assert len(set(before.values())) == 3
    other = dataclasses.replace(pk.data.synth.TARGET, cast_strength=0.1)
    monkeypatch.setitem(pk.data.synth.DOMAINS, "target", other)
    after = {p: train.phase_hash(cfg, p) for p in phases}
    assert after["pretrain"] == before["pretrain"]
    assert after["oracle"] != before["oracle"] and after["adapt"] != before["adapt"]
    monkeypatch.setattr(pk.data.synth, "GENERATOR_VERSION", 999)
    assert all(train.phase_hash(cfg, p) != after[p] for p in phases)


def test_pretrain_schedule_follows_paper():
    p = C.get_preset("paper_market").pretrain
    assert train.pretrain_lrs(p, 0) == {"new": 0.1, "backbone": 0.01, "stn": 0.0}
    assert train.pretrain_lrs(p, 25)["stn"] == 1e-5
    assert train.pretrain_lrs(p, 39)["stn"] == 1e-5
    lrs = train.pretrain_lrs(p, 40)
    assert lrs["stn"] == 0.0
    assert lrs["new"] == pytest.approx(0.01) and lrs["backbone"] == pytest.approx(0.001)


def test_adapt_batchnorm_matches_hand_computed_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    model[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(10, 2, 4, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)
    model.eval()
    train.adapt_batchnorm(model, loader, progress=False)
    assert not model.training  # mode restored
    with torch.no_grad():
        y = model[0](x).transpose(0, 1).reshape(3, -1)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, y.mean(1))
    torch.testing.assert_close(bn.running_var, y.var(1, unbiased=True), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1
    after = model.state_dict()
    for k in before:
        if k.startswith("1.running"):
            continue
        assert torch.equal(before[k], after[k]), k  # num_batches_tracked included


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    cfg = tiny_cfg()
    full, hist_full = train.pretrain(cfg, "cpu", tmp_path / "a.pt", progress=False)
    train.pretrain(cfg, "cpu", tmp_path / "b.pt", progress=False, stop_after=1)
    assert train.utils.load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    resumed, hist = train.pretrain(cfg, "cpu", tmp_path / "b.pt", progress=False)
    assert same_weights(full, resumed)
    assert hist["loss"] == hist_full["loss"]

    ad_full, h1 = train.adapt(cfg, full, "cpu", tmp_path / "c.pt", progress=False)
    train.adapt(cfg, full, "cpu", tmp_path / "d.pt", progress=False, stop_after=1)
    ad_res, h2 = train.adapt(cfg, full, "cpu", tmp_path / "d.pt", progress=False)
    assert same_weights(ad_full, ad_res)
    assert torch.equal(ad_full.patch_memory.bank, ad_res.patch_memory.bank)
    assert h1["loss"] == h2["loss"] and len(h2["epoch"]) == 2


def test_adaptation_never_reads_target_labels(tmp_path, monkeypatch):
    """Scrambling the target's training pids changes nothing in adaptation."""
    cfg = tiny_cfg()
    pre, _ = train.pretrain(cfg, "cpu", None, progress=False)
    a, ha = train.adapt(cfg, pre, "cpu", None, progress=False)
    real = train.target_dataset

    def scrambled(c):
        ds = real(c)
        ds.train = [pk.data.ImageRecord(r.path, -7, r.camid) for r in ds.train]
        return ds

    monkeypatch.setattr(train, "target_dataset", scrambled)
    b, hb = train.adapt(cfg, pre, "cpu", None, progress=False)
    assert same_weights(a, b)
    assert ha["loss"] == hb["loss"]


def test_adapt_history_and_ablation_weights():
    cfg = tiny_cfg(pedal_weight=0.0, eval_every=2)
    pre, hist = train.pretrain(cfg, "cpu", None, progress=False)
    assert len(hist["loss"]) == 2 and all(v > 0 for v in hist["images_per_s"])
    model, h = train.adapt(cfg, pre, "cpu", None, progress=False)
    assert [e["epoch"] for e in h["eval"]] == [0, 2]  # direct transfer is evaluated first
    assert all(v == 0.0 for v in h["pedal"]) and all(v >= 0 for v in h["ipfl"])
    assert 0.0 <= h["eval"][-1]["mAP"] <= 1.0
    # the patch generator and the embedding weights do not move during adaptation
    ref = train.adaptation_model(pre, cfg)
    for name in ("patch_generator", "embed"):
        for (k, v), (_, w) in zip(
            getattr(model, name).state_dict().items(), getattr(ref, name).state_dict().items()
        ):
            if "running" not in k and "num_batches" not in k:
                assert torch.equal(v, w), f"{name}.{k} changed"


def test_train_or_load_reuses_only_matching_checkpoints(tmp_path, capsys):
    cfg = tiny_cfg()
    m1, _ = train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    path = train.checkpoint_path(cfg, "pretrain", out=tmp_path)
    assert path.exists()
    m2, _ = train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    assert "loaded pretrain checkpoint" in capsys.readouterr().out
    assert same_weights(m1, m2)
    # same name and seed, other settings: refused, the key named, the file kept as it was
    cfg2 = C.override(cfg, "pretrain.triplet_weight=0.5")
    before = path.read_bytes()
    with pytest.raises(train.CheckpointMismatch, match="pretrain.triplet_weight"):
        train.train_or_load(cfg2, "pretrain", device="cpu", out=tmp_path, progress=False)
    assert path.read_bytes() == before


def test_truncated_and_foreign_checkpoints_fail_clearly(tmp_path):
    cfg = tiny_cfg()
    path = train.checkpoint_path(cfg, "pretrain", out=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(train.utils.CheckpointError, match="truncated, corrupt") as err:
        train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    assert "weights_only" not in str(err.value) and len(str(err.value).splitlines()) == 1
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(train.utils.CheckpointError, match="not a paulkit checkpoint"):
        train.load_model(path)


def test_unknown_phase():
    with pytest.raises(ValueError, match="phase"):
        train.train_or_load(tiny_cfg(), "finetune")


# --------------------------------------------------------------------------- issue 20


def _small_adapt_setup(cfg):
    torch.manual_seed(0)
    pre = train.build_model(cfg, num_classes=10, pretrain=True).state_dict()
    model = train.adaptation_model(pre, cfg)
    rt = runtime.make_runtime(cfg, "cpu")
    target = train.target_dataset(cfg)
    views = pk.data.MultiViewDataset(
        train.target_train(cfg, target),
        pk.data.transforms.train_transform(cfg.data.height, cfg.data.width),
        pk.data.transforms.pseudo_pair_transform(cfg.data.height, cfg.data.width),
        num_views=cfg.adapt.num_views,
    )
    return pre, model, rt, views


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_memory_init_fills_patches_as_a_pass_of_that_mode_and_leaves_centres_empty(mode):
    """The official initialisation: a no-grad pass over the shuffled loader with both views,
    in train mode (BatchNorm statistics move) or, as the named option, eval mode; the patch
    memory holds each image's first-view features; the image memory holds no centre."""
    cfg = C.override(tiny_cfg(), f"adapt.memory_init={mode}")
    _, model, rt, views = _small_adapt_setup(cfg)
    ref = train.adaptation_model(model.state_dict(), cfg)
    ref.load_state_dict(model.state_dict())
    pm, im = train.init_memories(model, views, rt, cfg, progress=False)
    assert not im.seen.any() and not im.centers.any()  # centres are created on first visit
    assert pm.seen.all()
    # by hand: the same batches in the same order through a copy in the same mode
    ref.train(mode == "train")
    loader = train._train_loader(views, cfg.adapt.batch_size, rt, cfg, train.INIT_EPOCH, False)
    bank = torch.zeros_like(pm.bank)
    with torch.no_grad():
        for v, index in loader:
            out = ref(v.flatten(0, 1))
            bank[index] = out.patch_feats.view(v.shape[0], v.shape[1], 6, -1)[:, 0]
    torch.testing.assert_close(pm.bank, bank)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][0]
    bn_ref = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)][0]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)  # same mode, same pass
    fresh = train.adaptation_model(_small_adapt_setup(cfg)[0], cfg)  # untouched BN statistics
    bn0 = [m for m in fresh.modules() if isinstance(m, nn.BatchNorm2d)][0]
    moved = not torch.equal(bn.running_mean, bn0.running_mean)
    assert moved == (mode == "train")


def test_first_visit_centre_is_the_mean_of_the_views():
    im = pk.memory.ImageMemory(4, dim=3)
    emb = torch.randn(4, 3)  # two images x two views
    centres = im.update(torch.tensor([2, 0]), emb, num_views=2)
    torch.testing.assert_close(centres, emb.view(2, 2, 3).mean(1))
    loss = pk.losses.ipfl_loss(emb, centres, 2, margin=2.0)  # views equal their centre's pull
    assert torch.isfinite(loss)


def test_unknown_memory_init_is_a_clear_error():
    cfg = C.override(tiny_cfg(), "adapt.memory_init=warm")
    _, model, rt, views = _small_adapt_setup(cfg)
    with pytest.raises(ValueError, match="memory_init='warm'"):
        train.init_memories(model, views, rt, cfg, progress=False)


def test_same_seed_same_model_whatever_is_displayed_and_however_many_workers(tmp_path):
    """A run is a function of its config and seed: progress bars, DataLoader workers and
    whatever drew from the global generators before it change nothing."""
    cfg = C.override(tiny_cfg(), "pretrain.epochs=1", "adapt.epochs=1", "adapt.eval_every=1")
    pre_a, _ = train.pretrain(cfg, "cpu", tmp_path / "pa.pt", progress=True)
    torch.rand(10)  # move the global generator
    pre_b, _ = train.pretrain(cfg, "cpu", tmp_path / "pb.pt", progress=False)
    assert same_weights(pre_a, pre_b)
    a, ha = train.adapt(cfg, pre_a, "cpu", tmp_path / "a.pt", progress=True)
    workers = C.override(cfg, "data.num_workers=2")
    b, hb = train.adapt(workers, pre_a, "cpu", tmp_path / "b.pt", progress=False)
    assert same_weights(a, b)
    assert torch.equal(a.patch_memory.bank, b.patch_memory.bank)
    assert ha["loss"] == hb["loss"] and ha["eval"] == hb["eval"]
    ca, cb = (train.utils.load_checkpoint(tmp_path / f) for f in ("a.pt", "b.pt"))
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])


def test_same_model_whatever_thread_count_the_process_had(tmp_path):
    """A CPU run's numbers depend on the intra-op thread count in their last bits; the run
    fixes it (``cpu_threads``, set by runtime.make_runtime), so the machine's core count or
    an ``OMP_NUM_THREADS`` changes nothing. ``cpu_threads=0`` (torch's default) is the
    control: there the thread count shows."""
    threads = torch.get_num_threads()
    runs = {}
    try:
        for fixed in (2, 0):
            cfg = C.override(
                tiny_cfg(), "pretrain.epochs=1", "adapt.epochs=1", f"cpu_threads={fixed}"
            )
            for t in (1, 3):
                torch.set_num_threads(t)
                pre, _ = train.pretrain(cfg, "cpu", tmp_path / f"p{fixed}{t}.pt", progress=False)
                assert torch.get_num_threads() == (fixed or t)
                torch.set_num_threads(t)
                a, _ = train.adapt(cfg, pre, "cpu", tmp_path / f"a{fixed}{t}.pt", progress=False)
                runs[fixed, t] = (pre, a)
    finally:
        torch.set_num_threads(threads)
    assert same_weights(runs[2, 1][0], runs[2, 3][0]) and same_weights(runs[2, 1][1], runs[2, 3][1])
    assert not same_weights(runs[0, 1][0], runs[0, 3][0])  # the control


def test_adaptation_keeps_the_last_partial_batch_unless_told():
    cfg = tiny_cfg()  # 96 images would divide: use 90
    n = 90
    keep = train.epoch_batches(n, cfg.adapt.batch_size, 0, 0, cfg.adapt.drop_last)
    assert not cfg.adapt.drop_last and sum(map(len, keep)) == n  # the official default
    drop = train.epoch_batches(n, cfg.adapt.batch_size, 0, 0, True)
    assert sum(map(len, drop)) == 80


def test_exact_adabn_does_not_depend_on_image_order_or_batches():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
    )
    x = torch.randn(24, 3, 8, 8) * torch.linspace(0.5, 2, 24).view(-1, 1, 1, 1)

    def run(data, batch, exact=True):
        m = copy.deepcopy(model)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch)
        train.adapt_batchnorm(m, loader, progress=False, exact=exact)
        return m[4].running_mean, m[4].running_var

    a = run(x, 4)
    b = run(x[torch.randperm(24)], 6)
    torch.testing.assert_close(a, b)
    # the one-pass form depends on which images share a batch (sorted by scale here)
    c, d = run(x, 4, exact=False), run(x[torch.randperm(24)], 6, exact=False)
    assert not torch.allclose(c[1], d[1], rtol=1e-3)
    # exact: the last layer's statistics are those of its eval-mode inputs
    m = copy.deepcopy(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), 5)
    train.adapt_batchnorm(m, loader, progress=False)
    m.eval()
    with torch.no_grad():
        h = m[:4](x).transpose(0, 1).flatten(1)
    torch.testing.assert_close(m[4].running_mean, h.mean(1))
    torch.testing.assert_close(m[4].running_var, h.var(1), rtol=1e-4, atol=1e-5)


def test_held_out_data_seeds_get_cameras_of_their_own():
    synth = pk.data.synth
    tuning, held = synth._cameras(synth.TARGET, 0), synth._cameras(synth.TARGET, 1)
    assert not torch.allclose(torch.from_numpy(tuning.gain), torch.from_numpy(held.gain))
    cfg = C.override(C.get_preset("tutorial"), "data.synth_seed=2")
    assert "data2-seed0" in str(train.checkpoint_path(cfg, "adapt"))
    assert "data" not in train.checkpoint_path(C.get_preset("tutorial"), "adapt").parent.name


# --------------------------------------------------------------------------- issue 18


def test_paul_step_is_memories_first_then_the_weighted_losses():
    """paul_step by hand: both memories take the batch before the losses, the total is
    pedal_weight x PEDAL + ipfl_weight x IPFL (the loop forms of tests/reference.py), and a
    zero weight leaves its loss out."""
    torch.manual_seed(0)
    n, p, d, e, b, num = 20, 3, 4, 6, 5, 2
    a = C.AdaptConfig(num_views=num, pedal_k=4)
    pm, im = pk.memory.PatchMemory(n, p, d), pk.memory.ImageMemory(n, e)
    pm.update(torch.arange(n), F.normalize(torch.randn(n, p, d), dim=-1))
    feats = F.normalize(torch.randn(b * num, p, d), dim=-1).requires_grad_()
    emb = torch.randn(b * num, e, requires_grad=True)
    index = torch.tensor([3, 7, 0, 12, 19])
    bank, seen = pm.bank.clone(), pm.seen.clone()
    centers, cseen = im.centers.clone(), im.seen.clone()
    out = train.paul_step(feats, emb, index, pm, im, a)
    first = feats.view(b, num, p, d)[:, 0]
    R.memory_update_loop(bank, seen, index, first.detach(), a.memory_momentum)
    c = R.image_memory_update_loop(centers, cseen, index, emb.detach(), num, a.memory_momentum)
    torch.testing.assert_close(pm.bank, bank)
    torch.testing.assert_close(im.centers, centers)
    pedal = R.pedal_loop(first, bank, index, a.pedal_scale, a.pedal_k)
    ipfl = R.ipfl_loop(emb, c, num, a.ipfl_margin, a.ipfl_max_iter, a.ipfl_nearest)
    torch.testing.assert_close(out["pedal"], pedal)
    torch.testing.assert_close(out["ipfl"], ipfl)
    torch.testing.assert_close(out["loss"], a.pedal_weight * pedal + a.ipfl_weight * ipfl)
    only = train.paul_step(feats, emb, index, pm, im, C.AdaptConfig(num_views=num, ipfl_weight=0))
    assert float(only["ipfl"]) == 0.0 and only["loss"].requires_grad
    with pytest.raises(ValueError, match="image-major"):
        train.paul_step(feats[:-1], emb, index, pm, im, a)


def test_adapt_epoch_is_paul_step_on_every_batch(monkeypatch):
    """Training calls paul_step (the function the benchmarks time), once per batch."""
    cfg = tiny_cfg()
    _, model, rt, views = _small_adapt_setup(cfg)
    pm, im = train.init_memories(model, views, rt, cfg, progress=False)
    calls = []
    real = train.paul_step

    def spy(*args, **kwargs):
        calls.append(args[2].tolist())
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "paul_step", spy)
    loader = train._train_loader(views, cfg.adapt.batch_size, rt, cfg, 0, False)
    opt = train._adapt_optimizer(model, cfg.adapt)
    stats = train.adapt_epoch(model, loader, opt, pm, im, rt, cfg.adapt, progress=False)
    assert calls == [list(batch) for batch in loader.batch_sampler]
    assert set(stats) == {"loss", "pedal", "ipfl", "images_per_s"}


def test_accumulator_reports_means_over_batches():
    acc = train.Accumulator()
    acc.add(4, loss=torch.tensor(1.0), acc=0.5)
    acc.add(2, loss=3.0, acc=1.0)
    m = acc.means()
    assert m["loss"] == 2.0 and m["acc"] == 0.75 and acc.images == 6 and m["images_per_s"] > 0

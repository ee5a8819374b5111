"""What paulkit promises about your files (docs/reliability.md, issue 14): a harmless change
never invalidates a checkpoint, nothing trained is ever deleted, one run per output folder,
and a config that cannot train is refused before any work."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import subprocess
import sys

import pytest
import torch

from paulkit import cli, train, utils
from paulkit import config as C
from tests.test_train import same_weights, tiny_cfg


def one_epoch(**sets: str) -> C.Config:
    cfg = C.override(tiny_cfg(), "pretrain.epochs=1", "adapt.epochs=1")
    return C.override(cfg, *(f"{k}={v}" for k, v in sets.items()))


# --------------------------------------------------------------------------- 1: phase hash


def test_harmless_changes_keep_the_phase_hash(tmp_path, monkeypatch):
    """Where the data lives, how it is read, evaluation cadence and epochs are not part of
    the model a phase produces."""
    cfg = tiny_cfg()
    phases = ("pretrain", "oracle", "adapt")
    base = {p: train.phase_hash(cfg, p) for p in phases}
    for sets in (
        ["data.root=/somewhere/else/"],
        ["data.num_workers=3"],
        ["adapt.eval_every=7"],
        ["adapt.epochs=9", "pretrain.epochs=5"],
        ["amp=false", "sync_bn=true", "cpu_threads=0"],
    ):
        other = C.override(cfg, *sets)
        assert {p: train.phase_hash(other, p) for p in ("pretrain", "oracle")} == {
            p: base[p] for p in ("pretrain", "oracle")
        }, sets
        if "pretrain.epochs=5" not in sets:  # adaptation depends on the whole pretraining
            assert train.phase_hash(other, "adapt") == base["adapt"], sets
    assert train.phase_hash(C.override(cfg, "adapt.lr=0.5"), "adapt") != base["adapt"]
    assert train.phase_hash(C.override(cfg, "adapt.lr=0.5"), "pretrain") == base["pretrain"]
    # final_adabn changes the last epoch: there the number of epochs matters
    fa = C.override(cfg, "adapt.final_adabn=true")
    assert train.phase_hash(fa, "adapt") != train.phase_hash(
        C.override(fa, "adapt.epochs=9"), "adapt"
    )


def test_renaming_a_config_key_changes_no_identity():
    """Checkpoints already trained and the published numbers keep their identity across the
    renames of issue 18 (data.synth_preset -> data.synth_size, Config.compile deleted).

    The expected values were printed by paulkit at 32215cf (before the renames) with
    ``cfg = C.get_preset("tutorial")``: ``train.phase_hash(cfg, phase)``,
    ``train._legacy_phase_hash(cfg, phase)`` and ``C.config_hash(cfg)`` (the last is the
    ``config_hash`` of the tutorial entry in docs/results.json).
    """
    cfg = C.get_preset("tutorial")
    assert {p: train.phase_hash(cfg, p) for p in ("pretrain", "oracle", "adapt")} == {
        "pretrain": "7b96e96db3a15e61",
        "oracle": "9415429089b9e3a2",
        "adapt": "17759fabddf6f448",
    }
    assert {p: train._legacy_phase_hash(cfg, p) for p in ("pretrain", "oracle", "adapt")} == {
        "pretrain": "86206f3757606d68",
        "oracle": "388fbc271e06e418",
        "adapt": "ed48ca3b98f952f8",
    }
    assert C.config_hash(cfg) == "5c8aaaa6293860d0"


def test_real_data_identity_is_its_content_not_its_path(tmp_path):
    from tests.test_datasets import make_market

    make_market(tmp_path / "a" / "Market-1501")
    cfg = C.override(tiny_cfg(), "data.source=market1501")
    h = {
        train.phase_hash(C.override(cfg, f"data.root={root}"), "pretrain")
        for root in (tmp_path / "a", f"{tmp_path / 'a'}/", tmp_path / "a" / "Market-1501")
    }
    assert len(h) == 1
    os.rename(tmp_path / "a", tmp_path / "moved")
    moved = C.override(cfg, f"data.root={tmp_path / 'moved'}")
    assert train.phase_hash(moved, "pretrain") in h
    # other content under the same path is another data set
    (tmp_path / "moved" / "Market-1501" / "bounding_box_train" / "0002_c1s1_000451_03.jpg").unlink()
    train._FINGERPRINTS.clear()
    assert train.phase_hash(moved, "pretrain") not in h


def test_more_epochs_continue_a_finished_checkpoint(tmp_path, capsys):
    cfg = one_epoch()
    train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    two = C.override(cfg, "pretrain.epochs=2", "data.num_workers=1")
    m, hist = train.train_or_load(two, "pretrain", device="cpu", out=tmp_path, progress=False)
    assert "resuming pretrain" in capsys.readouterr().out
    assert hist["epoch"] == [1, 2]
    straight, _ = train.pretrain(two, "cpu", tmp_path / "straight.pt", progress=False)
    assert same_weights(m, straight)
    # fewer epochs than the checkpoint holds: refused, the key named, the file kept
    with pytest.raises(train.CheckpointMismatch, match="pretrain.epochs=1 asks for"):
        train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    assert train.checkpoint_path(cfg, "pretrain", out=tmp_path).exists()


def test_a_mismatch_is_refused_and_restart_moves_the_file_aside(tmp_path):
    cfg = one_epoch()
    train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    path = train.checkpoint_path(cfg, "pretrain", out=tmp_path)
    before = path.read_bytes()
    other = C.override(cfg, "model.embed_dim=64")
    with pytest.raises(train.CheckpointMismatch) as err:
        train.train_or_load(other, "pretrain", device="cpu", out=tmp_path, progress=False)
    msg = str(err.value)
    assert "model.embed_dim: 128 in the checkpoint, 64 now" in msg
    assert "--out" in msg and "--restart" in msg and len(msg.splitlines()) == 1
    assert path.read_bytes() == before
    train.train_or_load(other, "pretrain", device="cpu", out=tmp_path, progress=False, restart=True)
    aside = list(path.parent.glob("pretrain.pt.old-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert utils.load_checkpoint(path)["settings"]["model.embed_dim"] == 64


def test_direct_pretrain_never_overwrites_a_foreign_checkpoint(tmp_path):
    cfg = one_epoch()
    train.pretrain(cfg, "cpu", tmp_path / "p.pt", progress=False)
    before = (tmp_path / "p.pt").read_bytes()
    with pytest.raises(train.CheckpointMismatch, match="pretrain.lr_new"):
        train.pretrain(C.override(cfg, "pretrain.lr_new=0.5"), "cpu", tmp_path / "p.pt")
    assert (tmp_path / "p.pt").read_bytes() == before


def test_checkpoints_of_an_older_paulkit(tmp_path):
    """Without stored settings: accepted when its old hash matches, else refused by name."""
    cfg = one_epoch()
    path = train.checkpoint_path(cfg, "pretrain", out=tmp_path)
    train.pretrain(cfg, "cpu", path, progress=False)
    state = utils.load_checkpoint(path)
    del state["settings"]
    state["config_hash"] = train._legacy_phase_hash(cfg, "pretrain")
    torch.save(state, path)
    train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    with pytest.raises(train.CheckpointMismatch, match="written by an older paulkit"):
        train.train_or_load(
            C.override(cfg, "data.num_workers=1"), "pretrain", "", "cpu", tmp_path, False
        )


def test_cli_mismatch_is_one_line_and_restart_flag(tmp_path, capsys):
    args = ["pretrain", "--preset", "tutorial", "--out", str(tmp_path), "--quiet"]
    args += ["--set", "data.limit_train=48", "--set", "model.small_width=4"]
    args += ["--set", "pretrain.epochs=1", "--set", "pretrain.batch_size=16"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "source: synthetic source (size tiny, data seed 0) read from" in out
    assert cli.main([*args, "--set", "pretrain.lr_new=0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pretrain.lr_new" in err and "--restart" in err and len(err.splitlines()) == 1
    assert cli.main([*args, "--set", "pretrain.lr_new=0.2", "--restart"]) == 0
    run = train.checkpoint_path(tiny_cfg(), "pretrain", out=tmp_path).parent
    assert len(list(run.glob("pretrain.pt.old-*"))) == 1


# --------------------------------------------------------------------------- 3: one run per folder


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_in_the_same_folder_is_refused_with_the_holders_pid(tmp_path, capsys):
    cfg = one_epoch()
    run = train.checkpoint_path(cfg, "pretrain", out=tmp_path).parent
    run.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(utils.RunLockError, match=f"PID {holder.pid}"):
            train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
        assert not (run / "pretrain.pt").exists()
        args = ["pretrain", "--preset", "tutorial", "--out", str(tmp_path), "--quiet"]
        assert cli.main([*args, "--set", "pretrain.epochs=1"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"PID {holder.pid}" in err and len(err.splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its stale lock file (its PID still written in it) is taken over
    assert str(holder.pid) in (run / ".lock").read_text()
    train.train_or_load(cfg, "pretrain", device="cpu", out=tmp_path, progress=False)
    assert (run / "pretrain.pt").exists()


def test_run_lock_is_reentrant_and_exclusive_across_open_files(tmp_path):
    with utils.run_lock(tmp_path):
        with utils.run_lock(tmp_path):  # adapt -> pretrain in one process
            assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        other = os.open(tmp_path / ".lock", os.O_RDWR)  # another open file: another holder
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    other = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the run
    try:
        with pytest.raises(utils.RunLockError, match="in use by another paulkit run"):
            with utils.run_lock(tmp_path):
                pass
    finally:
        os.close(other)


# --------------------------------------------------------------------------- 4: refuse up front


@pytest.mark.parametrize(
    "key, value",
    [
        ("adapt.epochs", "0"),
        ("pretrain.epochs", "-1"),
        ("pretrain.batch_size", "0"),
        ("adapt.batch_size", "1"),
        ("adapt.num_views", "0"),
        ("cpu_threads", "-1"),
    ],
)
def test_impossible_settings_are_refused_before_any_work(capsys, tmp_path, key, value):
    args = ["adapt", "--preset", "tutorial", "--out", str(tmp_path), "--set", f"{key}={value}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paulkit adapt: error: " + f"{key}={value}")
    assert len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing read, nothing written
    with pytest.raises(ValueError, match=key):
        train.train_or_load(C.override(tiny_cfg(), f"{key}={value}"), "adapt", out=tmp_path)


def test_a_batch_larger_than_the_training_set_is_refused_when_it_would_train_nothing(tmp_path):
    """With drop_last every batch would be dropped: zero steps and a "final loss" of 0."""
    cfg = C.override(one_epoch(), "data.limit_train=8", "pretrain.drop_last=true")
    with pytest.raises(ValueError, match="pretrain.batch_size=16 is larger than the 8"):
        train.pretrain(cfg, "cpu", tmp_path / "p.pt", progress=False)
    assert not (tmp_path / "p.pt").exists()
    pre = train.build_model(cfg, num_classes=4, pretrain=True)
    with pytest.raises(ValueError, match="adapt.batch_size=16"):
        train.adapt(C.override(cfg, "adapt.drop_last=true"), pre, "cpu", None, progress=False)


@pytest.mark.parametrize("kind", ["file", "readonly"])
def test_an_unusable_out_is_refused_before_any_work(tmp_path, capsys, kind):
    if kind == "file":
        out = tmp_path / "out"
        out.write_text("I am a file")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    assert cli.main(["pretrain", "--preset", "tutorial", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and len(err.splitlines()) == 1
    assert "source:" not in capsys.readouterr().out  # refused before the data was read


# --------------------------------------------------------------------------- 5: unreadable files


def test_empty_and_random_checkpoints_are_one_line_without_torchs_advice(tmp_path, capsys):
    for name, data in (("empty.pt", b""), ("random.pt", os.urandom(500))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(utils.CheckpointError) as err:
            utils.load_checkpoint(tmp_path / name)
        msg = str(err.value)
        assert len(msg.splitlines()) == 1 and "weights_only" not in msg
        assert cli.main(["evaluate", "--checkpoint", str(tmp_path / name)]) == 2
        cli_err = capsys.readouterr().err.strip()
        assert len(cli_err.splitlines()) == 1 and "weights_only" not in cli_err
    assert "is empty" in cli_err or "cannot be read" in cli_err


# --------------------------------------------------------------------------- should fix


def test_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        utils.atomic_save({"x": torch.zeros(1)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o644


def test_bad_device_and_diverging_run_are_one_line(tmp_path, capsys):
    assert cli.main(["adapt", "--preset", "tutorial", "--device", "banana"]) == 2
    err = capsys.readouterr().err.strip()
    assert "banana" in err and len(err.splitlines()) == 1
    args = ["pretrain", "--preset", "tutorial", "--out", str(tmp_path), "--quiet"]
    args += ["--set", "data.limit_train=32", "--set", "model.small_width=4"]
    args += ["--set", "pretrain.epochs=1", "--set", "pretrain.batch_size=16"]
    assert cli.main([*args, "--set", "pretrain.lr_new=1e30"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the loss became" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- 2: which data set


def test_market_or_duke_read_as_msmt17_is_refused_by_name(tmp_path, capsys):
    from paulkit.data import MSMT17, DatasetError, DukeMTMCreID, Market1501
    from tests.test_datasets import make_duke, make_market

    market = make_market(tmp_path / "Market-1501")
    with pytest.raises(DatasetError, match="looks like Market-1501") as err:
        MSMT17(market)
    assert "market1501" in str(err.value) and len(str(err.value).splitlines()) == 1
    duke = make_duke(tmp_path / "DukeMTMC-reID")
    with pytest.raises(DatasetError, match="looks like DukeMTMC-reID"):
        MSMT17(duke)
    # the CLI: one line, before any training
    args = ["pretrain", "--preset", "tutorial", "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main([*args, "--set", "data.source=msmt17", "--data", str(market)]) == 2
    err = capsys.readouterr().err.strip()
    assert "looks like Market-1501" in err and len(err.splitlines()) == 1
    # the readers of the other two sets point the right way too
    with pytest.raises(DatasetError, match="looks like Market-1501"):
        DukeMTMCreID(market)
    with pytest.raises(DatasetError, match="looks like DukeMTMC-reID"):
        Market1501(duke)


def test_an_msmt17_list_line_naming_a_missing_image_names_the_list_and_the_line(tmp_path):
    from paulkit.data import MSMT17, DatasetError, load_image
    from tests.test_datasets import make_msmt

    root = make_msmt(tmp_path / "MSMT17_V1")
    missing = root / "train" / "0000" / "0000_001_05_0303noon_0020_1.jpg"
    missing.unlink()
    ds = MSMT17(root)
    with pytest.raises(DatasetError, match=r"list_train.txt line 2, does not exist"):
        load_image(missing)
    assert any(r.path == str(missing) for r in ds.train)
    (root / "train" / "0000" / "0000_000_01_0303morning_0015_0.jpg").unlink()
    with pytest.raises(DatasetError, match="list_train.txt line 1 names"):
        MSMT17(root)


def test_every_command_says_which_folders_it_read(tmp_path, capsys):
    from tests.test_datasets import make_market

    make_market(tmp_path / "data" / "Market-1501")
    args = ["adapt", "--preset", "tutorial", "--out", str(tmp_path / "out"), "--quiet"]
    args += ["--data", str(tmp_path / "data"), "--set", "data.target=market1501"]
    args += ["--set", "adapt.epochs=0"]  # refused up front: nothing read
    assert cli.main(args) == 2
    assert "read from" not in capsys.readouterr().out
    train_cfg = one_epoch(**{"data.target": "market1501", "data.root": str(tmp_path / "data")})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("paulkit")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        train.target_dataset(train_cfg)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    line = records[0].getMessage()
    assert "target: Market1501 read from" in line and "Market-1501" in line
    assert "train 3 images / 2 ids" in line


def test_a_corrupt_image_in_a_loader_worker_is_one_line(tmp_path, capsys):
    """The paper presets read with 8 workers: the worker's traceback must not reach the user."""
    from tests.test_datasets import make_market

    root = make_market(tmp_path / "data" / "Market-1501")
    (root / "bounding_box_train" / "0002_c1s1_000451_03.jpg").write_bytes(b"garbage")
    args = ["pretrain", "--preset", "tutorial", "--out", str(tmp_path / "out"), "--quiet"]
    args += ["--data", str(tmp_path / "data"), "--set", "data.source=market1501"]
    args += ["--set", "data.num_workers=1", "--set", "pretrain.epochs=1"]
    args += ["--set", "model.small_width=4", "--device", "cpu"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "0002_c1s1_000451_03.jpg cannot be read" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_bad_model_weights_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "r18.pth"
    bad.write_bytes(os.urandom(200))
    args = ["pretrain", "--preset", "tutorial", "--out", str(tmp_path / "out"), "--quiet"]
    args += ["--set", "model.arch=resnet18", "--set", f"model.weights={bad}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "r18.pth cannot be read" in err and len(err.splitlines()) == 1
    assert "weights_only" not in err


def test_a_rank_started_without_its_peers_stops_with_one_line(tmp_path):
    """WORLD_SIZE=2 but only rank 0 starts: it waits PAULKIT_DDP_TIMEOUT seconds, then says
    that the other processes never joined (instead of hanging silently)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PAULKIT_DDP_TIMEOUT="3",
    )
    code = "from paulkit import runtime; runtime.setup('cpu')"
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "the other processes did not join at 127.0.0.1" in run.stderr
    assert "PAULKIT_DDP_TIMEOUT" in run.stderr


def test_losses_refuse_an_empty_batch_and_document_nan():
    from paulkit import losses as L

    bank = torch.nn.functional.normalize(torch.randn(5, 2, 4), dim=-1)
    with pytest.raises(ValueError, match="empty"):
        L.pedal_loss(torch.zeros(0, 2, 4), bank, torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no image"):
        L.ipfl_loss(torch.zeros(0, 4), torch.zeros(0, 4))
    # NaN in, NaN out (documented): training stops at the first non-finite loss in one line
    feats = torch.full((1, 2, 4), float("nan"))
    assert torch.isnan(L.pedal_loss(feats, bank, torch.tensor([0]), 15.0, 3))

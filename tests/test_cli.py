import subprocess
import sys

import pytest

from paulkit import cli


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paulkit", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for name in ("synth", "pretrain", "adapt", "cluster", "evaluate", "reproduce"):
        assert name in out
    assert "--set" in run("adapt", "--help").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["adapt", "--preset", "nope"], "unknown preset 'nope'"),
        (["adapt", "--set", "adapt.nope=1"], "unknown key 'adapt.nope'"),
        (["adapt", "--set", "adapt.epochs=many"], "expected a number"),
        (["pretrain", "--set", "noequals"], "key=value"),
    ],
)
def test_bad_arguments_give_one_line(capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_missing_checkpoint_is_one_line(capsys, tmp_path):
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_missing_real_data_is_one_line(tmp_path):
    res = run(
        "pretrain",
        "--preset",
        "tutorial",
        "--set",
        "data.source=market1501",
        "--data",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "nowhere" in res.stderr


def test_unknown_subcommand_exits_nonzero():
    res = run("fly")
    assert res.returncode != 0 and "invalid choice" in res.stderr


def test_evaluate_honours_data_overrides_refuses_the_rest_and_names_the_checkpoints_preset(
    tmp_path, capsys
):
    from paulkit import config as C
    from paulkit import train

    cfg = C.override(
        C.get_preset("tutorial"),
        "data.limit_train=32",
        "model.small_width=4",
        "pretrain.epochs=1",
        "pretrain.batch_size=16",
    )
    ck = tmp_path / "pre.pt"
    train.pretrain(cfg, "cpu", ck, progress=False)
    base = ["evaluate", "--preset", "synth_small", "--checkpoint", str(ck), "--quiet"]
    assert cli.main([*base, "--set", "model.arch=resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.arch" in err and "data.root" in err and len(err.splitlines()) == 1
    assert cli.main([*base, "--set", "data.num_workers=1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "preset tutorial" in out and "synth_small" not in out and "rank-1" in out
    assert "target: synthetic target (preset tiny, data seed 0)" in out

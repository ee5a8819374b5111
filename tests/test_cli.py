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
    assert "target: synthetic target (size tiny, data seed 0)" in out
    # the old name of data.synth_size: accepted, with one line saying so
    assert cli.main([*base, "--set", "data.synth_preset=tiny", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "paulkit evaluate: warning: --set data.synth_preset is deprecated and goes in the next "
        "release: use data.synth_size"
    ]


def test_synth_takes_a_size_and_still_reads_the_old_preset_flag(tmp_path, capsys, monkeypatch):
    from paulkit.data import synth
    from tests.test_synth import MICRO

    monkeypatch.setitem(synth.SIZES, "micro", MICRO)
    assert cli.main(["synth", "--size", "micro", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "source: made" in out and "target: made" in out and "warning" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "source_micro_seed0",
        "target_micro_seed0",
    ]
    assert cli.main(["synth", "--preset", "micro", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.count("already there (size micro, seed 0); skipped") == 2
    assert err.strip() == (
        "paulkit synth: warning: --preset is deprecated and goes in the next release: use --size"
    )
    assert cli.main(["synth", "--preset", "micro", "--size", "tiny", "--root", str(tmp_path)]) == 2
    assert "give --size only" in capsys.readouterr().err

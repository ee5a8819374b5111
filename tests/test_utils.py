import os

import pytest
import torch

from paulkit import runtime, utils


def test_atomic_save_roundtrip_and_no_leftovers(tmp_path):
    path = utils.atomic_save({"w": torch.arange(3)}, tmp_path / "sub" / "ck.pt")
    assert utils.load_checkpoint(path)["w"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path / "sub") == ["ck.pt"]


def test_atomic_save_failure_keeps_old_file(tmp_path):
    path = tmp_path / "ck.pt"
    utils.atomic_save({"v": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        utils.atomic_save({"v": Boom()}, path)
    assert utils.load_checkpoint(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(utils.CheckpointError, match="does not exist"):
        utils.load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    utils.atomic_save({"w": torch.zeros(1000)}, bad)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(utils.CheckpointError, match="truncated"):
        utils.load_checkpoint(bad)


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"obj": utils.CheckpointError("x")}, path)
    with pytest.raises(utils.CheckpointError):
        utils.load_checkpoint(path)


def test_select_device(monkeypatch):
    monkeypatch.delenv("PAULKIT_DEVICE", raising=False)
    assert runtime.select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            runtime.select_device("cuda")
        assert runtime.select_device().type in ("cpu", "mps")


def test_set_seed_repeats():
    utils.set_seed(3)
    a = torch.rand(4)
    utils.set_seed(3)
    assert torch.equal(a, torch.rand(4))

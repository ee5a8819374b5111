import dataclasses

import pytest

from paulkit import config, paths


def test_every_preset_is_frozen_and_hashable():
    for name, cfg in config.PRESETS.items():
        assert cfg.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.seed = 3  # type: ignore[misc]
        assert len(config.config_hash(cfg)) == 16


def test_paper_presets_follow_paper():
    m, d = config.get_preset("paper_market"), config.get_preset("paper_duke")
    assert (m.data.height, m.data.width) == (384, 128)
    assert m.model.arch == "resnet50" and m.model.num_patches == 6
    assert (m.adapt.batch_size, m.adapt.pedal_scale) == (42, 15.0)
    assert (d.adapt.batch_size, d.adapt.pedal_scale) == (40, 5.0)
    assert (m.adapt.pedal_weight, m.adapt.ipfl_weight, m.adapt.ipfl_margin) == (2.0, 1.0, 2.0)
    assert (m.pretrain.epochs, m.pretrain.batch_size, m.pretrain.lr_step) == (60, 48, 40)


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="tutorial"):
        config.get_preset("nope")


def test_preset_from_env(monkeypatch):
    monkeypatch.setenv("PAULKIT_PRESET", "synth_small")
    assert config.preset_from_env().name == "synth_small"
    assert config.preset_from_env("tutorial").name == "tutorial"  # an explicit name wins
    monkeypatch.delenv("PAULKIT_PRESET")
    assert config.preset_from_env().name in ("tutorial", "synth_gpu", "paper_market")


def test_preset_from_device_and_data(monkeypatch, tmp_path):
    """CPU: tutorial. GPU: synth_gpu, or paper_market when MSMT17 and Market-1501 are there."""
    import torch
    from test_datasets import make_market, make_msmt

    monkeypatch.delenv("PAULKIT_PRESET", raising=False)
    monkeypatch.setenv("PAULKIT_DATA", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.preset_from_env().name == "tutorial"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.preset_from_env().name == "synth_gpu"
    make_market(tmp_path / "Market-1501-v15.09.15")
    assert not config.real_data_present("paper_market")  # MSMT17 is missing
    assert config.preset_from_env().name == "synth_gpu"
    make_msmt(tmp_path / "MSMT17_V1")
    assert config.real_data_present("paper_market")
    assert config.preset_from_env().name == "paper_market"
    assert config.real_data_present("tutorial")  # synthetic only


def test_override_and_roundtrip():
    cfg = config.override(
        config.get_preset("tutorial"), "adapt.epochs=3", "seed=7", "model.weights=none"
    )
    assert cfg.adapt.epochs == 3 and cfg.seed == 7 and cfg.model.weights is None
    back = config.config_from_dict(config.config_to_dict(cfg))
    assert back == cfg
    assert config.config_hash(back) == config.config_hash(cfg)
    assert config.config_hash(cfg) != config.config_hash(config.get_preset("tutorial"))


@pytest.mark.parametrize(
    "item, msg",
    [
        ("adapt.epochs", "key=value"),
        ("adapt.nope=1", "unknown key"),
        ("nope=1", "unknown key"),
        ("adapt=1", "unknown key"),
        ("adapt.epochs=two", "expected a number"),
        ("deterministic=maybe", "true/false"),
    ],
)
def test_override_errors(item, msg):
    with pytest.raises(ValueError, match=msg):
        config.override(config.get_preset("tutorial"), item)


def test_the_old_name_of_a_renamed_key_is_read_with_a_deprecation_warning():
    tutorial = config.get_preset("tutorial")
    with pytest.warns(DeprecationWarning, match="data.synth_preset is deprecated.*data.synth_size"):
        cfg = config.override(tutorial, "data.synth_preset=small")
    assert cfg == config.override(tutorial, "data.synth_size=small")
    assert cfg.data.synth_size == "small"


def test_a_config_stored_by_an_older_paulkit_is_read():
    """A checkpoint's config from before the renames: data.synth_preset, and compile; and
    from before the cluster section and cpu_threads (read with their defaults, hashed as
    before)."""
    tutorial = config.get_preset("tutorial")
    old = config.config_to_dict(tutorial)
    old["data"]["synth_preset"] = old["data"].pop("synth_size")
    old["compile"] = False
    del old["cpu_threads"]  # added later, with its default
    assert config.config_from_dict(old) == tutorial
    del old["cluster"]
    assert config.config_from_dict(old) == dataclasses.replace(
        tutorial, cluster=config.ClusterConfig()
    )
    assert config.config_hash(old) == config.config_hash(tutorial)


def test_roots_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PAULKIT_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PAULKIT_OUT", str(tmp_path / "o"))
    assert paths.data_root() == tmp_path / "d"
    assert paths.data_root(tmp_path) == tmp_path
    assert paths.output_root() == tmp_path / "o"


def test_shown_path_is_relative_inside_the_project_only(tmp_path):
    root = paths.project_root()
    assert (
        paths.shown_path(root / "outputs" / "tutorial" / "pretrain.pt")
        == "outputs/tutorial/pretrain.pt"
    )
    assert paths.shown_path(tmp_path / "x.pt") == str(tmp_path / "x.pt")

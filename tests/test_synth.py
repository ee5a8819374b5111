"""The embedded synthetic data (paulkit/data/synth.py): layout, determinism, atomicity, knobs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paulkit.data import Market1501, embedded, synth

MICRO = {
    "source": synth.SplitSizes(12, 60, 4, 32, 3, 2),
    "target": synth.SplitSizes(8, 48, 6, 48, 4, 2),
}


@pytest.fixture
def micro(monkeypatch):
    """A size far below tiny, so that generating in a test takes a fraction of a second."""
    monkeypatch.setitem(synth.SIZES, "micro", MICRO)
    return "micro"


def hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_target_is_market_layout_with_the_asked_sizes(tmp_path, micro):
    folder = synth.generate(tmp_path, "target", micro, seed=0)
    assert folder == tmp_path / "target_micro_seed0"
    sizes = MICRO["target"]
    ds = Market1501(folder)
    assert ds.num_train_pids == sizes.train_ids and len(ds.train) == sizes.train_images
    assert ds.num_train_cams <= synth.TARGET.num_cameras
    names = [p.name for p in (folder / "bounding_box_test").iterdir()]
    assert sum(n.startswith("0000_") for n in names) == sizes.distractors
    assert sum(n.startswith("-1_") for n in names) == sizes.junk
    test_ids = {r.pid for r in ds.query}
    assert len(test_ids) == sizes.test_ids
    assert len(ds.query) + len(ds.gallery) - sizes.distractors == sizes.test_images
    assert not test_ids & {int(Path(r.path).name[:4]) for r in ds.train}  # disjoint
    # every query has a true match in another camera (the Market protocol needs one)
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    with Image.open(ds.train[0].path) as img:
        assert img.format == "JPEG" and img.size == (synth.WIDTH, synth.HEIGHT)
    marker = json.loads((folder / synth.MARKER).read_text())
    assert (
        marker["images"] == sizes.train_images + sizes.test_images + sizes.distractors + sizes.junk
    )
    assert marker["version"] == synth.GENERATOR_VERSION and marker["seed"] == 0


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, micro):
    a = hashes(synth.generate(tmp_path / "a", "target", micro, seed=5))
    synth._CAMERA_CACHE.clear()
    b = hashes(synth.generate(tmp_path / "b", "target", micro, seed=5))
    c = hashes(synth.generate(tmp_path / "c", "target", micro, seed=6))
    assert a == b
    assert a != c


def test_skipped_when_present(tmp_path, micro, monkeypatch):
    folder = synth.generate(tmp_path, "source", micro, seed=0)
    before = hashes(folder)

    def fail(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(synth, "_write_domain", fail)
    assert synth.generate(tmp_path, "source", micro, seed=0) == folder
    assert hashes(folder) == before


def test_interrupted_generation_leaves_nothing(tmp_path, micro, monkeypatch):
    real = synth._encode
    calls = Counter()

    def interrupted(img, quality):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(img, quality)

    monkeypatch.setattr(synth, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(tmp_path, "target", micro, seed=0)
    assert list(tmp_path.iterdir()) == []  # no destination, no partial folder


def test_foreign_folder_is_never_deleted(tmp_path, micro):
    dest = tmp_path / "target_micro_seed0"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    assert issubclass(synth.SynthFolderError, ValueError)  # the CLI prints it as one line
    with pytest.raises(synth.SynthFolderError, match="remove it yourself"):
        synth.generate(tmp_path, "target", micro, seed=0)
    assert (dest / "mine.txt").read_text() == "keep me"


def test_older_generation_is_replaced(tmp_path, micro):
    folder = synth.generate(tmp_path, "target", micro, seed=0)
    marker = json.loads((folder / synth.MARKER).read_text())
    (folder / synth.MARKER).write_text(json.dumps(marker | {"version": 0}))
    assert not synth.is_complete(folder, "target", micro, 0)
    assert synth.generate(tmp_path, "target", micro, seed=0) == folder
    assert synth.is_complete(folder, "target", micro, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_custom_knobs_get_their_own_folder(tmp_path, micro):
    knobs = dataclasses.replace(synth.TARGET, occlusion_prob=0.5)
    folder = synth.generate(tmp_path, "target", micro, seed=0, knobs=knobs)
    assert folder.name == f"target_micro_seed0_k{knobs.digest()}"
    assert synth.folder_name("target", micro, 0, synth.TARGET) == "target_micro_seed0"
    assert synth.is_complete(folder, "target", micro, 0, knobs)
    assert not synth.is_complete(folder, "target", micro, 0)


def test_embedded_and_main_generate(tmp_path, micro, capsys):
    src, tgt = synth.main_generate(micro, 2, root=tmp_path)
    assert "made" in capsys.readouterr().out
    assert (src.name, tgt.name) == ("source_micro_seed2", "target_micro_seed2")
    assert embedded(micro, 2, root=tmp_path) == (src, tgt)
    synth.main_generate(micro, 2, root=tmp_path)
    assert capsys.readouterr().out.count("skipped") == 2
    assert Market1501(src).num_train_cams > Market1501(tgt).num_train_cams


def test_the_old_size_keyword_and_the_markers_on_disk(tmp_path, micro):
    """``preset=`` (the size's old name) is read with a deprecation warning; the marker keeps
    its key ``preset``, so that folders made before the rename are still complete."""
    folder = synth.generate(tmp_path, "target", micro, seed=0)
    with pytest.warns(DeprecationWarning, match=r"generate\(preset=...\) is deprecated"):
        assert synth.generate(tmp_path, "target", preset=micro) == folder
    with pytest.warns(DeprecationWarning, match=r"embedded\(preset=...\)"):
        assert embedded(preset=micro, root=tmp_path)[1] == folder
    assert json.loads((folder / synth.MARKER).read_text())["preset"] == micro


def test_embedded_default_root_is_synth_root(tmp_path, micro, monkeypatch):
    monkeypatch.setenv("PAULKIT_SYNTH", str(tmp_path / "synth"))
    src, tgt = embedded(micro, 0)
    assert src.parent == tgt.parent == tmp_path / "synth"


def test_sizes():
    market = synth.SIZES["market"]["target"]
    assert (market.train_ids, market.train_images, market.test_ids) == (751, 12936, 750)
    for size in ("tiny", "small"):
        tgt = synth.SIZES[size]["target"]
        assert tgt.train_images / tgt.train_ids >= 10  # PEDAL's k = 10 needs neighbours
    assert synth.SIZES["small"]["target"].train_ids >= 2 * synth.SIZES["tiny"]["target"].train_ids


def test_plan_of_tiny_target():
    knobs = synth.TARGET
    cams = synth._cameras_cached(knobs)
    plan = synth._plan("target", synth.SIZES["tiny"]["target"], knobs, 0, cams)
    train = [i for i, f in enumerate(plan.folder) if f == "bounding_box_train"]
    per_id = Counter(plan.ident[i] for i in train)
    assert len(per_id) == 100 and min(per_id.values()) >= 2
    cams_per_id = {k: {plan.cam[i] for i in train if plan.ident[i] == k} for k in per_id}
    assert min(len(c) for c in cams_per_id.values()) >= 2  # everyone is seen by 2+ cameras
    assert len(set(plan.name)) == len(plan.name)


def test_cameras_fixed_per_id_and_neutral_on_average():
    a = synth._cameras(synth.TARGET)
    b = synth._cameras(synth.TARGET)  # no data seed involved
    np.testing.assert_array_equal(a.gain, b.gain)
    log_gain = np.log(a.gain / synth.TARGET.brightness)
    np.testing.assert_allclose(log_gain.mean(0), log_gain.mean(0).mean(), atol=1e-5)  # no cast
    np.testing.assert_allclose(np.exp(log_gain.mean()), 1.0, atol=0.05)
    spread = np.log(a.gain).std(0)
    assert np.all(spread > 0.05)  # but each camera has its own cast
    strong = synth._cameras(dataclasses.replace(synth.TARGET, cast_strength=0.6))
    assert np.log(strong.gain).std() > np.log(a.gain).std()


def test_identities_follow_the_knobs():
    red = dataclasses.replace(
        synth.TARGET, colour_weights=synth._weights(red=1.0), colour_jitter=0.0
    )
    ids = synth.sample_identities(50, "target", seed=0, knobs=red)
    np.testing.assert_allclose(
        ids["up1"], np.tile(synth.CLOTHING_COLOURS["red"], (50, 1)), atol=1e-6
    )
    again = synth.sample_identities(5, "target", seed=0, knobs=red, first=3)
    np.testing.assert_array_equal(again["pattern"], ids["pattern"][3:8])
    solid = dataclasses.replace(synth.TARGET, pattern_weights=(1, 0, 0, 0, 0, 0))
    assert set(synth.sample_identities(30, "target", knobs=solid)["pattern"]) == {0}


def test_render_people():
    imgs = synth.render_people(3, "source", cams=[0, 4], seed=1)
    assert imgs.shape == (3, 2, synth.HEIGHT, synth.WIDTH, 3) and imgs.dtype == np.uint8
    np.testing.assert_array_equal(imgs, synth.render_people(3, "source", cams=[0, 4], seed=1))
    # people differ from one another; background differs between cameras
    assert np.abs(imgs[0, 0].astype(int) - imgs[1, 0]).mean() > 5
    assert np.abs(imgs[0, 0, :10].astype(int) - imgs[0, 1, :10]).mean() > 5
    with pytest.raises(ValueError, match="cams"):
        synth.render_people(2, "target", cams=[6])


def test_views_change_what_is_seen():
    """A backpack is a block from behind and two straps from the front."""
    pack = dataclasses.replace(synth.TARGET, bag_prob=1.0, occlusion_prob=0.0, passer_prob=0.0)
    front, back = synth.render_people(1, "target", cams=[0, 0], knobs=pack, views=[0, 1])[0]
    assert np.abs(front.astype(int) - back).mean() > 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"domain": "sky"}, "domain"),
        ({"size": "huge"}, "size='huge'"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.generate(tmp_path, **kwargs)


def test_bad_knobs():
    with pytest.raises(ValueError, match="num_cameras"):
        dataclasses.replace(synth.TARGET, num_cameras=1)
    with pytest.raises(ValueError, match="view_weights"):
        dataclasses.replace(synth.TARGET, view_weights=(1.0, 0.0))
    with pytest.raises(ValueError, match="box_scale"):
        dataclasses.replace(synth.TARGET, box_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="jpeg_quality"):
        dataclasses.replace(synth.TARGET, jpeg_quality=(5, 101))

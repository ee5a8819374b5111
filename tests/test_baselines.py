from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from paulkit import baselines


def test_whole_histogram_counts_colours():
    img = np.zeros((4, 2, 3), np.uint8)
    img[:2] = (255, 0, 0)  # half red, half black
    h = baselines.color_histogram(img, mode="whole", bins=2)
    # joint bins: black -> code 0, red -> code (1*2+0)*2+0 = 4; equal counts -> sqrt(0.5) each
    expected = np.zeros(8, np.float32)
    expected[[0, 4]] = np.sqrt(0.5)
    np.testing.assert_allclose(h, expected / np.linalg.norm(expected), rtol=1e-6)


def test_stripes_ignore_the_border_outside_the_person_region():
    img = np.zeros((6, 10, 3), np.uint8)
    a = baselines.color_histogram(img, mode="stripes", bins=4, stripes=3, person_width=0.6)
    img[:, :2] = 255  # paint the left border only
    b = baselines.color_histogram(img, mode="stripes", bins=4, stripes=3, person_width=0.6)
    np.testing.assert_allclose(a, b)
    assert a.shape == (3 * 3 * 4,)
    assert np.isclose(np.linalg.norm(a), 1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="RGB"):
        baselines.color_histogram(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        baselines.color_histogram(np.zeros((4, 4, 3), np.uint8), mode="hsv")


# --------------------------------------------------------------------------------------------
# Colour normalisation
# --------------------------------------------------------------------------------------------

CAST_A = np.array([1.3, 1.0, 0.7])  # a reddish camera
CAST_B = np.array([0.75, 0.95, 1.25])  # a bluish, slightly darker one


def _content(seed: int, h: int = 32, w: int = 16) -> np.ndarray:
    """A random picture in 0..180 (casts up to 1.3x stay below 255)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(10, 180, size=(h, w, 3))


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("mode", ["whole", "stripes"])
def test_greyworld_is_invariant_to_a_channel_gain(mode):
    img = _content(0)
    ref = baselines.color_histogram(baselines.normalise_colours(img), mode=mode)
    cast = baselines.color_histogram(baselines.normalise_colours(img * CAST_A), mode=mode)
    np.testing.assert_allclose(cast, ref, atol=1e-6)
    # the same holds up to quantisation noise for uint8 images...
    u_ref = baselines.color_histogram(baselines.normalise_colours(img.astype(np.uint8)), mode)
    u_cast = baselines.normalise_colours(np.round(img * CAST_B).astype(np.uint8))
    assert _cosine(baselines.color_histogram(u_cast, mode), u_ref) > 0.98
    # ...while the raw histograms are far apart
    raw_a = baselines.color_histogram(np.round(img * CAST_A).astype(np.uint8), mode)
    raw_b = baselines.color_histogram(np.round(img * CAST_B).astype(np.uint8), mode)
    assert _cosine(raw_a, raw_b) < 0.9


def _write(path, arr) -> str:
    Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["whole", "stripes"])
def test_camera_normalisation_matches_the_same_content_across_casts(tmp_path, mode):
    paths, camids = [], []
    for cam, cast in enumerate((CAST_A, CAST_B)):
        for k in range(8):  # other people seen by the camera, to estimate its mean colour
            paths.append(_write(tmp_path / f"c{cam}_{k}.png", _content(100 + 10 * cam + k) * cast))
            camids.append(cam)
        paths.append(_write(tmp_path / f"c{cam}_same.png", _content(7) * cast))
        camids.append(cam)
    size = (32, 16)
    cam = baselines.histogram_features(paths, mode, size=size, norm="camera", camids=camids)
    raw = baselines.histogram_features(paths, mode, size=size)
    a, b = paths.index(str(tmp_path / "c0_same.png")), paths.index(str(tmp_path / "c1_same.png"))
    assert _cosine(cam[a], cam[b]) > 0.97
    assert _cosine(raw[a], raw[b]) < 0.9
    # means given explicitly (e.g. from training images) give the same descriptors
    means = baselines.camera_means(paths, camids, size=size)
    again = baselines.histogram_features(
        paths, mode, size=size, norm="camera", camids=camids, camera_means=means
    )
    np.testing.assert_allclose(again, cam)


def test_camera_norm_needs_camids(tmp_path):
    p = _write(tmp_path / "a.png", _content(1))
    with pytest.raises(ValueError, match="camids="):
        baselines.histogram_features([p], norm="camera")
    with pytest.raises(ValueError, match="norm must be"):
        baselines.histogram_features([p], norm="whitepatch")
    with pytest.raises(ValueError, match="camera"):
        baselines.histogram_features([p], norm="camera", camids=[3], camera_means={0: [1, 1, 1]})
    # old calls keep working
    assert baselines.histogram_features([p], "whole", size=(32, 16)).shape == (1, 512)


def test_best_histogram_returns_the_max_map_variant(tmp_path):
    class Rec(NamedTuple):
        path: str
        pid: int
        camid: int

    rng = np.random.default_rng(0)
    # each person: a top and a bottom colour; background random
    people = rng.uniform(40, 170, size=(6, 2, 3))
    casts = (CAST_A, CAST_B)
    query, gallery, train = [], [], []
    for cam, cast in enumerate(casts):
        for pid, (top, bottom) in enumerate(people):
            for k in range(2):
                img = rng.uniform(20, 190, size=(32, 16, 3))
                img[:16, 4:12] = top + rng.normal(0, 4, (16, 8, 3))
                img[16:, 4:12] = bottom + rng.normal(0, 4, (16, 8, 3))
                p = _write(tmp_path / f"{pid}_c{cam}_{k}.png", img * cast)
                (query if cam == 0 and k == 0 else gallery).append(Rec(p, pid, cam))
                if k == 1:
                    train.append(Rec(p, -1, cam))
    for extra in (None, train):
        res = baselines.best_histogram(query, gallery, train=extra, size=(32, 16))
        assert set(res["variants"]) == set(baselines.VARIANTS)
        best = max(res["variants"], key=res["variants"].get)
        assert res["descriptor"] == best
        assert res["mAP"] == pytest.approx(res["variants"][best])
        assert res["camera_means_from"] == ("train" if extra else "query+gallery")
        assert {"mAP", "rank1"} <= set(res)
        assert res["variants"]["stripes+camera"] > res["variants"]["stripes"]

"""Train, test and pseudo-pair transforms (paulkit/data/transforms.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from paulkit.data import transforms as T


def gradient_image(h: int = 32, w: int = 16) -> Image.Image:
    """An image whose left and right halves differ, so a flip is visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    a[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    a[..., 2] = 60
    return Image.fromarray(a)


def test_test_transform_normalises_by_hand():
    img = Image.new("RGB", (16, 32), (255, 0, 128))
    out = T.test_transform(8, 4)(img)
    assert out.shape == (3, 8, 4) and out.dtype == torch.float32
    expected = torch.tensor(
        [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    ).view(3, 1, 1)
    torch.testing.assert_close(out, expected.expand(3, 8, 4))
    torch.testing.assert_close(
        T.denormalize(out), torch.tensor([1.0, 0.0, 128 / 255]).view(3, 1, 1).expand(3, 8, 4)
    )


def test_test_transform_is_deterministic_and_takes_tensors():
    img = gradient_image()
    tf = T.test_transform(32, 16)
    torch.testing.assert_close(tf(img), tf(img))
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    torch.testing.assert_close(tf(tensor), tf(img))


def test_train_transform_flips_half_the_time():
    img = gradient_image()
    plain = T.test_transform(32, 16)(img)
    tf = T.train_transform(32, 16)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(40):
        out = tf(img)
        if torch.allclose(out, plain.flip(-1)):
            flipped += 1
        else:
            torch.testing.assert_close(out, plain)
    assert 8 <= flipped <= 32
    no_flip = T.train_transform(32, 16, flip=False)
    torch.testing.assert_close(no_flip(img), plain)


@pytest.mark.parametrize("area", [(0.70, 0.95), (0.5, 0.5)])
def test_random_area_crop_keeps_the_asked_area(area):
    crop = T.RandomAreaCrop(area)
    x = torch.zeros(3, 128, 64)
    torch.manual_seed(0)
    for _ in range(50):
        h, w = crop(x).shape[-2:]
        frac = h * w / (128 * 64)
        assert area[0] - 0.02 <= frac <= area[1] + 1e-9
        assert h <= 128 and w <= 64 and w >= round(area[0] * 64) - 1


def test_random_area_crop_is_a_crop():
    x = torch.arange(20 * 10, dtype=torch.float32).view(1, 20, 10)
    torch.manual_seed(1)
    out = T.RandomAreaCrop((0.7, 0.95))(x)
    h, w = out.shape[-2:]
    top, left = divmod(int(out[0, 0, 0].item()), 10)
    torch.testing.assert_close(out, x[:, top : top + h, left : left + w])


def test_pseudo_pair_transform():
    img = gradient_image(128, 64)
    tf = T.pseudo_pair_transform(64, 32)
    torch.manual_seed(0)
    a, b = tf(img), tf(img)
    assert a.shape == b.shape == (3, 64, 32)
    assert not torch.allclose(a, b)  # random views
    plain = T.test_transform(64, 32)(img)
    assert not torch.allclose(a, plain)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[1:5] == ["ColorJitter", "RandomRotation", "RandomAreaCrop", "RandomHorizontalFlip"]
    jitter = tf.transforms[1]
    assert jitter.brightness == (0.8, 1.2) and jitter.hue == (-0.1, 0.1)
    assert tf.transforms[2].degrees == [-10.0, 10.0]


@pytest.mark.parametrize("make", [T.train_transform, T.test_transform, T.pseudo_pair_transform])
def test_bad_sizes(make):
    with pytest.raises(ValueError, match="height"):
        make(0, 32)
    with pytest.raises(ValueError, match="height"):
        make(64.0, 32)


def test_bad_area():
    with pytest.raises(ValueError, match="area"):
        T.RandomAreaCrop((0.9, 0.5))
    with pytest.raises(ValueError, match="area"):
        T.RandomAreaCrop((0.0, 0.5))

import numpy as np
import pytest

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

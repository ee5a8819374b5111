"""The embedded data: a generator of synthetic pedestrians in two domains.

No real re-id data can be downloaded by paulkit, and the tutorial must run on a fresh machine,
so this module renders people at 128x64 pixels (Market-1501's size) with vectorised numpy and
writes them in exactly Market-1501's layout and file naming. Two domains stand in for the
paper's data sets: a labelled *source* (MSMT17's role: many cameras, many identities) and an
unlabelled *target* (Market-1501's role: six cameras).

What is an identity (drawn once per person, see :func:`sample_identities`): the colours and
textures of the upper and lower clothing (solid, stripes, checks, a front logo, an open
jacket), sleeve and leg length (shorts, a skirt), shoes, skin, hair (length, colour) or a hat,
a bag (backpack, shoulder bag, hand bag: seen differently from the front, back and side), and
body proportions. Many people share clothing colours, so a colour histogram is a baseline but
not a solver: texture, accessories and layout matter.

What is nuisance (drawn per camera and per image): the viewpoint (front, back, side, mostly
fixed within a camera's tracklet, so it changes between cameras) and the walking phase; each
camera's illumination, colour cast, saturation, blur, noise and JPEG quality (fixed per camera
id from the domain's ``camera_seed`` and the data seed, centred on neutral over the cameras;
data seed 0, the tuning draw, keeps the cameras the gap was tuned with); each camera's background scene (the box sees a different part of it each
time) plus passers-by; partial occlusion; bounding boxes shifted and scaled.

The domain gap is a small frozen dataclass of knobs per domain (:class:`DomainKnobs`,
defaults :data:`SOURCE` and :data:`TARGET`): palettes, garment and view distributions, box
misalignment, occlusion, camera casts, backgrounds, blur, noise, JPEG quality.

Determinism: every identity and every image draws its random numbers from its own generator
``numpy.random.default_rng([seed, domain, kind, index])``, so the same seed writes the same
bytes. Generation is atomic (built in a hidden temporary folder beside the destination,
renamed at the end, a ``.complete`` marker written last) and skipped when already there.

Taught in: notebooks/01_data_loading.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paulkit.paths import synth_root

__all__ = [
    "HEIGHT",
    "WIDTH",
    "GENERATOR_VERSION",
    "CLOTHING_COLOURS",
    "DomainKnobs",
    "SplitSizes",
    "SOURCE",
    "TARGET",
    "DOMAINS",
    "SIZES",
    "generate",
    "embedded",
    "main_generate",
    "sample_identities",
    "render_people",
    "is_complete",
    "folder_name",
    "SynthFolderError",
]

HEIGHT, WIDTH = 128, 64
GENERATOR_VERSION = 3  # bump whenever the same seed would write other bytes
MARKER = ".complete"

# Named clothing colours (RGB in [0, 1]); domains differ in how often each is worn.
CLOTHING_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.08, 0.08, 0.09),
    "charcoal": (0.22, 0.22, 0.24),
    "grey": (0.50, 0.50, 0.50),
    "white": (0.90, 0.90, 0.88),
    "navy": (0.10, 0.14, 0.35),
    "blue": (0.15, 0.30, 0.75),
    "denim": (0.28, 0.38, 0.55),
    "sky": (0.55, 0.72, 0.90),
    "red": (0.78, 0.12, 0.12),
    "maroon": (0.42, 0.08, 0.12),
    "pink": (0.92, 0.55, 0.68),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.85, 0.20),
    "beige": (0.82, 0.74, 0.58),
    "brown": (0.40, 0.26, 0.14),
    "khaki": (0.60, 0.56, 0.38),
    "green": (0.15, 0.55, 0.22),
    "olive": (0.35, 0.38, 0.15),
    "teal": (0.10, 0.50, 0.50),
    "purple": (0.45, 0.20, 0.58),
}
_PALETTE = np.array(list(CLOTHING_COLOURS.values()), dtype=np.float32)
_COLOUR_INDEX = {n: i for i, n in enumerate(CLOTHING_COLOURS)}

_SKIN = np.array(
    [
        (0.96, 0.80, 0.69),
        (0.90, 0.72, 0.58),
        (0.80, 0.60, 0.45),
        (0.62, 0.44, 0.30),
        (0.42, 0.28, 0.18),
    ],
    dtype=np.float32,
)
_HAIR = np.array(
    [
        (0.05, 0.04, 0.04),
        (0.15, 0.10, 0.07),
        (0.35, 0.22, 0.12),
        (0.75, 0.62, 0.35),
        (0.62, 0.62, 0.62),
    ],
    dtype=np.float32,
)
_HAIR_P = np.array([0.5, 0.22, 0.14, 0.08, 0.06])
_SHOES = np.array(
    [
        (0.06, 0.06, 0.06),
        (0.92, 0.92, 0.92),
        (0.35, 0.22, 0.12),
        (0.45, 0.45, 0.48),
        (0.75, 0.15, 0.15),
        (0.2, 0.3, 0.7),
    ],
    dtype=np.float32,
)
_SHOES_P = np.array([0.42, 0.28, 0.12, 0.1, 0.04, 0.04])

PATTERNS = ("solid", "hstripes", "vstripes", "checks", "logo", "jacket")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder", "hand")
VIEWS = ("front", "back", "left", "right")

# Labels of the part map; 0 is the background.
_BG, _SKIN_L, _HAIR_L, _HAT, _UP1, _UP2, _LO1, _LO2, _SHOE, _BAG, _OCC, _PASS = range(12)
_NUM_LABELS = 12


def _weights(**named: float) -> tuple[float, ...]:
    w = [0.0] * len(CLOTHING_COLOURS)
    for name, value in named.items():
        w[_COLOUR_INDEX[name]] = value
    return tuple(w)


@dataclass(frozen=True)
class DomainKnobs:
    """The knobs of one domain: what its people wear and how its cameras see them.

    The camera-level values (casts, gains, blur, noise, JPEG quality, scenes, preferred
    walking axis) are drawn per camera id from ``camera_seed`` and the data seed (data seed 0,
    the tuning draw, from ``camera_seed`` alone),
    and casts, gains and saturations are centred over the cameras: the domain's mean camera
    is neutral, so the gap lies in the differences between cameras.

    Attributes:
        num_cameras: cameras of the domain (file names ``c1`` .. ``cN``).
        colour_weights: relative frequency of each :data:`CLOTHING_COLOURS` entry.
        colour_jitter: per-identity RGB deviation (std) from the named colour.
        pattern_weights: upper-body pattern frequencies over :data:`PATTERNS`.
        short_sleeve_prob: chance of short sleeves.
        lower_weights: frequencies of trousers, shorts, skirt.
        bag_prob: chance of carrying a bag (backpack, shoulder or hand bag equally).
        hat_prob: chance of a hat.
        view_weights: front, back, side frequencies of a camera tracklet's walking direction.
        box_shift: std of the horizontal box offset, as a fraction of the image width.
        box_scale: range of the person's height as a fraction of the image height.
        occlusion_prob: chance that an object hides part of the person.
        passer_prob: chance of another person behind, at the box's side.
        cast_strength: std of each camera's log colour gain per channel.
        brightness: mean camera gain; ``brightness_spread`` its spread over cameras.
        saturation_spread: spread of the camera saturation around 1.
        bg_brightness: mean brightness of the scenes; ``bg_saturation`` their colourfulness.
        bg_clutter: objects per camera scene.
        blur: mean blur (one 3x3 box pass = 1).
        noise: std of pixel noise (0-1 scale).
        jpeg_quality: range of the cameras' JPEG quality.
        camera_seed: seed of the camera-level draws (with the data seed, see above).
    """

    num_cameras: int
    colour_weights: tuple[float, ...]
    colour_jitter: float = 0.035
    pattern_weights: tuple[float, ...] = (0.3, 0.16, 0.1, 0.12, 0.16, 0.16)
    short_sleeve_prob: float = 0.3
    lower_weights: tuple[float, float, float] = (0.8, 0.12, 0.08)
    bag_prob: float = 0.5
    hat_prob: float = 0.12
    view_weights: tuple[float, float, float] = (0.35, 0.35, 0.3)
    box_shift: float = 0.04
    box_scale: tuple[float, float] = (0.84, 0.94)
    occlusion_prob: float = 0.05
    passer_prob: float = 0.1
    cast_strength: float = 0.08
    brightness: float = 1.0
    brightness_spread: float = 0.12
    saturation_spread: float = 0.1
    bg_brightness: float = 0.55
    bg_saturation: float = 0.2
    bg_clutter: int = 10
    blur: float = 0.3
    noise: float = 0.015
    jpeg_quality: tuple[int, int] = (85, 95)
    camera_seed: int = 1000

    def __post_init__(self) -> None:
        if not 2 <= self.num_cameras <= 99:
            raise ValueError(f"num_cameras={self.num_cameras}: need 2..99 cameras")
        checks = {
            "colour_weights": (self.colour_weights, len(CLOTHING_COLOURS)),
            "pattern_weights": (self.pattern_weights, len(PATTERNS)),
            "lower_weights": (self.lower_weights, len(LOWER_TYPES)),
            "view_weights": (self.view_weights, 3),
        }
        for name, (w, n) in checks.items():
            if len(w) != n or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"{name}: need {n} non-negative weights with a positive sum")
        lo, hi = self.box_scale
        if not 0.3 <= lo <= hi <= 1.6:
            raise ValueError(f"box_scale={self.box_scale}: need 0.3 <= low <= high <= 1.6")
        qlo, qhi = self.jpeg_quality
        if not 10 <= qlo <= qhi <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality}: need 10 <= low <= high <= 100")

    def digest(self) -> str:
        """A short hash of the knobs (part of the marker and of non-default folder names)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


# The labelled source (MSMT17's role): many cameras, bright indoor/outdoor scenes, darker
# winter clothing, long sleeves and trousers, well-centred boxes, little occlusion.
SOURCE = DomainKnobs(
    num_cameras=15,
    colour_weights=_weights(
        black=10,
        charcoal=7,
        grey=6,
        white=5,
        navy=6,
        blue=3,
        denim=5,
        sky=1,
        red=3,
        maroon=3,
        pink=1.5,
        orange=1,
        yellow=1,
        beige=4,
        brown=4,
        khaki=3,
        green=2,
        olive=2,
        teal=1.5,
        purple=1.5,
    ),
    short_sleeve_prob=0.15,
    lower_weights=(0.88, 0.04, 0.08),
    view_weights=(0.4, 0.4, 0.2),
    box_shift=0.03,
    box_scale=(0.86, 0.94),
    occlusion_prob=0.05,
    passer_prob=0.08,
    cast_strength=0.08,
    brightness=1.02,
    bg_brightness=0.62,
    bg_saturation=0.15,
    bg_clutter=8,
    blur=0.25,
    noise=0.012,
    jpeg_quality=(85, 95),
    camera_seed=1001,
)

# The unlabelled target (Market-1501's role): six cameras, summer clothing (short sleeves,
# shorts, more colour), busier street scenes, strong per-camera colour casts centred on
# neutral, more side views, detector boxes that are shifted and scaled, more occlusion.
# Its scenes' brightness, blur, noise and compression match the source's: a gap of global
# image statistics is what AdaBN absorbs without learning anything, so the gap lies in what
# needs invariance (casts, views, framing). docs/data.md "Tuning the gap" has the search.
TARGET = DomainKnobs(
    num_cameras=6,
    colour_weights=_weights(
        black=7,
        charcoal=3,
        grey=4,
        white=8,
        navy=3,
        blue=4,
        denim=4,
        sky=3,
        red=4,
        maroon=1.5,
        pink=3,
        orange=2,
        yellow=2.5,
        beige=2.5,
        brown=1.5,
        khaki=2,
        green=3,
        olive=1,
        teal=2,
        purple=2,
    ),
    short_sleeve_prob=0.6,
    lower_weights=(0.58, 0.3, 0.12),
    view_weights=(0.27, 0.27, 0.46),
    box_shift=0.08,
    box_scale=(0.74, 0.98),
    occlusion_prob=0.18,
    passer_prob=0.22,
    cast_strength=0.3,
    brightness=1.02,
    brightness_spread=0.18,
    saturation_spread=0.15,
    bg_brightness=0.6,
    bg_saturation=0.17,
    bg_clutter=16,
    blur=0.3,
    noise=0.015,
    jpeg_quality=(82, 94),
    camera_seed=2002,
)

DOMAINS: dict[str, DomainKnobs] = {"source": SOURCE, "target": TARGET}
_DOMAIN_CODE = {"source": 1, "target": 2}


@dataclass(frozen=True)
class SplitSizes:
    """How many identities and images one domain gets.

    ``test_images`` counts query plus gallery images of the test identities; distractors
    (pid 0000, one image each of people outside the test set) and junk (pid -1, badly
    framed boxes) are added to the gallery folder.
    """

    train_ids: int
    train_images: int
    test_ids: int
    test_images: int
    distractors: int
    junk: int
    query_prob: float = 0.85


SIZES: dict[str, dict[str, SplitSizes]] = {
    # CI and the classroom CPU: seconds.
    "tiny": {
        "source": SplitSizes(250, 2500, 50, 500, 30, 10),
        "target": SplitSizes(100, 1200, 100, 1300, 100, 40),
    },
    # About 2.5x tiny.
    "small": {
        "source": SplitSizes(600, 6000, 100, 1000, 60, 20),
        "target": SplitSizes(250, 3000, 250, 3250, 250, 100),
    },
    # Market-1501 sized target (751 / 12,936 train, 750 test ids; 3,368 + 13,120 test
    # images, 2,793 distractors, 3,819 junk) and an MSMT17-train sized source.
    "market": {
        "source": SplitSizes(1041, 32621, 300, 4500, 300, 100),
        "target": SplitSizes(751, 12936, 750, 16488, 2793, 3819),
    },
}


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------

_NU_ID = 44  # uniforms per identity


def _pick(u: np.ndarray, weights: Any) -> np.ndarray:
    """Inverse-CDF choice: index per uniform ``u`` under ``weights``."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _identity_uniforms(seed: int, domain: str, first: int, count: int) -> np.ndarray:
    code = _DOMAIN_CODE[domain]
    return np.stack(
        [
            np.random.default_rng([seed, code, 1, i]).random(_NU_ID)
            for i in range(first, first + count)
        ]
    ).astype(np.float32)


def _identities_from_uniforms(u: np.ndarray, knobs: DomainKnobs) -> dict[str, np.ndarray]:
    """Map per-identity uniforms (N, _NU_ID) to identity attributes (arrays of length N)."""

    def colour(i: int) -> np.ndarray:
        base = _PALETTE[_pick(u[:, i], knobs.colour_weights)]
        jitter = (u[:, i + 1 : i + 4] - 0.5) * (2 * 1.73 * knobs.colour_jitter)  # std = jitter
        return np.clip(base + jitter, 0.02, 0.98)

    up1 = colour(0)
    up2 = colour(4)
    # The second colour of a pattern must differ visibly from the first.
    same = np.abs(up1 - up2).sum(1) < 0.35
    up2[same] = np.where(
        up1[same].mean(1, keepdims=True) > 0.5, up1[same] * 0.35, 1 - 0.5 * (1 - up1[same]) - 0.1
    )
    lo1 = colour(8)
    lo2 = colour(12)
    same = np.abs(lo1 - lo2).sum(1) < 0.35
    lo2[same] = np.where(
        lo1[same].mean(1, keepdims=True) > 0.5, lo1[same] * 0.35, np.clip(lo1[same] + 0.45, 0, 0.95)
    )
    bag = colour(16)
    hat = colour(20)
    bag_type = np.where(u[:, 24] < knobs.bag_prob, 1 + np.minimum((u[:, 25] * 3).astype(int), 2), 0)
    return {
        "up1": up1,
        "up2": up2,
        "lo1": lo1,
        "lo2": lo2,
        "bag_rgb": bag,
        "hat_rgb": hat,
        "pattern": _pick(u[:, 26], knobs.pattern_weights),
        "period": 0.055 + 0.045 * u[:, 27],  # stripes/checks period, in person heights
        "short": u[:, 28] < knobs.short_sleeve_prob,
        "lower": _pick(u[:, 29], knobs.lower_weights),
        "lower_pat": _pick(u[:, 30], (0.75, 0.15, 0.1)),  # solid, side stripe, checks
        "skin": _SKIN[_pick(u[:, 31], (0.3, 0.3, 0.2, 0.12, 0.08))],
        "hair": _HAIR[_pick(u[:, 32], _HAIR_P)],
        "long_hair": u[:, 33] < 0.3,
        "hat": u[:, 34] < knobs.hat_prob,
        "shoes": _SHOES[_pick(u[:, 35], _SHOES_P)],
        "bag": bag_type,
        "bag_side": np.where(u[:, 36] < 0.5, -1.0, 1.0).astype(np.float32),
        "shoulder": (0.105 + 0.04 * u[:, 37]).astype(np.float32),  # half-widths, person heights
        "hip": (0.085 + 0.03 * u[:, 38]).astype(np.float32),
        "waist": (0.46 + 0.07 * u[:, 39]).astype(np.float32),  # where the upper body ends
        "leg": (0.036 + 0.014 * u[:, 40]).astype(np.float32),
        "head": (0.042 + 0.01 * u[:, 41]).astype(np.float32),
        "hairline": (0.15 + 0.35 * u[:, 42]).astype(np.float32),
    }


def sample_identities(
    num: int,
    domain: str = "target",
    seed: int = 0,
    knobs: DomainKnobs | None = None,
    first: int = 0,
) -> dict[str, np.ndarray]:
    """Draw ``num`` identities of a domain (attribute arrays of length ``num``).

    Identity ``first + i`` is the same person in every call with the same seed and domain.
    """
    _check_domain(domain)
    knobs = knobs or DOMAINS[domain]
    return _identities_from_uniforms(_identity_uniforms(seed, domain, first, num), knobs)


# --------------------------------------------------------------------------------------------
# Cameras and scenes (fixed per camera id: drawn from the domain's camera_seed)
# --------------------------------------------------------------------------------------------

_SCENE_H, _SCENE_W = HEIGHT + 24, WIDTH * 4


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth random texture: a coarse normal grid, bilinearly upsampled to (h, w)."""
    small = rng.standard_normal((cells[0] + 1, cells[1] + 1))
    ys = np.linspace(0, cells[0], h)
    xs = np.linspace(0, cells[1], w)
    rows = np.stack(
        [np.interp(ys, np.arange(cells[0] + 1), small[:, j]) for j in range(cells[1] + 1)], 1
    )
    return np.stack([np.interp(xs, np.arange(cells[1] + 1), r) for r in rows]).astype(np.float32)


def _hsv_colour(rng: np.random.Generator, value: float, saturation: float) -> np.ndarray:
    import colorsys

    h = rng.random()
    s = np.clip(saturation * (0.4 + 1.2 * rng.random()), 0, 1)
    v = np.clip(value * (0.6 + 0.8 * rng.random()), 0.03, 0.97)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _camera_key(knobs: DomainKnobs, seed: int) -> list[int]:
    """Entropy of a domain's camera-level draws: its ``camera_seed``, and for data seeds other
    than 0 the data seed too. Data seed 0 is the tuning draw and keeps the cameras the gap was
    tuned with; every other data seed is a held-out draw with cameras of its own."""
    return [knobs.camera_seed] if seed == 0 else [knobs.camera_seed, 1_000_000 + int(seed)]


def _scene(knobs: DomainKnobs, cam: int, seed: int = 0) -> np.ndarray:
    """One camera's background scene (_SCENE_H, _SCENE_W, 3); the boxes see parts of it."""
    rng = np.random.default_rng([*_camera_key(knobs, seed), 7, cam])
    h, w = _SCENE_H, _SCENE_W
    wall = _hsv_colour(rng, knobs.bg_brightness, knobs.bg_saturation)
    floor = _hsv_colour(rng, knobs.bg_brightness * 0.85, knobs.bg_saturation * 0.6)
    horizon = int(h * (0.5 + 0.25 * rng.random()))
    ys = np.arange(h, dtype=np.float32)[:, None, None]
    img = np.where(ys < horizon, wall, floor) * np.ones((h, w, 1), np.float32)
    img *= (1.1 - 0.25 * ys / h).astype(np.float32)
    for _ in range(knobs.bg_clutter):
        kind = rng.random()
        col = _hsv_colour(rng, knobs.bg_brightness, knobs.bg_saturation * 1.5)
        x0 = int(rng.integers(0, w))
        if kind < 0.45:  # windows, doors, shop fronts, signs
            bw, bh = int(rng.integers(6, 40)), int(rng.integers(6, 60))
            y0 = int(rng.integers(0, max(1, horizon - 4)))
            img[y0 : y0 + bh, x0 : x0 + bw] = col
            if rng.random() < 0.5:  # a frame
                img[y0 : y0 + bh, x0 : x0 + 2] *= 0.5
                img[y0 : y0 + 2, x0 : x0 + bw] *= 0.5
        elif kind < 0.7:  # poles and pillars
            bw = int(rng.integers(2, 9))
            img[: horizon + int(rng.integers(0, h - horizon)), x0 : x0 + bw] = col
        elif kind < 0.85:  # trees and bushes
            cy, r = int(rng.integers(0, horizon)), int(rng.integers(8, 30))
            yy, xx = np.ogrid[:h, :w]
            mask = (yy - cy) ** 2 + ((xx - x0) * 0.8) ** 2 < r * r
            green = np.array([0.1, 0.35, 0.12], np.float32) * (0.6 + 0.8 * rng.random())
            img[mask] = green
        else:  # floor markings
            y0 = int(rng.integers(horizon, h))
            img[y0 : y0 + int(rng.integers(1, 4)), :] = col
    texture = _smooth_noise(rng, h, w, (h // 6, w // 6))
    img = img * (1 + 0.12 * texture[..., None])
    return np.clip(img, 0, 1).astype(np.float32)


@dataclass
class _Cameras:
    gain: np.ndarray  # (C, 3): brightness times colour cast
    colour: np.ndarray  # (C, 3, 3): gain and cast, then saturation: rgb_out = colour @ rgb
    blur: np.ndarray  # (C,)
    noise: np.ndarray  # (C,)
    quality: np.ndarray  # (C,) int
    view_p: np.ndarray  # (C, 3) front/back/side
    scenes: np.ndarray  # (C, SH, SW, 3), as the camera sees them (colour applied)
    noise_bank: np.ndarray  # (2H, 2W, 3) standard normal


def _cameras(knobs: DomainKnobs, seed: int = 0) -> _Cameras:
    n, key = knobs.num_cameras, _camera_key(knobs, seed)
    raw = np.stack([np.random.default_rng([*key, 3, c]).random(10) for c in range(n)])
    cast = np.stack([np.random.default_rng([*key, 4, c]).standard_normal(3) for c in range(n)])
    cast -= cast.mean(0, keepdims=True)  # neutral on average over the cameras
    cast -= cast.mean(1, keepdims=True)  # a cast changes colour, not brightness
    cast /= max(cast.std(), 1e-6)
    bright = raw[:, 0] - raw[:, 0].mean()
    bright = knobs.brightness * (
        1 + knobs.brightness_spread * bright / max(np.abs(bright).max(), 1e-6)
    )
    sat = raw[:, 1] - raw[:, 1].mean()
    sat = 1 + knobs.saturation_spread * sat / max(np.abs(sat).max(), 1e-6)
    gain = bright[:, None] * np.exp(knobs.cast_strength * cast)  # (C, 3)
    # saturation s mixes each channel with the grey mean: s * I + (1 - s) / 3 * ones
    mix = sat[:, None, None] * np.eye(3) + (1 - sat[:, None, None]) / 3
    colour = mix * gain[:, None, :]
    view_p = np.tile(np.asarray(knobs.view_weights, np.float64), (n, 1))
    view_p[:, 2] *= 0.4 + 1.2 * raw[:, 2]  # each camera prefers its own walking axis
    view_p /= view_p.sum(1, keepdims=True)
    qlo, qhi = knobs.jpeg_quality
    scenes = np.stack([_scene(knobs, c, seed) @ colour[c].T for c in range(n)])
    bank = np.random.default_rng([*key, 5]).standard_normal((2 * HEIGHT, 2 * WIDTH, 3))
    return _Cameras(
        gain=gain.astype(np.float32),
        colour=colour.astype(np.float32),
        blur=(knobs.blur * (0.4 + 1.2 * raw[:, 3])).astype(np.float32),
        noise=(knobs.noise * (0.5 + raw[:, 4])).astype(np.float32),
        quality=np.round(qlo + (qhi - qlo) * raw[:, 5]).astype(int),
        view_p=view_p,
        scenes=scenes.astype(np.float32),
        noise_bank=bank.astype(np.float32),
    )


_CAMERA_CACHE: dict[str, _Cameras] = {}


def _cameras_cached(knobs: DomainKnobs, seed: int = 0) -> _Cameras:
    key = f"{knobs.digest()}-{_camera_key(knobs, seed)}"
    if key not in _CAMERA_CACHE:
        _CAMERA_CACHE[key] = _cameras(knobs, seed)
    return _CAMERA_CACHE[key]


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------

_NU_IMG = 32  # uniforms per image


def _box9(x: np.ndarray) -> np.ndarray:
    """Nine times a 3x3 box blur over axes 1 and 2 of (B, H, W, 3); borders repeat."""
    y = np.empty_like(x)
    np.add(x[:, :-2], x[:, 1:-1], out=y[:, 1:-1])
    y[:, 1:-1] += x[:, 2:]
    y[:, 0] = 3 * x[:, 0]
    y[:, -1] = 3 * x[:, -1]
    z = np.empty_like(x)
    np.add(y[:, :, :-2], y[:, :, 1:-1], out=z[:, :, 1:-1])
    z[:, :, 1:-1] += y[:, :, 2:]
    z[:, :, 0] = 3 * y[:, :, 0]
    z[:, :, -1] = 3 * y[:, :, -1]
    return z


def _render(
    ident: dict[str, np.ndarray],
    cams: np.ndarray,
    views: np.ndarray,
    u: np.ndarray,
    cameras: _Cameras,
    knobs: DomainKnobs,
    junk: np.ndarray | None = None,
) -> np.ndarray:
    """Render B people: identity attributes (arrays of length B), camera ids, view codes
    (0 front, 1 back, 2 left, 3 right) and per-image uniforms (B, _NU_IMG).

    Shape:
        returns uint8 (B, HEIGHT, WIDTH, 3).
    """
    b = len(cams)
    f32 = np.float32
    u = u.astype(f32)

    def c(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=f32).reshape(b, 1, 1)

    # ---- the box: person height, vertical and horizontal placement
    slo, shi = knobs.box_scale
    scale = slo + (shi - slo) * u[:, 2]
    dx = knobs.box_shift * WIDTH * (u[:, 3] + u[:, 4] - 1) * 2.45  # ~normal, std = box_shift*W
    dy = (u[:, 5] - 0.5) * 0.08 * HEIGHT
    if junk is not None:  # badly framed boxes: mostly off to one side, or zoomed in
        side = np.where(u[:, 6] < 0.5, -1, 1)
        dx = np.where(junk, side * WIDTH * (0.42 + 0.25 * u[:, 7]), dx)
        scale = np.where(junk & (u[:, 8] < 0.3), 1.5 + 0.5 * u[:, 9], scale)
    ph = scale * HEIGHT
    y0 = (HEIGHT - ph) / 2 + dy
    cx = WIDTH / 2 + dx
    yy = (np.arange(HEIGHT, dtype=f32) + 0.5).reshape(1, HEIGHT, 1)
    xx = (np.arange(WIDTH, dtype=f32) + 0.5).reshape(1, 1, WIDTH)
    v = (yy - c(y0)) / c(ph)  # (B, H, 1): 0 at the head's top, 1 at the soles
    x = (xx - c(cx)) / c(ph)  # (B, 1, W): 0 at the body's axis, in person heights

    side_view = c(views >= 2) > 0
    back = c(views == 1) > 0
    front = c(views == 0) > 0
    face = c(np.select([views == 2, views == 3], [-1.0, 1.0], 0.0))  # facing direction
    phase = u[:, 10] * 2 * np.pi
    stride = c(0.085 * np.sin(phase))
    swing = c(0.06 * np.sin(phase + np.pi))

    sw = c(ident["shoulder"]) * np.where(side_view, 0.62, 1.0).astype(f32)
    hw = c(ident["hip"]) * np.where(side_view, 0.72, 1.0).astype(f32)
    waist = c(ident["waist"])
    leg = c(ident["leg"])
    head = c(ident["head"])
    lab = np.zeros((b, HEIGHT, WIDTH), np.uint8)
    scratch = np.empty_like(lab)

    def paint(mask: np.ndarray, label: int) -> None:
        # lab[mask] = label, as uint8 arithmetic (wraps mod 256): ~20x faster than a scatter.
        np.multiply(mask, np.uint8(label) - lab, out=scratch)
        np.add(lab, scratch, out=lab)

    # ---- a passer-by behind the person (drawn first: everything covers it)
    pas = c(u[:, 11] < knobs.passer_prob) > 0
    px0 = c(np.where(u[:, 12] < 0.5, -0.1, 0.75) * WIDTH + u[:, 13] * 0.25 * WIDTH)
    if np.any(pas):
        in_pas = pas & (np.abs(xx - px0 - 0.1 * WIDTH) < 0.12 * WIDTH) & (yy > c(0.1 * HEIGHT + dy))
        paint(in_pas, _PASS)

    # ---- legs, lower garment, shoes
    rows_leg = (v >= waist - 0.01) & (v < 0.97)
    t_leg = np.clip((v - waist) / (1 - waist), 0, 1)
    centre = np.where(side_view, stride * t_leg, hw * 0.55)
    legs = rows_leg & ((np.abs(x - centre) < leg) | (np.abs(x + centre) < leg))
    hips = (v >= waist - 0.01) & (v < waist + 0.06) & (np.abs(x) < hw)
    lower = c(ident["lower"])
    shorts_end = waist + 0.36 * (1 - waist)
    skirt_end = waist + (0.45 + 0.1 * c(u[:, 14])) * (1 - waist)
    covered = np.where(lower == 1, v < shorts_end, np.where(lower == 2, v < waist + 0.04, v < 0.95))
    paint(legs | hips, _SKIN_L)
    cloth = (legs | hips) & covered
    skirt = (
        (lower == 2) & (v >= waist - 0.01) & (v < skirt_end) & (np.abs(x) < hw + 0.3 * (v - waist))
    )
    cloth |= skirt
    paint(cloth, _LO1)
    lpat = c(ident["lower_pat"])
    per = c(ident["period"])
    if np.any(lpat == 1):  # a stripe down the outer side of each leg
        stripe = (np.abs(np.abs(x) - (centre + leg * 0.7)) < 0.011) & (lpat == 1) & cloth & ~skirt
        paint(stripe, _LO2)
    if np.any(lpat == 2):  # checks (plaid)
        cell = np.floor(x / per).astype(np.int16) + np.floor(v / per).astype(np.int16)
        chk = (cell & 1 == 0) & (lpat == 2) & cloth
        paint(chk, _LO2)
    shoes = (
        (v >= 0.95)
        & (v < 1.0)
        & (
            (np.abs(x - centre - face * 0.012) < leg * 1.15)
            | (np.abs(x + centre - face * 0.012) < leg * 1.15)
        )
    )
    paint(shoes, _SHOE)

    # ---- torso, arms, hands
    t = np.clip((v - 0.155) / (waist - 0.155), 0, 1)
    half = np.minimum(sw + (hw * 1.05 - sw) * t, sw * (0.7 + 12 * np.maximum(v - 0.155, 0)))
    torso = (v >= 0.155) & (v < waist) & (np.abs(x - face * 0.006) < half)
    short = c(ident["short"]) > 0
    sleeve_end = np.where(short, 0.29, 0.5)
    rows_arm = (v >= 0.165) & (v < 0.545)
    ua = np.where(side_view, swing * np.clip((v - 0.17) / 0.33, 0, 1), 0.0)
    arm_w = 0.032
    arm_front = rows_arm & ~side_view & (np.abs(x) >= sw * 0.93) & (np.abs(x) < sw * 0.93 + arm_w)
    arm_side = rows_arm & side_view & (np.abs(x - ua) < arm_w * 0.6)
    paint(torso, _UP1)
    pattern = c(ident["pattern"])
    up = torso.copy()
    paint(arm_front, _SKIN_L)
    sleeve = arm_front & (v < sleeve_end)
    paint(sleeve, _UP1)
    up |= sleeve
    # Upper-body patterns (in person coordinates, so they move with the body).
    hstr = (pattern == 1) & ((v / per) % 1 < 0.45)
    vstr = (pattern == 2) & ((x / per) % 1 < 0.45)
    cell = np.floor(x / per).astype(np.int16) + np.floor(v / per).astype(np.int16)
    chk = (pattern == 3) & (cell & 1 == 0)
    paint(up & (hstr | vstr | chk), _UP2)
    logo = (pattern == 4) & front & (np.abs(x) < 0.042) & (np.abs(v - 0.27) < 0.036)  # chest
    jacket = (pattern == 5) & front & (np.abs(x) < sw * 0.32) & (v >= 0.17)
    jacket_back = (pattern == 5) & (back | side_view) & (v >= waist - 0.05)  # jacket hem
    paint(torso & (logo | jacket | jacket_back), _UP2)

    # ---- neck, head, hair, hat
    hx = face * 0.012
    hv = 0.07
    ry = 0.066
    neck = (v >= 0.11) & (v < 0.17) & (np.abs(x - hx * 0.5) < 0.022)
    paint(neck & ~torso, _SKIN_L)
    dxh = x - hx
    in_head = (dxh / head) ** 2 + ((v - hv) / ry) ** 2 < 1
    paint(in_head, _SKIN_L)
    hairline = c(ident["hairline"])
    long_hair = c(ident["long_hair"]) > 0
    top = v < hv - ry * (1 - 2 * hairline) * 0.6
    hair_front = in_head & (top | (np.abs(dxh) > head * 0.78))
    hair_side = in_head & (top | (dxh * face < head * 0.1))
    hair = np.where(back, in_head, np.where(side_view, hair_side, hair_front))
    paint(hair, _HAIR_L)
    if np.any(long_hair):
        lh_rows = (v >= hv) & (v < 0.26)
        adx = np.abs(dxh)
        long_back = back & lh_rows & (adx < head * 1.1)
        long_front = front & lh_rows & (adx > head * 0.55) & (adx < head * 1.2) & (v < 0.2)
        long_side = side_view & lh_rows & (dxh * face < 0) & (dxh * face > -head * 1.15)
        paint(long_hair & (long_back | long_front | long_side), _HAIR_L)
    hat = c(ident["hat"]) > 0
    if np.any(hat):
        crown = in_head & (v < hv - ry * 0.2)
        brim_x = np.where(
            side_view, np.abs(dxh - face * head * 0.6) < head * 1.2, np.abs(dxh) < head * 1.25
        )
        brim = (v >= hv - ry * 0.35) & (v < hv - ry * 0.12) & brim_x & ~back
        paint(hat & (crown | brim), _HAT)

    # ---- bags: a backpack shows as a block from behind, straps from the front, a side block
    bag = c(ident["bag"])
    bside = c(ident["bag_side"])
    if np.any(bag == 1):
        bp_rows = (v >= 0.185) & (v < 0.43)
        pack_back = back & bp_rows & (np.abs(x) < sw * 0.72)
        straps = front & (v >= 0.165) & (v < 0.36) & (np.abs(np.abs(x) - sw * 0.55) < 0.011)
        xf = x * face
        pack_side = side_view & bp_rows & (xf < -sw * 0.75) & (xf > -sw * 0.75 - 0.075)
        paint((bag == 1) & (pack_back | straps | pack_side), _BAG)
    if np.any(bag == 2):  # a shoulder bag: a diagonal strap and a bag at the hip
        xs = x * bside
        strap = ~side_view & (np.abs(v - (0.17 + 0.9 * (xs + sw))) < 0.012) & torso
        at_hip = np.where(
            side_view, np.abs(x + face * 0.01) < 0.05, (xs > sw * 0.9) & (xs < sw * 0.9 + 0.07)
        )
        paint((bag == 2) & (strap | (at_hip & (v >= 0.42) & (v < 0.56))), _BAG)
    if np.any(bag == 3):  # a hand bag
        xs = x * bside
        hand_x = np.where(
            side_view, np.abs(x - swing) < 0.035, (xs > sw * 0.85) & (xs < sw * 0.85 + 0.06)
        )
        paint((bag == 3) & (v >= 0.53) & (v < 0.64) & hand_x, _BAG)

    # ---- the near arm of a side view (over the torso and bag)
    paint(arm_side, _SKIN_L)
    paint(arm_side & (v < sleeve_end), _UP1)
    hands = (v >= 0.5) & (v < 0.545) & (arm_front | arm_side)
    paint(hands, _SKIN_L)

    # ---- occlusion: an object at the bottom (bench, car, railing) or at a side (pole, person)
    occ = c(u[:, 16] < knobs.occlusion_prob) > 0
    bottom = c(u[:, 17] < 0.6) > 0
    occ_top = c((0.62 + 0.22 * u[:, 18]) * HEIGHT)
    occ_x = c(u[:, 19] * WIDTH * 0.8)
    occ_w = c((0.18 + 0.25 * u[:, 20]) * WIDTH)
    if np.any(occ):
        occ_mask = occ & np.where(bottom, yy >= occ_top, (xx >= occ_x) & (xx < occ_x + occ_w))
        paint(occ_mask, _OCC)

    # ---- colours: a per-image table indexed by the label map
    lut = np.zeros((b, _NUM_LABELS, 3), f32)
    lut[:, _SKIN_L] = ident["skin"]
    lut[:, _HAIR_L] = ident["hair"]
    lut[:, _HAT] = ident["hat_rgb"]
    lut[:, _UP1] = ident["up1"]
    lut[:, _UP2] = ident["up2"]
    lut[:, _LO1] = ident["lo1"]
    lut[:, _LO2] = ident["lo2"]
    lut[:, _SHOE] = ident["shoes"]
    lut[:, _BAG] = ident["bag_rgb"]
    lut[:, _OCC] = 0.15 + 0.7 * u[:, 21:24]
    lut[:, _PASS] = _PALETTE[_pick(u[:, 24], knobs.colour_weights)] * (0.6 + 0.4 * u[:, 25:26])

    # The camera's colour (gain, cast, saturation) is linear: apply it to the table, not pixels.
    lut = np.einsum("bij,blj->bli", cameras.colour[cams], lut)
    flat = lab.astype(np.intp) + (np.arange(b) * _NUM_LABELS).reshape(b, 1, 1)
    person = lut.reshape(-1, 3).take(flat, axis=0)  # (B, H, W, 3)
    # Shading: a cylinder lit from above-front.
    shade = (1.0 - 0.35 * np.clip((x / (sw * 1.25)) ** 2, 0, 1)) * (1.08 - 0.16 * np.clip(v, 0, 1))
    person *= shade[..., None]

    # Background: the camera's scene, seen from a different place each time.
    oy = (u[:, 26] * (_SCENE_H - HEIGHT)).astype(int)
    ox = (u[:, 27] * (_SCENE_W - WIDTH)).astype(int)
    img = np.stack(
        [cameras.scenes[cams[i], oy[i] : oy[i] + HEIGHT, ox[i] : ox[i] + WIDTH] for i in range(b)]
    )
    np.copyto(img, person, where=(lab != _BG)[..., None])

    # Blur (one or two 3x3 box passes, mixed per image) and a little light change per image.
    light = 0.92 + 0.16 * u[:, 28]
    blur = cameras.blur[cams] * (0.5 + u[:, 29])
    b1 = _box9(img)
    a1 = np.minimum(blur, 1)
    img *= (light * (1 - a1)).reshape(b, 1, 1, 1)
    two = blur > 1
    if np.any(two):  # the second pass only for the images that need it
        a2 = np.clip(blur - 1, 0, 1)[two].reshape(-1, 1, 1, 1)
        b1[two] = b1[two] * (1 - a2) + _box9(b1[two]) * (a2 / 9)
    b1 *= (light * a1 / 9).reshape(b, 1, 1, 1)
    img += b1

    # Sensor noise: a crop of the domain's fixed noise bank, scaled per camera and image.
    sigma = cameras.noise[cams] * (0.6 + 0.8 * u[:, 30])
    ny = (u[:, 31] * HEIGHT).astype(int)
    nx = ((u[:, 31] * 997) % 1 * WIDTH).astype(int)
    bank = cameras.noise_bank
    for i in range(b):
        img[i] += sigma[i] * bank[ny[i] : ny[i] + HEIGHT, nx[i] : nx[i] + WIDTH]
    img *= 255
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Planning a domain: which image shows whom, where
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    folder: list[str] = field(
        default_factory=list
    )  # bounding_box_train / query / bounding_box_test
    name: list[str] = field(default_factory=list)
    ident: list[int] = field(default_factory=list)  # row in the identity table
    cam: list[int] = field(default_factory=list)
    view: list[int] = field(default_factory=list)
    junk: list[bool] = field(default_factory=list)


def _split_counts(total: int, n: int, minimum: int, rng: np.random.Generator) -> np.ndarray:
    if total < n * minimum:
        raise ValueError(f"{total} images cannot give {n} identities {minimum} images each")
    w = rng.gamma(2.0, size=n)
    return minimum + rng.multinomial(total - n * minimum, w / w.sum())


def _plan(
    domain: str, sizes: SplitSizes, knobs: DomainKnobs, seed: int, cameras: _Cameras
) -> _Plan:
    code = _DOMAIN_CODE[domain]
    rng = np.random.default_rng([seed, code, 0])
    n_cams = knobs.num_cameras
    plan = _Plan()
    n_people = sizes.train_ids + sizes.test_ids
    file_pids = rng.permutation(n_people) + 1  # Market interleaves train and test numbers
    frame = np.zeros(n_cams, int)

    def add(folder: str, pid: int, ident: int, cam: int, view: int, junk: bool = False) -> None:
        frame[cam] += 1 + int(rng.integers(0, 40))
        seq = 1 + (frame[cam] // 5000) % 6
        pid_s = "-1" if pid < 0 else f"{pid:04d}"
        plan.folder.append(folder)
        plan.name.append(f"{pid_s}_c{cam + 1}s{seq}_{frame[cam]:06d}_{1 + ident % 7:02d}.jpg")
        plan.ident.append(ident)
        plan.cam.append(cam)
        plan.view.append(view)
        plan.junk.append(junk)

    def tracklet_view(cam: int) -> int:
        kind = _pick(rng.random(), cameras.view_p[cam])
        return int(kind) if kind < 2 else int(2 + (rng.random() < 0.5))

    def image_view(base: int) -> int:  # people sometimes turn within a camera
        return base if rng.random() > 0.15 else int(rng.integers(0, 4))

    train_min = max(2, sizes.train_images // sizes.train_ids // 2)
    for i, count in enumerate(_split_counts(sizes.train_images, sizes.train_ids, train_min, rng)):
        k = int(rng.integers(2, min(n_cams, count) + 1))
        cams = rng.choice(n_cams, k, replace=False)
        per_cam = 1 + rng.multinomial(count - k, np.full(k, 1 / k))
        for cam, m in zip(cams, per_cam):
            base = tracklet_view(int(cam))
            for _ in range(m):
                add("bounding_box_train", int(file_pids[i]), i, int(cam), image_view(base))

    test_min = max(4, sizes.test_images // sizes.test_ids // 2)
    for j, count in enumerate(_split_counts(sizes.test_images, sizes.test_ids, test_min, rng)):
        i = sizes.train_ids + j
        k = int(rng.integers(2, min(n_cams, count // 2) + 1))
        cams = rng.choice(n_cams, k, replace=False)
        per_cam = 2 + rng.multinomial(count - 2 * k, np.full(k, 1 / k))
        queries = rng.random(k) < sizes.query_prob
        queries[int(rng.integers(k))] = True  # every test identity has a query
        for cam, m, q in zip(cams, per_cam, queries):
            base = tracklet_view(int(cam))
            for r in range(m):
                folder = "query" if (q and r == 0) else "bounding_box_test"
                add(folder, int(file_pids[i]), i, int(cam), image_view(base))

    first = n_people
    for d in range(sizes.distractors):
        add("bounding_box_test", 0, first + d, int(rng.integers(n_cams)), int(rng.integers(0, 4)))
    first += sizes.distractors
    for d in range(sizes.junk):
        add(
            "bounding_box_test",
            -1,
            first + d,
            int(rng.integers(n_cams)),
            int(rng.integers(0, 4)),
            True,
        )
    return plan


# --------------------------------------------------------------------------------------------
# Writing a domain
# --------------------------------------------------------------------------------------------


class SynthFolderError(FileExistsError, ValueError):
    """The destination exists but is not a finished paulkit generation; paulkit leaves it alone."""


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}: choose 'source' or 'target'")


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size={size!r}: choose one of {', '.join(SIZES)}")


def size_or_old_name(size: str, preset: str | None, where: str) -> str:
    """``size``, or ``preset`` when given: the size's keyword in paulkit 0.1.0, read with a
    deprecation warning until the next release."""
    if preset is None:
        return size
    warnings.warn(
        f"{where}(preset=...) is deprecated and goes in the next release: use size={preset!r}",
        DeprecationWarning,
        stacklevel=3,
    )
    return preset


def folder_name(domain: str, size: str, seed: int, knobs: DomainKnobs | None = None) -> str:
    """The folder :func:`generate` writes under its root, e.g. ``target_tiny_seed0``.

    Knobs other than the domain's defaults add their digest, so tuning runs never clobber
    the default data.
    """
    name = f"{domain}_{size}_seed{seed}"
    if knobs is not None and knobs != DOMAINS[domain]:
        name += f"_k{knobs.digest()}"
    return name


def _marker(domain: str, size: str, seed: int, knobs: DomainKnobs) -> dict[str, Any]:
    return {
        "generator": "paulkit.data.synth",
        "version": GENERATOR_VERSION,
        "domain": domain,
        "preset": size,  # the on-disk name: folders made before the rename stay complete
        "seed": seed,
        "knobs": knobs.digest(),
    }


def is_complete(
    folder: str | os.PathLike, domain: str, size: str, seed: int, knobs: DomainKnobs | None = None
) -> bool:
    """True when ``folder`` holds a finished generation with these settings."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    want = _marker(domain, size, seed, knobs or DOMAINS[domain])
    return all(found.get(k) == v for k, v in want.items())


def _encode(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _write_domain(
    tmp: Path, domain: str, size: str, seed: int, knobs: DomainKnobs, progress: bool
) -> int:
    from tqdm.auto import tqdm

    sizes = SIZES[size][domain]
    cameras = _cameras_cached(knobs, seed)
    plan = _plan(domain, sizes, knobs, seed, cameras)
    n = len(plan.name)
    ident = np.asarray(plan.ident)
    table = sample_identities(int(ident.max()) + 1, domain, seed, knobs)
    cams = np.asarray(plan.cam)
    views = np.asarray(plan.view)
    junk = np.asarray(plan.junk)
    code = _DOMAIN_CODE[domain]
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp / sub).mkdir()
    batch = 64
    with tqdm(total=n, desc=f"synth {domain}", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch):
            idx = np.arange(start, min(n, start + batch))
            u = np.stack(
                [np.random.default_rng([seed, code, 2, int(i)]).random(_NU_IMG) for i in idx]
            )
            attrs = {k: a[ident[idx]] for k, a in table.items()}
            imgs = _render(attrs, cams[idx], views[idx], u, cameras, knobs, junk[idx])
            for k, i in enumerate(idx):
                data = _encode(imgs[k], cameras.quality[cams[i]])
                (tmp / plan.folder[i] / plan.name[i]).write_bytes(data)
            bar.update(len(idx))
    return n


def _remove_stale_partials(parent: Path, name: str, older_than_s: float = 3600.0) -> None:
    now = time.time()
    for p in parent.glob(f".{name}.partial-*"):
        try:
            if now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def generate(
    root: str | os.PathLike,
    domain: str = "target",
    size: str = "tiny",
    seed: int = 0,
    knobs: DomainKnobs | None = None,
    progress: bool = False,
    *,
    preset: str | None = None,
) -> Path:
    """Generate one domain in Market-1501's layout and return its folder.

    Writes ``root/<domain>_<size>_seed<seed>/`` (see :func:`folder_name`) with
    ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` (gallery, distractors
    ``0000_*``, junk ``-1_*``), JPEG files named ``PPPP_cCsS_FFFFFF_NN.jpg`` at 128x64.
    :class:`paulkit.data.Market1501` reads the folder.

    The folder is built in a hidden temporary folder beside it and renamed when finished,
    with a ``.complete`` marker (generator version, domain, size, seed, knobs) written
    last; when a complete folder with the same settings is there, nothing is done.

    Args:
        root: parent folder (e.g. :func:`paulkit.paths.synth_root`).
        domain: ``"source"`` (labelled, many cameras) or ``"target"`` (Market-like).
        size: ``"tiny"``, ``"small"`` or ``"market"`` (see :data:`SIZES`).
        seed: data seed; the same seed writes the same bytes.
        knobs: domain knobs; default :data:`SOURCE` or :data:`TARGET`.
        progress: show a tqdm bar.
        preset: the old name of ``size`` (deprecated, goes in the next release).

    Returns:
        The domain's folder.

    Taught in: notebooks/01_data_loading.ipynb.
    """
    size = size_or_old_name(size, preset, "generate")
    _check_domain(domain)
    _check_size(size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: pass a non-negative integer")
    knobs = knobs or DOMAINS[domain]
    root = Path(root).expanduser()
    name = folder_name(domain, size, int(seed), knobs)
    dest = root / name
    if is_complete(dest, domain, size, int(seed), knobs):
        return dest
    if dest.exists() and not (dest / MARKER).exists():
        raise SynthFolderError(
            f"{dest} exists but is not a finished paulkit generation (no {MARKER} marker); "
            "paulkit does not delete folders it did not make: remove it yourself and run again"
        )
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the data is not
    try:
        count = _write_domain(tmp, domain, size, int(seed), knobs, progress)
        marker = _marker(domain, size, int(seed), knobs) | {"images": count}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        if dest.exists():  # an older generation of ours (other version or knobs): replace it
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, dest)
            except OSError:
                if is_complete(dest, domain, size, int(seed), knobs):  # made by a concurrent run
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def embedded(
    size: str = "tiny",
    seed: int = 0,
    root: str | os.PathLike | None = None,
    progress: bool = False,
    *,
    preset: str | None = None,
) -> tuple[Path, Path]:
    """The embedded two-domain data: ``(source_dir, target_dir)``, generated if absent.

    Folders live under :func:`paulkit.paths.synth_root` (``PAULKIT_SYNTH``, else
    ``data/synth``) unless ``root`` is given. ``size`` is ``"tiny"``, ``"small"`` or
    ``"market"`` (:data:`SIZES`; ``preset=`` is its deprecated old name).

    Example:
        >>> src, tgt = embedded("tiny")  # doctest: +SKIP
        >>> Market1501(tgt).print_stats()  # doctest: +SKIP

    Taught in: notebooks/01_data_loading.ipynb.
    """
    size = size_or_old_name(size, preset, "embedded")
    base = Path(root).expanduser() if root is not None else synth_root()
    return (
        generate(base, "source", size, seed, progress=progress),
        generate(base, "target", size, seed, progress=progress),
    )


def main_generate(
    size: str = "tiny", seed: int = 0, root: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """What ``paulkit synth`` runs: make both domains and say what was made or found."""
    _check_size(size)
    base = Path(root).expanduser() if root is not None else synth_root()
    out = []
    for domain in ("source", "target"):
        dest = base / folder_name(domain, size, seed)
        if is_complete(dest, domain, size, seed):
            print(f"{domain}: {dest} already there (size {size}, seed {seed}); skipped")
        else:
            t0 = time.perf_counter()
            dest = generate(base, domain, size, seed, progress=True)
            n = json.loads((dest / MARKER).read_text())["images"]
            dt = time.perf_counter() - t0
            print(f"{domain}: made {dest} ({n} images in {dt:.1f} s, {n / dt:.0f} img/s)")
        out.append(dest)
    return out[0], out[1]


def render_people(
    num_ids: int = 4,
    domain: str = "target",
    cams: list[int] | None = None,
    seed: int = 0,
    knobs: DomainKnobs | None = None,
    views: list[int] | None = None,
) -> np.ndarray:
    """Render the same ``num_ids`` people in several cameras, for looking at (no files).

    Args:
        num_ids: how many people (the domain's identities ``0 .. num_ids - 1`` for ``seed``).
        domain: ``"source"`` or ``"target"``.
        cams: camera ids (from 0); default the domain's first six.
        seed: data seed of the identities.
        knobs: domain knobs; default the domain's.
        views: a view code per camera (0 front, 1 back, 2 left, 3 right); default each
            camera's usual walking direction.

    Shape:
        returns uint8 (num_ids, len(cams), HEIGHT, WIDTH, 3), without JPEG compression.

    Taught in: notebooks/01_data_loading.ipynb.
    """
    _check_domain(domain)
    knobs = knobs or DOMAINS[domain]
    cameras = _cameras_cached(knobs, seed)
    cams = list(range(min(6, knobs.num_cameras))) if cams is None else list(cams)
    if not cams or min(cams) < 0 or max(cams) >= knobs.num_cameras:
        raise ValueError(f"cams={cams}: camera ids must lie in 0..{knobs.num_cameras - 1}")
    rng = np.random.default_rng([seed, _DOMAIN_CODE[domain], 9])
    if views is None:
        kinds = [_pick(rng.random(), cameras.view_p[c]) for c in cams]
        views = [int(k) if k < 2 else int(2 + (rng.random() < 0.5)) for k in kinds]
    if len(views) != len(cams):
        raise ValueError(f"views: give one view per camera ({len(cams)}), got {len(views)}")
    table = sample_identities(num_ids, domain, seed, knobs)
    ii, cc = np.meshgrid(np.arange(num_ids), np.arange(len(cams)), indexing="ij")
    ii, cc = ii.ravel(), cc.ravel()
    u = np.stack(
        [
            np.random.default_rng([seed, _DOMAIN_CODE[domain], 8, int(k)]).random(_NU_IMG)
            for k in range(len(ii))
        ]
    )
    u[:, 16] = 1.0  # no occlusion, so the person is visible
    attrs = {k: a[ii] for k, a in table.items()}
    imgs = _render(attrs, np.asarray(cams)[cc], np.asarray(views)[cc], u, cameras, knobs)
    return imgs.reshape(num_ids, len(cams), HEIGHT, WIDTH, 3)

"""Readers of the real layouts (on small fabricated folders), their errors, and the torch
datasets (paulkit/data/datasets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import paulkit.data as pkd
from paulkit.data import (
    MSMT17,
    DatasetError,
    DukeMTMCreID,
    ImageDataset,
    ImageRecord,
    Market1501,
    MultiViewDataset,
    PairDataset,
    load_dataset,
    parse_duke_name,
    parse_market_name,
    parse_msmt_name,
    synth,
    verify_images,
)
from paulkit.data import transforms as T


@pytest.fixture
def micro_size(monkeypatch):
    """A size far below tiny, so that generating in a test takes a fraction of a second."""
    sizes = {
        "source": synth.SplitSizes(12, 60, 4, 32, 3, 2),
        "target": synth.SplitSizes(8, 48, 6, 48, 4, 2),
    }
    monkeypatch.setitem(synth.SIZES, "micro", sizes)
    return "micro"


def jpeg(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (value, 255 - value, 30)).save(path, "JPEG")


def make_market(root: Path) -> Path:
    """Train: pids 2 (c1, c2), 7 (c3); query: 5 (c1), 9 (c4); gallery: 5 (c2, c1), 9 (c6),
    distractor 0 (c3), junk -1 (c2)."""
    names = {
        "bounding_box_train": [
            "0002_c1s1_000451_03.jpg",
            "0002_c2s1_000551_01.jpg",
            "0007_c3s2_010101_02.jpg",
        ],
        "query": ["0005_c1s1_001051_00.jpg", "0009_c4s3_002001_00.jpg"],
        "bounding_box_test": [
            "0005_c2s1_001101_01.jpg",
            "0005_c1s1_001201_01.jpg",
            "0009_c6s4_003001_01.jpg",
            "0000_c3s2_004001_02.jpg",
            "-1_c2s1_000401_03.jpg",
        ],
    }
    for sub, files in names.items():
        for i, n in enumerate(files):
            jpeg(root / sub / n, 20 * i)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # real sets have it
    return root


def make_duke(root: Path) -> Path:
    for sub, files in {
        "bounding_box_train": [
            "0001_c1_f0000001.jpg",
            "0001_c5_f0000101.jpg",
            "0003_c8_f0000201.jpg",
        ],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c7_f0047000.jpg", "0000_c1_f0001000.jpg"],
    }.items():
        for n in files:
            jpeg(root / sub / n)
    return root


def make_msmt(root: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    lists = {
        "list_train.txt": (
            train_dir,
            [
                ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                ("0000/0000_001_05_0303noon_0020_1.jpg", 0),
                ("0001/0001_000_15_0303afternoon_0001_0.jpg", 1),
            ],
        ),
        "list_val.txt": (train_dir, [("0002/0002_000_03_0303morning_0100_0.jpg", 2)]),
        "list_query.txt": (test_dir, [("0000/0000_000_02_0113morning_0001_0.jpg", 0)]),
        "list_gallery.txt": (
            test_dir,
            [
                ("0000/0000_003_07_0113noon_0005_0.jpg", 0),
                ("0001/0001_000_09_0113noon_0009_0.jpg", 1),
            ],
        ),
    }
    for list_name, (folder, entries) in lists.items():
        lines = []
        for rel, pid in entries:
            jpeg(root / folder / rel)
            lines.append(f"{rel} {pid}")
        (root / list_name).write_text("\n".join(lines) + "\n")
    return root


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} | {
        "#": len(list(root.rglob("*")))
    }


# ---------------------------------------------------------------------------------------------
# file names


def test_parse_names_by_hand():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_market_name("some/dir/-1_c6s3_012345_01.jpg") == (-1, 5)
    assert parse_market_name("0000_c3s2_004001_02.jpg") == (0, 2)
    assert parse_market_name("0101_c12s1_000010_01.jpg") == (101, 11)  # synthetic source cams
    assert parse_duke_name("0005_c2_f0046985.jpg") == (5, 1)
    assert parse_msmt_name("0000/0000_000_01_0303morning_0015_0.jpg") == (0, 0)
    assert parse_msmt_name("3059_012_15_0113noon_1234_1.jpg") == (3059, 14)


@pytest.mark.parametrize(
    "parse, name",
    [
        (parse_market_name, "0002_c1_000451_03.jpg"),
        (parse_market_name, "hello.jpg"),
        (parse_market_name, "0002_c0s1_000451_03.jpg"),  # cameras start at 1
        (parse_duke_name, "0005_c9_f0046985.jpg"),  # Duke has 8 cameras
        (parse_duke_name, "0002_c1s1_000451_03.jpg"),
        (parse_msmt_name, "0000_c1_0001.jpg"),
        (parse_msmt_name, "0000_000_16_0303morning_0015_0.jpg"),  # 15 cameras
    ],
)
def test_unparsable_names(parse, name):
    with pytest.raises(DatasetError, match="rename"):
        parse(name)


# ---------------------------------------------------------------------------------------------
# readers


@pytest.mark.parametrize("nested", [False, True])
def test_market(tmp_path, nested):
    folder = make_market(tmp_path / "Market-1501-v15.09.15")
    ds = Market1501(tmp_path if nested else folder)
    assert ds.root == folder
    # train pids relabelled 0..C-1 in sorted order of the originals; camids from 0
    assert sorted((Path(r.path).name[:4], r.pid, r.camid) for r in ds.train) == [
        ("0002", 0, 0),
        ("0002", 0, 1),
        ("0007", 1, 2),
    ]
    assert ds.num_train_pids == 2 and ds.num_train_cams == 3
    assert sorted((r.pid, r.camid) for r in ds.query) == [(5, 0), (9, 3)]
    # junk dropped, distractor 0 kept, Thumbs.db ignored
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 2), (5, 0), (5, 1), (9, 5)]
    assert all(isinstance(r, ImageRecord) and os.path.isfile(r.path) for r in ds.train)
    s = ds.stats()
    assert s["train"] == {"ids": 2, "images": 3, "cameras": 3}
    assert s["gallery"] == {"ids": 3, "images": 4, "cameras": 4}
    table = ds.stats_table()
    assert "train" in table and "gallery" in table and "# ids" in table


def test_readers_write_nothing(tmp_path):
    make_market(tmp_path / "market1501")
    before = snapshot(tmp_path)
    ds = Market1501(tmp_path)
    ds.print_stats()
    verify_images(ds.train + ds.query + ds.gallery)
    next(iter(DataLoader(ImageDataset(ds.train), batch_size=2)))
    assert snapshot(tmp_path) == before


def test_duke(tmp_path):
    ds = DukeMTMCreID(make_duke(tmp_path / "DukeMTMC-reID").parent)
    assert sorted((r.pid, r.camid) for r in ds.train) == [(0, 0), (0, 4), (1, 7)]
    assert [(r.pid, r.camid) for r in ds.query] == [(5, 1)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 0), (5, 6)]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_msmt17_lists(tmp_path, version):
    dirs = ("train", "test") if version == "v1" else ("mask_train_v2", "mask_test_v2")
    folder = make_msmt(tmp_path / f"MSMT17_{version.upper()}", *dirs)
    ds = MSMT17(tmp_path, train_lists="train")
    assert ds.layout == version and ds.root == folder
    assert sorted((r.pid, r.camid) for r in ds.train) == [(0, 0), (0, 4), (1, 14)]
    assert all(f"/{dirs[0]}/" in r.path for r in ds.train)
    assert [(r.pid, r.camid) for r in ds.query] == [(0, 1)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 6), (1, 8)]
    assert MSMT17(folder, train_lists="trainval").num_train_pids == 3
    # "all" (the official PAUL code): test identities numbered after the training ones
    full = MSMT17(folder)
    assert full.num_train_pids == 3 + 2 and len(full.train) == 4 + 3
    with pytest.raises(ValueError, match="train_lists"):
        MSMT17(folder, train_lists="everything")


def test_msmt17_market_repack(tmp_path):
    root = tmp_path / "MSMT17"
    for sub, names in {
        "bounding_box_train": ["0000_c1_0000.jpg", "0000_c14_0001.jpg", "0001_c3_0002.jpg"],
        "query": ["0000_c2_0000.jpg"],
        "bounding_box_test": ["0000_c9_0001.jpg", "0001_c15_0002.jpg"],
    }.items():
        for n in names:
            jpeg(root / sub / n)
    ds = MSMT17(tmp_path, train_lists="train")
    assert ds.layout == "market"
    assert sorted((r.pid, r.camid) for r in ds.train) == [(0, 0), (0, 13), (1, 2)]
    assert [(r.pid, r.camid) for r in ds.query] == [(0, 1)]  # pid 0 is a person in MSMT17


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*PAULKIT_DATA"):
        Market1501(tmp_path / "nowhere")


def test_default_root_is_paulkit_data(tmp_path, monkeypatch):
    make_market(tmp_path / "Market-1501")
    monkeypatch.setenv("PAULKIT_DATA", str(tmp_path))
    assert Market1501().num_train_pids == 2
    assert load_dataset("Market1501").num_train_pids == 2


def test_wrong_layout(tmp_path):
    (tmp_path / "images").mkdir()
    jpeg(tmp_path / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"no Market1501 layout found in .*Market-1501-v15"):
        Market1501(tmp_path)
    with pytest.raises(DatasetError, match="no MSMT17 layout"):
        MSMT17(tmp_path)


def test_missing_split_folder(tmp_path):
    folder = make_market(tmp_path / "Market-1501")
    for p in (folder / "query").iterdir():
        p.unlink()
    (folder / "query").rmdir()
    with pytest.raises(DatasetError, match=r"query folder .*query.* missing"):
        Market1501(folder)


def test_unparsable_file_in_folder(tmp_path):
    folder = make_market(tmp_path / "Market-1501")
    jpeg(folder / "query" / "holiday_photo.jpg")
    with pytest.raises(DatasetError, match="holiday_photo.jpg"):
        Market1501(folder)


def test_empty_split(tmp_path):
    folder = make_market(tmp_path / "Market-1501")
    for p in (folder / "bounding_box_train").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r"bounding_box_train holds no usable images"):
        Market1501(folder)


def test_split_of_only_junk_is_empty(tmp_path):
    folder = make_market(tmp_path / "Market-1501")
    for p in (folder / "query").iterdir():
        p.unlink()
    jpeg(folder / "query" / "-1_c1s1_000001_01.jpg")
    with pytest.raises(DatasetError, match="query"):
        Market1501(folder)


def test_bad_msmt_list_line(tmp_path):
    folder = make_msmt(tmp_path / "MSMT17_V1")
    (folder / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query.txt line 1"):
        MSMT17(folder)
    other = make_msmt(tmp_path / "second" / "MSMT17_V1")
    (other / "list_gallery.txt").unlink()
    with pytest.raises(DatasetError, match=r"list_gallery.txt is missing"):
        MSMT17(other)


def test_corrupt_image_named_lazily_and_by_verify(tmp_path):
    folder = make_market(tmp_path / "Market-1501")
    bad = folder / "bounding_box_train" / "0002_c2s1_000551_01.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    ds = Market1501(folder)  # reading the folder does not open images
    data = ImageDataset(ds.train)
    index = [r.path for r in ds.train].index(str(bad))
    with pytest.raises(DatasetError, match=r"0002_c2s1_000551_01.jpg cannot be read.*truncated"):
        data[index]
    with pytest.raises(DatasetError, match=r"1 of 3 images cannot be read"):
        verify_images(ds.train)
    assert verify_images(ds.query) == 2
    with pytest.raises(DatasetError, match="does not exist"):
        pkd.load_image(folder / "gone.jpg")


def test_load_dataset_names(tmp_path):
    make_duke(tmp_path / "DukeMTMC-reID")
    assert isinstance(load_dataset("dukemtmcreid", tmp_path), DukeMTMCreID)
    make_msmt(tmp_path / "MSMT17_V1")
    assert isinstance(load_dataset("MSMT17", tmp_path), MSMT17)
    with pytest.raises(ValueError, match="unknown data set 'cuhk03'.*synth-target"):
        load_dataset("cuhk03", tmp_path)


def test_load_dataset_synth(tmp_path, micro_size):
    tgt = load_dataset("synth-target", tmp_path, size=micro_size, seed=1)
    src = load_dataset("synth-source", tmp_path, size=micro_size, seed=1)
    assert isinstance(tgt, Market1501) and tgt.root.name == f"target_{micro_size}_seed1"
    assert src.num_train_cams > tgt.num_train_cams
    # the size's old keyword is read until the next release, with a deprecation warning
    with pytest.warns(DeprecationWarning, match=r"load_dataset\(preset=...\) is deprecated"):
        old = load_dataset("synth-target", tmp_path, preset=micro_size, seed=1)
    assert old.root == tgt.root


# ---------------------------------------------------------------------------------------------
# torch datasets


@pytest.fixture
def market(tmp_path):
    return Market1501(make_market(tmp_path / "Market-1501"))


def test_image_dataset(market):
    data = ImageDataset(market.query, T.test_transform(16, 8))
    img, pid, camid, path = data[0]
    assert img.shape == (3, 16, 8) and img.dtype == torch.float32
    assert (pid, camid, path) == (market.query[0].pid, market.query[0].camid, market.query[0].path)
    raw = ImageDataset(market.query)[0][0]  # default: a [0, 1] tensor at the file's size
    assert raw.shape == (3, 16, 8) and 0 <= raw.min() and raw.max() <= 1
    with pytest.raises(ValueError, match="records is empty"):
        ImageDataset([])


def test_pair_dataset_draws_the_partner_as_the_official_code(market):
    """Uniform over the identity's images, the image itself included (official); with
    ``include_self=False`` over the other images only."""
    pids = [r.pid for r in market.train]
    multi = next(i for i, p in enumerate(pids) if pids.count(p) > 1)
    same = {j for j, p in enumerate(pids) if p == pids[multi]}
    torch.manual_seed(0)
    official = PairDataset(market.train, T.test_transform(16, 8))
    drawn = {official.partner(multi) for _ in range(200)}
    assert drawn == same  # itself included
    other = PairDataset(market.train, T.test_transform(16, 8), include_self=False)
    for i, rec in enumerate(market.train):
        j = other.partner(i)
        assert pids[j] == rec.pid
        assert (j != i) if pids.count(rec.pid) > 1 else (j == i)
    img, img2, pid = official[0]
    assert img.shape == img2.shape == (3, 16, 8) and pid == market.train[0].pid


def test_multiview_dataset(market):
    data = MultiViewDataset(
        market.train, T.train_transform(16, 8), T.pseudo_pair_transform(16, 8), num_views=3
    )
    views, index = data[2]
    assert views.shape == (3, 3, 16, 8) and index == 2
    with pytest.raises(ValueError, match="same"):
        MultiViewDataset(market.train, T.test_transform(16, 8), T.test_transform(8, 8))[0]
    with pytest.raises(ValueError, match="num_views=0"):
        MultiViewDataset(
            market.train, T.test_transform(16, 8), T.test_transform(16, 8), num_views=0
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_with_workers(market, workers):
    tf, pair = T.train_transform(16, 8), T.pseudo_pair_transform(16, 8)
    kw = {"batch_size": 2, "num_workers": workers}
    views, index = next(iter(DataLoader(MultiViewDataset(market.train, tf, pair), **kw)))
    assert views.shape == (2, 2, 3, 16, 8) and index.tolist() == [0, 1]
    img, img2, pid = next(iter(DataLoader(PairDataset(market.train, tf), **kw)))
    assert img.shape == img2.shape == (2, 3, 16, 8) and pid.shape == (2,)
    img, pid, camid, paths = next(iter(DataLoader(ImageDataset(market.gallery, tf), **kw)))
    assert img.shape == (2, 3, 16, 8) and len(paths) == 2

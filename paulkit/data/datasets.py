"""Readers for the re-id data sets (Market-1501, DukeMTMC-reID, MSMT17) and torch datasets.

Every reader only *reads*: nothing is downloaded and nothing is ever written into the data
folder. A reader turns a folder into three lists of :class:`ImageRecord` ``(path, pid,
camid)``:

- ``train``: pids relabelled ``0 .. num_train_pids - 1`` (what a classifier needs);
- ``query`` and ``gallery``: pids as in the file names (evaluation compares them), junk
  images (pid ``-1``) dropped, distractors (pid ``0``) kept in the gallery.

Camera ids count from 0 (file name ``c1`` is ``camid`` 0). Anything unexpected (a missing
folder, a wrong layout, a file name that does not parse, an empty split, an unreadable image)
raises :class:`DatasetError` with the path, what was expected and how to fix it.

Paper: docs/paper.md "Data set layouts" and "Evaluation" (Market-1501 protocol).

Taught in: notebooks/01_data_loading.ipynb.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from paulkit.paths import data_root, shown_path

__all__ = [
    "ImageRecord",
    "DatasetError",
    "ReidDataset",
    "Market1501",
    "DukeMTMCreID",
    "MSMT17",
    "parse_market_name",
    "parse_duke_name",
    "parse_msmt_name",
    "load_image",
    "verify_images",
    "ImageDataset",
    "PairDataset",
    "MultiViewDataset",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageRecord(NamedTuple):
    """One image of a re-id data set: its file, its identity and its camera (from 0)."""

    path: str
    pid: int
    camid: int


class DatasetError(ValueError):
    """A data folder or image that paulkit cannot use; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# File-name parsers
# --------------------------------------------------------------------------------------------

_MARKET_RE = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_DUKE_RE = re.compile(r"^(-1|\d+)_c(\d+)_f(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
# Market-style repacks of MSMT17 name files PID_cCAM_... (e.g. 0000_c14_0008.jpg).
_REPACK_RE = re.compile(r"^(-1|\d+)_c(\d+)(?:s\d+)?_[\w-]*\.(?:jpg|jpeg|png)$", re.IGNORECASE)
# MSMT17 list entries: PID/PID_INDEX_CAM_DATETIME_..., e.g. 0000/0000_000_01_0303morning_0015_0.jpg
_MSMT_RE = re.compile(r"^(\d+)_\d+_(\d+)_[^/]*\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _check_camera(cam: int, name: str, max_cam: int | None, fmt: str) -> int:
    if cam < 1 or (max_cam is not None and cam > max_cam):
        limit = f"1..{max_cam}" if max_cam is not None else "1 or more"
        raise DatasetError(
            f"file name {name!r}: camera {cam} is outside {limit} for the {fmt} naming; "
            "remove or rename the file"
        )
    return cam - 1


def parse_market_name(name: str, max_cam: int | None = None) -> tuple[int, int]:
    """Parse a Market-1501 file name ``PPPP_cCsS_FFFFFF_NN.jpg`` into ``(pid, camid)``.

    ``PPPP`` is the identity (``-1`` junk, ``0000`` distractor), ``C`` the camera from 1 (camid
    counts from 0), ``S`` the sequence, ``FFFFFF`` the frame and ``NN`` the box in the frame.

    Args:
        name: the file name (a path is reduced to its last component).
        max_cam: the highest camera number allowed (6 for Market-1501), or None for any.

    Returns:
        ``(pid, camid)`` with ``camid = C - 1``.

    Raises:
        DatasetError: the name does not follow the pattern.

    Example:
        >>> parse_market_name("0002_c1s1_000451_03.jpg")
        (2, 0)
    """
    base = Path(name).name
    m = _MARKET_RE.match(base)
    if m is None:
        raise DatasetError(
            f"file name {base!r} does not parse as Market-1501's PPPP_cCsS_FFFFFF_NN.jpg "
            "(e.g. 0002_c1s1_000451_03.jpg); remove or rename the file"
        )
    return int(m.group(1)), _check_camera(int(m.group(2)), base, max_cam, "Market-1501")


def parse_duke_name(name: str, max_cam: int | None = 8) -> tuple[int, int]:
    """Parse a DukeMTMC-reID file name ``PPPP_cC_fFFFFFFF.jpg`` into ``(pid, camid)``.

    Example:
        >>> parse_duke_name("0005_c2_f0046985.jpg")
        (5, 1)
    """
    base = Path(name).name
    m = _DUKE_RE.match(base)
    if m is None:
        raise DatasetError(
            f"file name {base!r} does not parse as DukeMTMC-reID's PPPP_cC_fFFFFFFF.jpg "
            "(e.g. 0005_c2_f0046985.jpg); remove or rename the file"
        )
    return int(m.group(1)), _check_camera(int(m.group(2)), base, max_cam, "DukeMTMC-reID")


def parse_msmt_name(name: str, max_cam: int | None = 15) -> tuple[int, int]:
    """Parse an MSMT17 file name ``PPPP_III_CC_DATETIME_FFFF_N.jpg`` into ``(pid, camid)``.

    The camera ``CC`` (1..15) is the third field. In MSMT17's list files the identity is the
    number after the path; this parser returns the one in the file name.

    Example:
        >>> parse_msmt_name("0000/0000_000_01_0303morning_0015_0.jpg")
        (0, 0)
    """
    base = Path(name).name
    m = _MSMT_RE.match(base)
    if m is None:
        raise DatasetError(
            f"file name {base!r} does not parse as MSMT17's PPPP_III_CC_DATETIME_FFFF_N.jpg "
            "(e.g. 0000_000_01_0303morning_0015_0.jpg); remove or rename the file"
        )
    return int(m.group(1)), _check_camera(int(m.group(2)), base, max_cam, "MSMT17")


def _parse_repack_name(name: str, max_cam: int | None = 15) -> tuple[int, int]:
    base = Path(name).name
    m = _REPACK_RE.match(base)
    if m is None:
        raise DatasetError(
            f"file name {base!r} does not parse as a Market-style PPPP_cC_....jpg name "
            "(e.g. 0000_c14_0008.jpg); remove or rename the file"
        )
    return int(m.group(1)), _check_camera(int(m.group(2)), base, max_cam, "MSMT17 (Market-style)")


# --------------------------------------------------------------------------------------------
# Folder helpers
# --------------------------------------------------------------------------------------------


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )


def _resolve_root(
    root: str | Path | None, names: Sequence[str], has_layout: Callable[[Path], bool], what: str
) -> Path:
    """The data set folder: ``root`` itself, or ``root/<usual name>`` (one or two levels)."""
    base = data_root(root)
    if not base.exists():
        raise DatasetError(
            f"{what}: folder {base} does not exist. Download {what} yourself (see data/README.md), "
            f"then pass root=<folder> or set PAULKIT_DATA; paulkit never downloads data"
        )
    if not base.is_dir():
        raise DatasetError(f"{what}: {base} is a file; pass the folder that holds {what}")
    candidates = [base] + [base / n for n in names] + [base / a / b for a in names for b in names]
    for cand in candidates:
        if cand.is_dir() and has_layout(cand):
            return cand
    present = sorted(p.name for p in base.iterdir())[:12]
    raise DatasetError(
        f"{what}: no {what} layout found in {base} (nor in a sub-folder named "
        f"{', '.join(names)}); found {present or 'an empty folder'}. Point root at the folder "
        f"that holds the {what} files (see data/README.md for the expected layout)"
    )


def _need_split(folder: Path, what: str, split: str) -> Path:
    if not folder.is_dir():
        raise DatasetError(
            f"{what}: expected the {split} folder {folder}, which is missing; the data set "
            "is incomplete: extract the whole archive again"
        )
    return folder


def _relabel(records: list[ImageRecord]) -> list[ImageRecord]:
    pids = sorted({r.pid for r in records})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [ImageRecord(r.path, mapping[r.pid], r.camid) for r in records]


# --------------------------------------------------------------------------------------------
# Data set readers
# --------------------------------------------------------------------------------------------


class ReidDataset:
    """Train/query/gallery lists of :class:`ImageRecord` with statistics.

    Subclasses fill ``train``, ``query`` and ``gallery``; ``root`` is the resolved folder.

    Taught in: notebooks/01_data_loading.ipynb.
    """

    name: str = "reid"

    def __init__(
        self,
        root: Path,
        train: list[ImageRecord],
        query: list[ImageRecord],
        gallery: list[ImageRecord],
    ) -> None:
        self.root = Path(root)
        self.train = train
        self.query = query
        self.gallery = gallery
        for split, records in (("train", train), ("query", query), ("gallery", gallery)):
            if not records:
                raise DatasetError(
                    f"{self.name}: the {split} split in {self.root} is empty (no usable images "
                    "after dropping junk); the data set is incomplete: extract it again"
                )

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (train pids are ``0 .. num_train_pids - 1``)."""
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of cameras seen in the training split."""
        return len({r.camid for r in self.train})

    def stats(self) -> dict[str, dict[str, int]]:
        """Identities, images and cameras per split, e.g. ``stats()["train"]["ids"]``.

        The gallery's identity count includes the distractor identity 0 when present.
        """
        out: dict[str, dict[str, int]] = {}
        for split in ("train", "query", "gallery"):
            records = getattr(self, split)
            out[split] = {
                "ids": len({r.pid for r in records}),
                "images": len(records),
                "cameras": len({r.camid for r in records}),
            }
        return out

    def stats_table(self) -> str:
        """The statistics as a small text table (what :meth:`print_stats` prints)."""

        lines = [
            f"{self.name} ({shown_path(self.root)})",
            "  subset   |   # ids | # images | # cameras",
            "  ---------+---------+----------+----------",
        ]
        for split, s in self.stats().items():
            lines.append(f"  {split:<8} | {s['ids']:7d} | {s['images']:8d} | {s['cameras']:9d}")
        return "\n".join(lines)

    def print_stats(self) -> None:
        """Print :meth:`stats_table`."""
        print(self.stats_table())

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, train={s['train']['images']} images/"
            f"{s['train']['ids']} ids, query={s['query']['images']}, gallery={s['gallery']['images']})"
        )


def _market_like_split(
    folder: Path, parse: Callable[[str], tuple[int, int]], relabel: bool, keep_zero: bool
) -> list[ImageRecord]:
    records = []
    for p in _list_images(folder):
        pid, camid = parse(p.name)
        if pid == -1 or (pid == 0 and not keep_zero):
            continue
        records.append(ImageRecord(str(p), pid, camid))
    if not records:
        raise DatasetError(
            f"folder {folder} holds no usable images (expected .jpg files named like the data "
            "set's convention); the data set is incomplete: extract it again"
        )
    return _relabel(records) if relabel else records


def _looks_like(folder: Path) -> str | None:
    """Which data set a Market-style folder's training file names say it is:
    ``"Market-1501"`` (``PPPP_cCsS_FFFFFF_NN.jpg``, cameras 1-6), ``"DukeMTMC-reID"``
    (``PPPP_cC_fFFFFFFF.jpg``, cameras 1-8), or None (neither: e.g. an MSMT17 repack, whose
    names are ``PPPP_cC_NNNN.jpg`` over 15 cameras)."""
    train = folder / "bounding_box_train"
    names = [p.name for p in _list_images(train)] if train.is_dir() else []
    for what, rx, max_cam in (("Market-1501", _MARKET_RE, 6), ("DukeMTMC-reID", _DUKE_RE, 8)):
        matches = [rx.match(n) for n in names]
        if names and all(matches) and max(int(m.group(2)) for m in matches) <= max_cam:
            return what
    return None


def _another_set(folder: Path, what: str, expected: str) -> DatasetError:
    """The error for a folder of another data set given where ``what`` was expected."""
    other = _looks_like(folder)
    key = {"Market-1501": "market1501", "DukeMTMC-reID": "dukemtmcreid"}[other]
    train = [p.name for p in _list_images(folder / "bounding_box_train")]
    ids = len({n.split("_")[0] for n in train})
    return DatasetError(
        f"{what}: {folder} looks like {other}, not {expected}: its {len(train)} training files "
        f"are named like {other}'s (e.g. {train[0]}), {ids} identities; point --data (root) at "
        f"the {what} folder, or use data set {key!r} if you meant {other}"
    )


def _has_market_layout(folder: Path) -> bool:
    return any((folder / d).is_dir() for d in ("bounding_box_train", "bounding_box_test", "query"))


class _MarketLayout(ReidDataset):
    """Shared reader for folders with ``bounding_box_train/``, ``bounding_box_test/``, ``query/``."""

    folder_names: tuple[str, ...] = ()
    max_cam: int | None = None

    def _parse(self, name: str) -> tuple[int, int]:
        raise NotImplementedError

    def __init__(self, root: str | Path | None = None) -> None:
        folder = _resolve_root(root, self.folder_names, _has_market_layout, self.name)
        train_dir = _need_split(folder / "bounding_box_train", self.name, "training")
        query_dir = _need_split(folder / "query", self.name, "query")
        gallery_dir = _need_split(folder / "bounding_box_test", self.name, "gallery")
        # Distractors (pid 0) are not a person to learn in training; they stay in the gallery.
        train = _market_like_split(train_dir, self._parse, relabel=True, keep_zero=False)
        query = _market_like_split(query_dir, self._parse, relabel=False, keep_zero=False)
        gallery = _market_like_split(gallery_dir, self._parse, relabel=False, keep_zero=True)
        super().__init__(folder, train, query, gallery)


class Market1501(_MarketLayout):
    """Market-1501 (and paulkit's synthetic data, written in the same layout).

    Layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (the gallery), files
    ``PPPP_cCsS_FFFFFF_NN.jpg``. ``root`` is the folder itself, or a folder holding it as
    ``Market-1501-v15.09.15``, ``Market-1501`` or ``market1501``; default ``PAULKIT_DATA``
    (else ``data/``). The camera number is not limited to Market's six, so the synthetic
    source domain (more cameras) reads with the same class.

    Example:
        >>> ds = Market1501("~/data")  # doctest: +SKIP
        >>> ds.print_stats()  # doctest: +SKIP

    Taught in: notebooks/01_data_loading.ipynb.
    """

    name = "Market1501"
    folder_names = ("Market-1501-v15.09.15", "Market-1501", "market1501", "Market1501")

    def _parse(self, name: str) -> tuple[int, int]:
        try:
            return parse_market_name(name)
        except DatasetError as exc:
            if _DUKE_RE.match(Path(name).name):
                raise DatasetError(
                    f"{exc}; this looks like DukeMTMC-reID (use dukemtmcreid)"
                ) from None
            raise


class DukeMTMCreID(_MarketLayout):
    """DukeMTMC-reID: Market's folders, files ``PPPP_cC_fFFFFFFF.jpg``, cameras 1-8.

    The data set was withdrawn by its owners; paulkit reads a copy you already have.
    """

    name = "DukeMTMCreID"
    folder_names = ("DukeMTMC-reID", "dukemtmc-reid", "DukeMTMC-reid", "dukemtmcreid")

    def _parse(self, name: str) -> tuple[int, int]:
        try:
            return parse_duke_name(name)
        except DatasetError as exc:
            if _MARKET_RE.match(Path(name).name):
                raise DatasetError(f"{exc}; this looks like Market-1501 (use market1501)") from None
            raise


# image path -> "list file line N" for the images named by MSMT17's lists: a missing image
# then names the line that lists it (load_image)
_LISTED_IN: dict[str, str] = {}

_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def _msmt_layout(folder: Path) -> str | None:
    has_lists = all((folder / f).is_file() for f in ("list_train.txt", "list_query.txt"))
    if has_lists and (folder / "mask_train_v2").is_dir():
        return "v2"
    if has_lists and (folder / "train").is_dir():
        return "v1"
    if (folder / "bounding_box_train").is_dir():
        return "market"
    return None


class MSMT17(ReidDataset):
    """MSMT17 in any of its three layouts, recognised automatically (``self.layout``).

    - ``"v1"``: ``train/``, ``test/`` and ``list_{train,val,query,gallery}.txt`` files of
      ``relative/path.jpg pid`` lines;
    - ``"v2"``: the same lists over ``mask_train_v2/`` and ``mask_test_v2/`` (faces masked);
    - ``"market"``: a Market-style repack (``bounding_box_train/`` ...; ``PPPP_cC_....jpg``).

    Args:
        root: the folder, or one holding ``MSMT17_V2``, ``MSMT17_V1``, ``MSMT17`` or ``msmt17``.
        train_lists: which images form ``train``: ``"train"`` (list_train: 1,041 ids, 30,248
            images), ``"trainval"`` (+ list_val: 32,621 images), or ``"all"`` (all four
            lists, with the test identities numbered after the training ones: 4,101 ids,
            126,441 images), which is what the official PAUL code pretrains on (default).
            ``query``/``gallery`` always come from the test lists.

    Taught in: notebooks/01_data_loading.ipynb.
    """

    name = "MSMT17"
    folder_names = ("MSMT17_V2", "MSMT17_V1", "MSMT17", "msmt17", "msmt17_v2", "msmt17_v1")

    def __init__(self, root: str | Path | None = None, train_lists: str = "all") -> None:
        if train_lists not in ("train", "trainval", "all"):
            raise ValueError(
                f"train_lists={train_lists!r}: choose 'train', 'trainval' or 'all' (the paper's)"
            )
        folder = _resolve_root(
            root, self.folder_names, lambda f: _msmt_layout(f) is not None, "MSMT17"
        )
        self.layout = _msmt_layout(folder)
        self.train_lists = train_lists
        if self.layout == "market" and _looks_like(folder) is not None:
            # Market-1501 or Duke read as MSMT17 would pretrain on their test labels
            raise _another_set(folder, "MSMT17", "a Market-style MSMT17 repack (15 cameras)")
        if self.layout == "market":
            parse = _parse_repack_name
            train = _market_like_split(
                _need_split(folder / "bounding_box_train", self.name, "training"),
                parse,
                relabel=False,
                keep_zero=True,
            )
            val: list[ImageRecord] = []
            query = _market_like_split(
                _need_split(folder / "query", self.name, "query"), parse, False, True
            )
            gallery = _market_like_split(
                _need_split(folder / "bounding_box_test", self.name, "gallery"), parse, False, True
            )
        else:
            train_dir, test_dir = (
                ("train", "test") if self.layout == "v1" else ("mask_train_v2", "mask_test_v2")
            )
            _need_split(folder / train_dir, self.name, "training")
            _need_split(folder / test_dir, self.name, "test")
            train = self._read_list(folder, "list_train.txt", train_dir)
            val = self._read_list(folder, "list_val.txt", train_dir, optional=True)
            query = self._read_list(folder, "list_query.txt", test_dir)
            gallery = self._read_list(folder, "list_gallery.txt", test_dir)
        self.num_test_pids = len({r.pid for r in query + gallery})
        if train_lists == "train":
            pool = train
        elif train_lists == "trainval":
            pool = train + val
        else:
            # Train and test identities are numbered separately: shift the test ones past the
            # training ones so that 1,041 + 3,060 = 4,101 identities stay distinct.
            shift = max(r.pid for r in train + val) + 1
            pool = (
                train + val + [ImageRecord(r.path, r.pid + shift, r.camid) for r in query + gallery]
            )
        super().__init__(folder, _relabel(pool), query, gallery)

    def _read_list(
        self, folder: Path, list_name: str, image_dir: str, optional: bool = False
    ) -> list[ImageRecord]:
        path = folder / list_name
        if not path.is_file():
            if optional:
                return []
            raise DatasetError(
                f"MSMT17: the list file {path} is missing (expected {', '.join(_MSMT_LISTS)} "
                "beside the image folders); extract the whole archive again"
            )
        records = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(
                    f"MSMT17: {path} line {lineno} reads {line!r}; expected "
                    "'relative/path.jpg identity' (e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0')"
                )
            rel, pid = parts[0], int(parts[1])
            try:
                _, camid = parse_msmt_name(rel)
            except DatasetError as exc:
                raise DatasetError(f"MSMT17: {path} line {lineno}: {exc}") from None
            image = folder / image_dir / rel
            if lineno == 1 and not image.is_file():  # one check per list: a wrong image folder
                raise DatasetError(
                    f"MSMT17: {path} line {lineno} names {rel}, but {image} does not exist; "
                    f"the list and the {image_dir}/ folder do not belong together: extract the "
                    "whole archive again"
                )
            _LISTED_IN[str(image)] = f"{path} line {lineno}"
            records.append(ImageRecord(str(image), pid, camid))
        if not records and not optional:
            raise DatasetError(f"MSMT17: the list file {path} is empty; extract it again")
        return records


# --------------------------------------------------------------------------------------------
# Images and torch datasets
# --------------------------------------------------------------------------------------------


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, reading every byte now (so a truncated file fails here).

    Raises:
        DatasetError: the file is missing, truncated or not an image; the message names it.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        listed = _LISTED_IN.get(str(path))
        if listed is not None:
            raise DatasetError(
                f"image {path}, listed in {listed}, does not exist; the list and the image "
                "folder do not belong together: extract the whole archive again"
            ) from None
        raise DatasetError(
            f"image {path} does not exist (was the data set moved after it was read?)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"image {path} cannot be read ({type(exc).__name__}: {exc}); the file is truncated "
            "or not an image: extract the data set again (or regenerate the synthetic data)"
        ) from None


def verify_images(records: Sequence[ImageRecord], progress: bool = False) -> int:
    """Open every image of ``records`` and raise one :class:`DatasetError` listing the bad ones.

    Readers check images lazily (when a batch loads them); call this once to find every
    corrupt file up front.

    Returns:
        The number of images checked.
    """
    from tqdm.auto import tqdm

    bad = []
    for rec in tqdm(records, desc="verify", disable=not progress):
        try:
            load_image(rec.path)
        except DatasetError as exc:
            bad.append(str(exc))
    if bad:
        shown = "\n  ".join(bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DatasetError(f"{len(bad)} of {len(records)} images cannot be read:\n  {shown}{more}")
    return len(records)


def _default_transform() -> Callable[[Image.Image], torch.Tensor]:
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class ImageDataset(Dataset):
    """Images with their labels: item ``(img, pid, camid, path)``.

    Args:
        records: :class:`ImageRecord` list (e.g. ``Market1501(...).query``).
        transform: applied to the PIL image; default: a float tensor in [0, 1].

    Shape:
        img: (C, H, W) as ``transform`` makes it.

    Taught in: notebooks/01_data_loading.ipynb.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None) -> None:
        if len(records) == 0:
            raise ValueError("records is empty; pass a non-empty split such as dataset.train")
        self.records = list(records)
        self.transform = transform if transform is not None else _default_transform()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int, int, str]:
        rec = self.records[index]
        return self.transform(load_image(rec.path)), rec.pid, rec.camid, rec.path


class PairDataset(Dataset):
    """Supervised "true pairs": item ``(img, partner_img, pid)``.

    The partner is drawn (torch's RNG) uniformly among *all* images of the same identity, the
    image itself included, as the official code draws it (the two copies still differ by
    their random flips); ``include_self=False`` draws among the *other* images only (an
    identity with a single image is then paired with itself).

    Paper: docs/paper.md "Supervised pretraining" (each sample brings a second image of its
    identity).

    Shape:
        img, other: (C, H, W).

    Taught in: notebooks/05_source_pretraining.ipynb.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable | None = None,
        include_self: bool = True,
    ) -> None:
        if len(records) == 0:
            raise ValueError("records is empty; pass a non-empty split such as dataset.train")
        self.records = list(records)
        self.transform = transform if transform is not None else _default_transform()
        self.include_self = include_self
        by_pid: dict[int, list[int]] = {}
        for i, rec in enumerate(self.records):
            by_pid.setdefault(rec.pid, []).append(i)
        self.index_by_pid = by_pid

    def __len__(self) -> int:
        return len(self.records)

    def partner(self, index: int) -> int:
        """Index of a random image with the same pid (see ``include_self``)."""
        same = self.index_by_pid[self.records[index].pid]
        if not self.include_self:
            same = [i for i in same if i != index] or [index]
        return same[int(torch.randint(len(same), ()).item())]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        rec = self.records[index]
        other = self.records[self.partner(index)]
        img = self.transform(load_image(rec.path))
        img2 = self.transform(load_image(other.path))
        return img, img2, rec.pid


class MultiViewDataset(Dataset):
    """Unlabelled multi-view samples for PAUL: item ``(views, index)``; never the pid.

    View 0 is ``transform(img)``; views ``1 .. num_views-1`` are ``pair_transform(img)``, the
    pseudo pairs of docs/paper.md (colour jitter, rotation, crop, see
    :func:`paulkit.data.transforms.pseudo_pair_transform`).

    Shape:
        views: (num_views, C, H, W); index: the image's position in ``records`` (its memory slot).

    Paper: docs/paper.md "Unsupervised training" (``num_views = 2`` views per image).

    Taught in: notebooks/01_data_loading.ipynb, notebooks/04_ipfl_loss.ipynb.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable,
        pair_transform: Callable,
        num_views: int = 2,
    ) -> None:
        if len(records) == 0:
            raise ValueError("records is empty; pass a non-empty split such as dataset.train")
        if num_views < 1:
            raise ValueError(
                f"num_views={num_views}: the number of views must be at least 1 (PAUL uses 2)"
            )
        self.records = list(records)
        self.transform = transform
        self.pair_transform = pair_transform
        self.num_views = num_views

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.records[index].path)
        views = [self.transform(img)] + [
            self.pair_transform(img) for _ in range(self.num_views - 1)
        ]
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise ValueError(
                f"transform and pair_transform give different shapes {sorted(shapes)}; "
                "make both resize to the same (height, width)"
            )
        return torch.stack(views), index

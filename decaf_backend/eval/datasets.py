"""Readers for the referring / reasoning video segmentation benchmarks, in their published on-disk layouts.

Every benchmark becomes a list of `Expression`s (one (video, expression) pair each: frame files, text,
object ids) plus, where the split has them, ground-truth masks per frame. Layouts and id conventions follow
shared/docs/datasets.md; ids are strings at this boundary, `frames` from the JSON is the authority for frame
order and names, and the GT of a multi-object expression is the union of its objects.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DecafError
from ..video import DEFAULT_CACHE_BYTES, FrameFolderReader, VideoReader

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class DatasetError(DecafError):
    """A benchmark folder does not have the published layout (missing file, wrong schema)."""


def safe_relpath(key: str) -> PurePosixPath:
    """A video key / expression id as a relative path: keys may hold '/' (ReVOS) but never '..' or a root."""
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or not path.parts:
        raise DatasetError(f"unsafe video or expression id {key!r}")
    return path


# ----------------------------------------------------------------------------------------- expressions


@dataclass
class Expression:
    """One (video, expression) pair of a benchmark split."""

    dataset: str
    split: str
    video: str  # video key as in the JSON (may contain '/')
    exp_id: str
    text: str
    frames: list[str]  # frame names without extension, in evaluation order
    frame_dir: Path
    obj_ids: list[str] = field(default_factory=list)
    anno_ids: list[str] = field(default_factory=list)
    type_id: int | None = None  # ReVOS: 0 referring, 1 reasoning, 2 excluded from the means
    size: tuple[int, int] | None = None  # (height, width) where the JSON gives it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """`<video>/<exp_id>`: unique within a split and usable as a relative path."""
        return f"{self.video}/{self.exp_id}"

    def frame_paths(self) -> list[Path]:
        """Image file of every listed frame; the extension is probed once per video (jpg first)."""
        if not self.frames:
            raise DatasetError(f"video {self.video!r} lists no frames")
        first = self.frames[0]
        for ext in IMAGE_EXTS:
            if (self.frame_dir / f"{first}{ext}").is_file():
                return [self.frame_dir / f"{name}{ext}" for name in self.frames]
        raise DatasetError(f"frame {first!r} of video {self.video!r} not found in {self.frame_dir}")

    def reader(self) -> VideoReader:
        """Lazy reader over exactly the listed frames, in JSON order (DecafPipeline.segment takes it)."""
        return FrameFolderReader(self.frame_dir, self.frame_paths(), 0.0, DEFAULT_CACHE_BYTES)


# -------------------------------------------------------------------------------------- mask sources


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (str or bytes counts) → (H, W) uint8; H×W×1 decodes are summed like the official tools."""
    from pycocotools import mask as cocomask

    mask = cocomask.decode(rle)
    return mask.sum(axis=2).astype(np.uint8) if mask.ndim == 3 else mask.astype(np.uint8)


def load_mask_dict(path: Path) -> dict[str, list[Any]]:
    """`mask_dict.json` / `.pkl`: {str(anno_id): [RLE or None per frame]} (keys normalised to str)."""
    if not path.is_file():
        raise DatasetError(f"ground-truth mask file {path} not found")
    if path.suffix == ".pkl":
        with open(path, "rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - the benchmark's own published file
    else:
        data = json.loads(path.read_text())
    return {str(k): v for k, v in data.items()}


def read_label_png(path: Path) -> np.ndarray:
    """A palette or grayscale PNG as its raw (H, W) index / value array."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "1", "I", "I;16"):
            img = img.convert("L")
        return np.asarray(img)


# ------------------------------------------------------------------------------------------ datasets


class RVOSDataset:
    """Base of the five readers: expression list, ground truth, evaluation protocol and submission layout."""

    name = ""
    aggregation = "pooled"  # "pooled" (DecAF eval_rvos), "mevis" (eval_mevis) or "revos" (eval_revos)
    splits: dict[str, bool] = {}  # split → has public ground truth
    default_split = ""
    submission_prefix = ""  # folder the benchmark server wants above <video>/<exp_id>/<frame>.png

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        self.split = split or self.default_split
        if self.split not in self.splits:
            raise DatasetError(
                f"{self.name} has no split {self.split!r}; choose from {', '.join(self.splits)}"
            )
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} is not a folder")

    @property
    def has_gt(self) -> bool:
        return self.splits[self.split]

    def expressions(self) -> list[Expression]:
        raise NotImplementedError

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        """Per listed frame, the (H, W) uint8 sum of the expression's object masks (> 0 is foreground)."""
        raise DatasetError(f"{self.name} split {self.split!r} has no public ground truth")

    def foreground_masks(self, expr: Expression) -> Iterator[np.ndarray] | None:
        """ReVOS only: per frame, the union of every annotated instance of the video (for metric R)."""
        return None

    # helpers shared by the readers
    def _read_meta(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise DatasetError(f"{self.name}: expression file {path} not found")
        try:
            videos = json.loads(path.read_text())["videos"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"{path} is not a meta_expressions file with a 'videos' object: {exc}"
            ) from exc
        return videos

    def _rle_union(self, expr: Expression, mask_dict: dict[str, list[Any]]) -> Iterator[np.ndarray]:
        """Union of the RLEs of `expr.anno_ids`, frame by frame; absent (None/empty) entries add nothing."""
        lists = []
        for anno in expr.anno_ids:
            if anno not in mask_dict:
                raise DatasetError(f"anno_id {anno} of {expr.key} missing from the mask file")
            lists.append(mask_dict[anno])
        size = expr.size or _first_rle_size(lists) or _image_size(expr)
        for i in range(len(expr.frames)):
            out = np.zeros(size, dtype=np.uint8)
            for rles in lists:
                rle = rles[i] if i < len(rles) else None
                if rle:
                    out += decode_rle(rle)  # uint8 sum like the official tools; > 0 is foreground
            yield out

    def _png_union(
        self, expr: Expression, ann_dir: Path, values: Sequence[int] | None
    ) -> Iterator[np.ndarray]:
        """GT from PNGs named like the frames: `values` picks palette ids (None: any non-zero pixel)."""
        size = expr.size or _image_size(expr)
        for name in expr.frames:
            path = ann_dir / f"{name}.png"
            if not path.is_file():  # an unannotated frame has no object
                yield np.zeros(size, dtype=np.uint8)
                continue
            label = read_label_png(path)
            if values is None:
                yield (label > 0).astype(np.uint8)
            else:
                yield np.isin(label, np.asarray(values)).astype(np.uint8)


def _first_rle_size(lists: Sequence[Sequence[Any]]) -> tuple[int, int] | None:
    for rles in lists:
        for rle in rles:
            if rle:
                return int(rle["size"][0]), int(rle["size"][1])
    return None


def _image_size(expr: Expression) -> tuple[int, int]:
    info = expr.reader().info
    return info.height, info.width


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


class RefYouTubeVOS(RVOSDataset):
    """Ref-YouTube-VOS 2021: `meta_expressions/<split>/meta_expressions.json`, `<split>/JPEGImages`.

    train has palette `Annotations` (pixel value = obj_id); valid has no public GT (CodaLab): videos
    without frames (the 305 test videos listed in valid's JSON) are skipped, as DecAF does.
    """

    name = "ref-youtube-vos"
    splits = {"train": True, "valid": False}
    default_split = "valid"
    submission_prefix = "Annotations"

    def expressions(self) -> list[Expression]:
        videos = self._read_meta(self.root / "meta_expressions" / self.split / "meta_expressions.json")
        out = []
        for vid, data in videos.items():
            frame_dir = self.root / self.split / "JPEGImages" / safe_relpath(vid)
            if not frame_dir.is_dir():
                continue
            for exp_id, exp in data["expressions"].items():
                out.append(
                    Expression(
                        self.name, self.split, vid, str(exp_id), exp["exp"], list(data["frames"]), frame_dir,
                        obj_ids=_as_list(exp.get("obj_id")),
                    )
                )  # fmt: skip
        return out

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if not self.has_gt:
            return super().gt_masks(expr)
        ann_dir = self.root / self.split / "Annotations" / safe_relpath(expr.video)
        return self._png_union(expr, ann_dir, [int(o) for o in expr.obj_ids])


class RefDAVIS17(RVOSDataset):
    """Ref-DAVIS17 in ReferFormer's YTVOS-like layout, scored per expression (DecAF / VISA protocol).

    GT: `<split>/mask_dict.pkl` keyed by a counter over sorted video names, then lexicographically sorted
    exp_id strings ("0","1","10",…) — DecAF's `get_davis_meta`; without the pkl, the palette
    `<split>/Annotations/<video>/<frame>.png == obj_id` (how VISA built the pkl).
    """

    name = "ref-davis17"
    splits = {"train": True, "valid": True}
    default_split = "valid"

    def expressions(self) -> list[Expression]:
        videos = self._read_meta(self.root / "meta_expressions" / self.split / "meta_expressions.json")
        counter = {}
        n = 0
        for vid in sorted(videos):
            for exp_id in sorted(str(e) for e in videos[vid]["expressions"]):
                counter[(vid, exp_id)] = str(n)
                n += 1
        out = []
        for vid, data in videos.items():
            frame_dir = self.root / self.split / "JPEGImages" / safe_relpath(vid)
            for exp_id, exp in data["expressions"].items():
                out.append(
                    Expression(
                        self.name, self.split, vid, str(exp_id), exp["exp"], list(data["frames"]), frame_dir,
                        obj_ids=_as_list(exp.get("obj_id")), anno_ids=[counter[(vid, str(exp_id))]],
                    )
                )  # fmt: skip
        return out

    @cached_property
    def _mask_dict(self) -> dict[str, list[Any]] | None:
        path = self.root / self.split / "mask_dict.pkl"
        return load_mask_dict(path) if path.is_file() else None

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if self._mask_dict is not None:
            return self._rle_union(expr, self._mask_dict)
        ann_dir = self.root / self.split / "Annotations" / safe_relpath(expr.video)
        return self._png_union(expr, ann_dir, [int(o) for o in expr.obj_ids])


class MeViS(RVOSDataset):
    """MeViS: `<split>/{JPEGImages, meta_expressions.json, mask_dict.json}`; `valid` has no GT (CodaLab)."""

    name = "mevis"
    aggregation = "mevis"
    splits = {"train": True, "valid_u": True, "valid": False}
    default_split = "valid_u"

    def expressions(self) -> list[Expression]:
        base = self.root / self.split
        videos = self._read_meta(base / "meta_expressions.json")
        out = []
        for vid, data in videos.items():
            frame_dir = base / "JPEGImages" / safe_relpath(vid)
            for exp_id, exp in data["expressions"].items():
                out.append(
                    Expression(
                        self.name, self.split, vid, str(exp_id), exp["exp"], list(data["frames"]), frame_dir,
                        obj_ids=_as_list(exp.get("obj_id")), anno_ids=_as_list(exp.get("anno_id")),
                    )
                )  # fmt: skip
        return out

    @cached_property
    def _mask_dict(self) -> dict[str, list[Any]]:
        return load_mask_dict(self.root / self.split / "mask_dict.json")

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if not self.has_gt:
            return super().gt_masks(expr)
        return self._rle_union(expr, self._mask_dict)


class ReVOS(RVOSDataset):
    """ReVOS (VISA): root holds JPEGImages/<video_key>/ (nested keys), meta_expressions_<split>_.json,
    mask_dict.json and mask_dict_foreground.json; referring and reasoning are averaged separately."""

    name = "revos"
    aggregation = "revos"
    splits = {"valid": True, "train": True}
    default_split = "valid"

    def expressions(self) -> list[Expression]:
        videos = self._read_meta(self.root / f"meta_expressions_{self.split}_.json")
        out = []
        for vid, data in videos.items():
            size = (int(data["height"]), int(data["width"])) if "height" in data and "width" in data else None
            for exp_id, exp in data["expressions"].items():
                type_id = exp.get("type_id")
                out.append(
                    Expression(
                        self.name, self.split, vid, str(exp_id), exp["exp"], list(data["frames"]),
                        self.root / "JPEGImages" / safe_relpath(vid),
                        obj_ids=_as_list(exp.get("obj_id")), anno_ids=_as_list(exp.get("anno_id")),
                        type_id=None if type_id is None else int(type_id), size=size,
                    )
                )  # fmt: skip
        return out

    @cached_property
    def _mask_dict(self) -> dict[str, list[Any]]:
        return load_mask_dict(self.root / "mask_dict.json")

    @cached_property
    def _foreground(self) -> dict[str, Any] | None:
        path = self.root / "mask_dict_foreground.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        return self._rle_union(expr, self._mask_dict)

    def foreground_masks(self, expr: Expression) -> Iterator[np.ndarray] | None:
        if self._foreground is None:
            return None
        if expr.video not in self._foreground:
            raise DatasetError(f"video {expr.video!r} missing from mask_dict_foreground.json")
        return (decode_rle(rle) for rle in self._foreground[expr.video]["masks_rle"])


class ReasonVOS(RVOSDataset):
    """ReasonVOS (VideoLISA), read through DecAF's re-format when present.

    `meta_expressions_v2.json` + `mask_dict_v2.pkl` (RLE list per anno_id, index-paired with `frames`) are
    preferred; otherwise the original `meta_expressions.json` (expression list, `exp_text`) is converted
    in memory with DecAF's renumbering of duplicate exp_ids and GT read from
    `Annotations/<source>_<video>_<obj_id>/<frame>.png` (> 0 foreground; a missing PNG is an empty frame).
    """

    name = "reasonvos"
    splits = {"test": True}
    default_split = "test"

    @cached_property
    def _v2(self) -> bool:
        return (self.root / "meta_expressions_v2.json").is_file()

    def expressions(self) -> list[Expression]:
        if self._v2:
            videos = self._read_meta(self.root / "meta_expressions_v2.json")
        else:
            original = self._read_meta(self.root / "meta_expressions.json")
            videos = {vid: reformat_reasonvos_video(vid, original[vid]) for vid in sorted(original)}
        out = []
        for vid, data in videos.items():
            frame_dir = self.root / "JPEGImages" / safe_relpath(vid)
            for exp_id, exp in data["expressions"].items():
                out.append(
                    Expression(
                        self.name, self.split, vid, str(exp_id), exp["exp"], list(data["frames"]), frame_dir,
                        obj_ids=_as_list(exp.get("obj_id")), anno_ids=_as_list(exp.get("anno_id")),
                        extra={"is_sent": exp.get("is_sent"), "source": data.get("source")},
                    )
                )  # fmt: skip
        return out

    @cached_property
    def _mask_dict(self) -> dict[str, list[Any]] | None:
        path = self.root / "mask_dict_v2.pkl"
        return load_mask_dict(path) if self._v2 and path.is_file() else None

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if self._mask_dict is not None:
            return self._rle_union(expr, self._mask_dict)
        return self._annotation_union(expr)

    def _annotation_union(self, expr: Expression) -> Iterator[np.ndarray]:
        per_object = [
            self._png_union(expr, self.root / "Annotations" / safe_relpath(a), None) for a in expr.anno_ids
        ]
        for masks in zip(*per_object):
            yield np.sum(masks, axis=0).astype(np.uint8)


def reformat_reasonvos_video(video: str, data: dict[str, Any]) -> dict[str, Any]:
    """One video of the original ReasonVOS JSON in DecAF's v2 dict form (same exp_id renumbering).

    A repeated exp_id takes the id, and the expression it displaces moves to the first free id above the
    current maximum — so the ids, and the prediction folders, match DecAF's meta_expressions_v2.json.
    """
    source = data.get("source", "")
    exprs: dict[str, dict[str, Any]] = {}
    for item in data["expressions"]:
        exp_id = str(item["exp_id"])
        obj_id = item["obj_id"]
        entry = {
            "exp": item["exp_text"],
            "obj_id": [obj_id],
            "anno_id": [f"{source}_{video}_{obj_id}"],
            "is_sent": item.get("is_sent"),
        }
        displaced = exprs.pop(exp_id, None)
        exprs[exp_id] = entry
        if displaced is not None:
            new_id = max(int(k) for k in exprs) + 1
            while str(new_id) in exprs:
                new_id += 1
            exprs[str(new_id)] = displaced
    return {"source": source, "frames": data["frames"], "expressions": exprs}


DATASETS: dict[str, type[RVOSDataset]] = {
    cls.name: cls for cls in (RefYouTubeVOS, RefDAVIS17, MeViS, ReVOS, ReasonVOS)
}
ALIASES = {
    "refytvos": "ref-youtube-vos", "ytvos": "ref-youtube-vos", "ref-ytvos": "ref-youtube-vos",
    "davis": "ref-davis17", "davis17": "ref-davis17", "refdavis": "ref-davis17", "ref-davis": "ref-davis17",
    "reason-vos": "reasonvos",
}  # fmt: skip


def load_dataset(name: str, root: str | Path, split: str | None = None) -> RVOSDataset:
    """The reader of benchmark `name` (or an alias: ytvos, davis17, …) over `root`, `split` or its default."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[key](root, split)

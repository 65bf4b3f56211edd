"""Readers for the referring / reasoning video segmentation benchmarks, in their published on-disk layouts.

Every benchmark becomes a list of `Expression`s (one (video, expression) pair each: frame files, text,
object ids) plus, where the split has them, ground-truth masks per frame. Layouts and id conventions follow
shared/docs/datasets.md; ids are strings at this boundary, `frames` from the JSON is the authority for frame
order and names, and the GT of a multi-object expression is the union of its objects.

Each reader parses its expression file entry by entry (`parse`) and knows where its ground truth lives
(`annotation_problems`), so `checks.check_dataset` can report every problem of a split at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..video import DEFAULT_CACHE_BYTES, FrameFolderReader, VideoReader
from .schema import (
    DatasetError,
    DatasetProblems,
    Problems,
    expression_entries,
    id_list,
    read_json_object,
    read_mask_file,
    rle_problem,
    safe_relpath,
    video_entries,
)

__all__ = ["DatasetError", "DatasetProblems", "Expression", "RVOSDataset", "load_dataset", "safe_relpath"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


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

    @property
    def entry(self) -> str:
        """How problems name this expression: `video 'v' expression '3'`."""
        return f"video {self.video!r} expression {self.exp_id!r}"

    def frame_paths(self) -> list[Path]:
        """Image file of every listed frame (jpg first, then jpeg, png); a missing one is an error."""
        paths, missing = find_frame_files(self.frame_dir, self.frames)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(
                f"{self.frame_dir}: listed frame {missing[0]!r}{more} of video {self.video!r} not found"
            )
        return paths

    def reader(self) -> VideoReader:
        """Lazy reader over exactly the listed frames, in JSON order (DecafPipeline.segment takes it)."""
        return FrameFolderReader(self.frame_dir, self.frame_paths(), 0.0, DEFAULT_CACHE_BYTES)


def find_frame_files(folder: Path, names: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(image file of each name found, names without an image file) — one directory listing per call."""
    if not folder.is_dir():
        return [], list(names)
    by_name = {p.name: p for p in folder.iterdir()}
    found, missing = [], []
    for name in names:
        path = next((by_name[name + ext] for ext in IMAGE_EXTS if name + ext in by_name), None)
        if path is None:
            missing.append(name)
        else:
            found.append(path)
    return found, missing


# -------------------------------------------------------------------------------------- mask sources


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (str or bytes counts) → (H, W) uint8; H×W×1 decodes are summed like the official tools."""
    from pycocotools import mask as cocomask

    problem = rle_problem(rle)
    if problem is not None:  # pycocotools would crash or return random pixels
        raise DatasetError(problem)
    mask = cocomask.decode(rle)
    return mask.sum(axis=2).astype(np.uint8) if mask.ndim == 3 else mask.astype(np.uint8)


def read_label_png(path: Path) -> np.ndarray:
    """A palette or grayscale PNG as its raw (H, W) index / value array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1", "I", "I;16"):
                img = img.convert("L")
            return np.asarray(img)
    except OSError as exc:
        raise DatasetError(f"annotation {path} is not a readable image: {exc}") from exc


# ------------------------------------------------------------------------------------------ datasets


class RVOSDataset:
    """Base of the five readers: expression list, ground truth, evaluation protocol and submission layout."""

    name = ""
    aggregation = "pooled"  # "pooled" (DecAF eval_rvos), "mevis" (eval_mevis) or "revos" (eval_revos)
    splits: dict[str, bool] = {}  # split → has public ground truth
    default_split = ""
    submission_prefix = ""  # folder the benchmark server wants above <video>/<exp_id>/<frame>.png
    # the layout, relative to the root; "{split}" stands for the split
    meta_file = ""  # the expression file
    mask_file = ""  # the ground-truth mask file, where the benchmark has one
    frames_dir = "{split}/JPEGImages"  # holds one frame folder per video

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

    @property
    def meta_path(self) -> Path:
        """The expression file of this split."""
        return self.root / self.meta_file.format(split=self.split)

    @property
    def mask_path(self) -> Path:
        """The ground-truth mask file of this split."""
        return self.root / self.mask_file.format(split=self.split)

    def expressions(self) -> list[Expression]:
        """Every expression of the split; a malformed entry anywhere raises DatasetProblems listing all."""
        problems = Problems()
        exprs = self.parse(problems)
        problems.raise_if_any(f"{self.meta_path}")
        return exprs

    def parse(self, problems: Problems) -> list[Expression]:
        """The well-formed expressions; each malformed entry is added to `problems` and left out."""
        out = []
        for vid, data, frames in self._videos(problems):
            frame_dir = self._frame_dir(vid)
            for exp_id, exp in expression_entries(self.meta_path, vid, data["expressions"], problems):
                extras = self._expression_extras(data, exp)
                expr = self._expression(vid, exp_id, exp, frames, frame_dir, problems, **extras)
                out += [expr] if expr else []
        return out

    def annotation_problems(self, exprs: Sequence[Expression], problems: Problems) -> None:
        """Add a problem for every missing or inconsistent piece of ground truth `exprs` need."""

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        """Per listed frame, the (H, W) uint8 sum of the expression's object masks (> 0 is foreground)."""
        raise DatasetError(f"{self.name} split {self.split!r} has no public ground truth")

    def foreground_masks(self, expr: Expression) -> Iterator[np.ndarray] | None:
        """ReVOS only: per frame, the union of every annotated instance of the video (for metric R)."""
        return None

    # helpers shared by the readers -------------------------------------------------------------------
    def _videos(self, problems: Problems) -> Iterator[tuple[str, dict, list]]:
        videos = read_json_object(self.meta_path, "videos")
        yield from video_entries(self.meta_path, videos, problems)

    def _frame_dir(self, vid: str) -> Path:
        return self.root / self.frames_dir.format(split=self.split) / vid

    def _expression_extras(self, data: dict, exp: dict) -> dict[str, Any]:
        """Reader-specific keyword arguments of an Expression."""
        return {}

    def _expression(
        self, vid: str, exp_id: str, exp: dict, frames: list, frame_dir: Path, problems: Problems, **kw: Any
    ) -> Expression | None:
        """One Expression from a well-formed entry; obj_id / anno_id that are not ids are problems."""
        obj_ids, anno_ids = id_list(exp.get("obj_id")), id_list(exp.get("anno_id"))
        entry = f"video {vid!r} expression {exp_id!r}"
        if obj_ids is None or anno_ids is None:
            which = "obj_id" if obj_ids is None else "anno_id"
            problems.add(self.meta_path, entry, f"{which} {exp.get(which)!r} is not an id or a list of ids")
            return None
        return Expression(
            self.name, self.split, vid, exp_id, exp["exp"], frames, frame_dir, obj_ids=obj_ids,
            anno_ids=anno_ids, **kw,
        )  # fmt: skip

    def _check_rle_annotations(
        self, exprs: Sequence[Expression], mask_path: Path, problems: Problems
    ) -> None:
        """Every expression names its objects (anno_id), and each is in the mask file with one valid RLE
        (or null) per listed frame."""
        try:
            mask_dict = self._mask_dict
        except DatasetError as exc:
            problems.items.append(str(exc))
            return
        checked: set[tuple[str, int]] = set()
        for expr in exprs:
            if not expr.anno_ids:
                problems.add(self.meta_path, expr.entry, "no 'anno_id': its ground truth cannot be found")
                continue
            for anno in expr.anno_ids:
                if anno not in mask_dict:
                    problems.add(mask_path, f"anno_id {anno}", f"missing (needed by {expr.entry})")
                    continue
                if (anno, len(expr.frames)) in checked:
                    continue
                checked.add((anno, len(expr.frames)))
                rles = mask_dict[anno]
                if not isinstance(rles, list) or len(rles) != len(expr.frames):
                    what = f"{len(rles)} masks" if isinstance(rles, list) else f"a {type(rles).__name__}"
                    problems.add(
                        mask_path, f"anno_id {anno}",
                        f"{what}, but video {expr.video!r} lists {len(expr.frames)} frames",
                    )  # fmt: skip
                    continue
                size = expr.size or _first_rle_size([rles])  # every frame of one video has one size
                for i, rle in enumerate(rles):
                    problem = rle_problem(rle, size) if rle else None
                    if problem:
                        problems.add(mask_path, f"anno_id {anno} frame {expr.frames[i]!r}", problem)
                        break

    def _check_png_annotations(
        self, exprs: Sequence[Expression], folder_of: Any, problems: Problems, by_obj_id: bool
    ) -> None:
        """Annotation folders exist (each reported once); with `by_obj_id`, obj_id is the palette value."""
        reported: set[Path] = set()
        for expr in exprs:
            if by_obj_id:
                if not expr.obj_ids or not all(o.isdigit() for o in expr.obj_ids):
                    problems.add(
                        self.meta_path, expr.entry, f"obj_id {expr.obj_ids!r} is not a palette index"
                    )
                    continue
            elif not expr.anno_ids:
                problems.add(self.meta_path, expr.entry, "no object id: its ground truth cannot be found")
                continue
            for folder in folder_of(expr):
                if folder not in reported and not folder.is_dir():
                    reported.add(folder)
                    problems.add(folder, "", f"annotation folder missing (first needed by {expr.entry})")

    def _rle_union(self, expr: Expression, mask_dict: dict[str, Any]) -> Iterator[np.ndarray]:
        """Union of the RLEs of `expr.anno_ids`, frame by frame; absent (None/empty) entries add nothing."""
        if not expr.anno_ids:
            raise DatasetError(
                f"{self.meta_path}: {expr.entry}: no 'anno_id': its ground truth cannot be found"
            )
        lists = []
        for anno in expr.anno_ids:
            if anno not in mask_dict:
                raise DatasetError(f"anno_id {anno} of {expr.key} missing from the mask file")
            if not isinstance(mask_dict[anno], list) or len(mask_dict[anno]) != len(expr.frames):
                raise DatasetError(f"anno_id {anno} of {expr.key}: not one mask per listed frame")
            lists.append(mask_dict[anno])
        size = expr.size or _first_rle_size(lists) or _image_size(expr)
        for i in range(len(expr.frames)):
            out = np.zeros(size, dtype=np.uint8)
            for anno, rles in zip(expr.anno_ids, lists):
                if rles[i]:
                    try:
                        out += decode_rle(rles[i])  # uint8 sum like the official tools; > 0 is foreground
                    except (DatasetError, ValueError) as exc:
                        raise DatasetError(f"anno_id {anno} frame {expr.frames[i]!r}: {exc}") from exc
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
    """The size of the first valid RLE (malformed ones are reported where they are decoded)."""
    for rles in lists:
        for rle in rles:
            if rle and rle_problem(rle) is None:
                return int(rle["size"][0]), int(rle["size"][1])
    return None


def _image_size(expr: Expression) -> tuple[int, int]:
    info = expr.reader().info
    return info.height, info.width


class RefYouTubeVOS(RVOSDataset):
    """Ref-YouTube-VOS 2021: `meta_expressions/<split>/meta_expressions.json`, `<split>/JPEGImages`.

    train has palette `Annotations` (pixel value = obj_id); valid has no public GT (CodaLab): videos
    without frames (the 305 test videos listed in valid's JSON) are skipped, as DecAF does.
    """

    name = "ref-youtube-vos"
    splits = {"train": True, "valid": False}
    default_split = "valid"
    submission_prefix = "Annotations"
    meta_file = "meta_expressions/{split}/meta_expressions.json"

    def _videos(self, problems: Problems) -> Iterator[tuple[str, dict, list]]:
        return (video for video in super()._videos(problems) if self._frame_dir(video[0]).is_dir())

    def annotation_problems(self, exprs: Sequence[Expression], problems: Problems) -> None:
        if self.has_gt:
            self._check_png_annotations(exprs, lambda e: [self._ann_dir(e)], problems, by_obj_id=True)

    def _ann_dir(self, expr: Expression) -> Path:
        return self.root / self.split / "Annotations" / safe_relpath(expr.video)

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if not self.has_gt:
            return super().gt_masks(expr)
        return self._png_union(expr, self._ann_dir(expr), [int(o) for o in expr.obj_ids])


class RefDAVIS17(RVOSDataset):
    """Ref-DAVIS17 in ReferFormer's YTVOS-like layout, scored per expression (DecAF / VISA protocol).

    GT: `<split>/mask_dict.pkl` keyed by a counter over sorted video names, then lexicographically sorted
    exp_id strings ("0","1","10",…) — DecAF's `get_davis_meta`; without the pkl, the palette
    `<split>/Annotations/<video>/<frame>.png == obj_id` (how VISA built the pkl).
    """

    name = "ref-davis17"
    splits = {"train": True, "valid": True}
    default_split = "valid"
    meta_file = "meta_expressions/{split}/meta_expressions.json"
    mask_file = "{split}/mask_dict.pkl"

    def parse(self, problems: Problems) -> list[Expression]:
        videos = read_json_object(self.meta_path, "videos")
        counter: dict[tuple[str, str], str] = {}
        for vid in sorted(videos):  # over every key, as DecAF counts them
            exps = videos[vid].get("expressions") if isinstance(videos[vid], dict) else None
            for exp_id in sorted(str(e) for e in exps) if isinstance(exps, dict) else []:
                counter[(vid, exp_id)] = str(len(counter))
        out = []
        for vid, data, frames in video_entries(self.meta_path, videos, problems):
            frame_dir = self._frame_dir(vid)
            for exp_id, exp in expression_entries(self.meta_path, vid, data["expressions"], problems):
                expr = self._expression(vid, exp_id, {**exp, "anno_id": None}, frames, frame_dir, problems)
                if expr:
                    expr.anno_ids = [counter[(vid, exp_id)]]
                    out.append(expr)
        return out

    @cached_property
    def _mask_dict(self) -> dict[str, Any] | None:
        return read_mask_file(self.mask_path) if self.mask_path.is_file() else None

    def annotation_problems(self, exprs: Sequence[Expression], problems: Problems) -> None:
        if self.mask_path.is_file():
            self._check_rle_annotations(exprs, self.mask_path, problems)
        else:
            self._check_png_annotations(exprs, lambda e: [self._ann_dir(e)], problems, by_obj_id=True)

    def _ann_dir(self, expr: Expression) -> Path:
        return self.root / self.split / "Annotations" / safe_relpath(expr.video)

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if self._mask_dict is not None:
            return self._rle_union(expr, self._mask_dict)
        return self._png_union(expr, self._ann_dir(expr), [int(o) for o in expr.obj_ids])


class MeViS(RVOSDataset):
    """MeViS: `<split>/{JPEGImages, meta_expressions.json, mask_dict.json}`; `valid` has no GT (CodaLab)."""

    name = "mevis"
    aggregation = "mevis"
    splits = {"train": True, "valid_u": True, "valid": False}
    default_split = "valid_u"
    meta_file = "{split}/meta_expressions.json"
    mask_file = "{split}/mask_dict.json"

    @cached_property
    def _mask_dict(self) -> dict[str, Any]:
        return read_mask_file(self.mask_path)

    def annotation_problems(self, exprs: Sequence[Expression], problems: Problems) -> None:
        if self.has_gt:
            self._check_rle_annotations(exprs, self.mask_path, problems)

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
    meta_file = "meta_expressions_{split}_.json"
    mask_file = "mask_dict.json"
    frames_dir = "JPEGImages"

    @property
    def foreground_path(self) -> Path:
        return self.root / "mask_dict_foreground.json"

    def parse(self, problems: Problems) -> list[Expression]:
        out = []
        for vid, data, frames in self._videos(problems):
            size = None
            if "height" in data or "width" in data:
                h, w = data.get("height"), data.get("width")
                if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
                    problems.add(self.meta_path, f"video {vid!r}", f"height/width {h!r}/{w!r} are not sizes")
                    continue
                size = (h, w)
            for exp_id, exp in expression_entries(self.meta_path, vid, data["expressions"], problems):
                type_id = exp.get("type_id")
                if type_id not in (0, 1, 2) or isinstance(type_id, bool):
                    problems.add(self.meta_path, f"video {vid!r} expression {exp_id!r}",
                                 f"type_id {type_id!r} is not 0 (referring), 1 (reasoning) or 2")  # fmt: skip
                    continue
                expr = self._expression(
                    vid,
                    exp_id,
                    exp,
                    frames,
                    self._frame_dir(vid),
                    problems,
                    type_id=type_id,
                    size=size,
                )
                out += [expr] if expr else []
        return out

    @cached_property
    def _mask_dict(self) -> dict[str, Any]:
        return read_mask_file(self.mask_path)

    @cached_property
    def _foreground(self) -> dict[str, Any] | None:
        return read_json_object(self.foreground_path) if self.foreground_path.is_file() else None

    def annotation_problems(self, exprs: Sequence[Expression], problems: Problems) -> None:
        self._check_rle_annotations(exprs, self.mask_path, problems)
        try:
            foreground = self._foreground
        except DatasetError as exc:
            problems.items.append(str(exc))
            return
        if foreground is None:
            return
        for vid, frames, size in {(e.video, tuple(e.frames), e.size) for e in exprs}:
            entry = foreground.get(vid)
            rles = entry.get("masks_rle") if isinstance(entry, dict) else None
            if not isinstance(rles, list) or len(rles) != len(frames):
                problems.add(self.foreground_path, f"video {vid!r}",
                             f"needs 'masks_rle' with one mask per listed frame ({len(frames)})")  # fmt: skip
                continue
            bad = next(((i, p) for i, r in enumerate(rles) if r and (p := rle_problem(r, size))), None)
            if bad:
                problems.add(self.foreground_path, f"video {vid!r} frame {frames[bad[0]]!r}", bad[1])

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        return self._rle_union(expr, self._mask_dict)

    def foreground_masks(self, expr: Expression) -> Iterator[np.ndarray] | None:
        if self._foreground is None:
            return None
        entry = self._foreground.get(expr.video)
        if not isinstance(entry, dict) or not isinstance(entry.get("masks_rle"), list):
            raise DatasetError(f"video {expr.video!r} missing from {self.foreground_path}")
        return (decode_rle(rle) for rle in entry["masks_rle"])


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
    mask_file = "mask_dict_v2.pkl"
    frames_dir = "JPEGImages"

    @cached_property
    def _v2(self) -> bool:
        return (self.root / "meta_expressions_v2.json").is_file()

    @property
    def meta_path(self) -> Path:
        return self.root / ("meta_expressions_v2.json" if self._v2 else "meta_expressions.json")

    def _videos(self, problems: Problems) -> Iterator[tuple[str, dict, list]]:
        for vid, data, frames in super()._videos(problems):
            yield (
                vid,
                data if self._v2 else reformat_reasonvos_video(vid, data, self.meta_path, problems),
                frames,
            )

    def _expression_extras(self, data: dict, exp: dict) -> dict[str, Any]:
        return {"extra": {"is_sent": exp.get("is_sent"), "source": data.get("source")}}

    @cached_property
    def _mask_dict(self) -> dict[str, Any] | None:
        return read_mask_file(self.mask_path) if self._v2 and self.mask_path.is_file() else None

    def annotation_problems(self, exprs: Sequence[Expression], problems: Problems) -> None:
        if self._v2 and self.mask_path.is_file():
            self._check_rle_annotations(exprs, self.mask_path, problems)
        else:
            self._check_png_annotations(
                exprs, lambda e: [self._ann_dir(a) for a in e.anno_ids], problems, by_obj_id=False
            )

    def _ann_dir(self, anno: str) -> Path:
        return self.root / "Annotations" / safe_relpath(anno)

    def gt_masks(self, expr: Expression) -> Iterator[np.ndarray]:
        if self._mask_dict is not None:
            return self._rle_union(expr, self._mask_dict)
        return self._annotation_union(expr)

    def _annotation_union(self, expr: Expression) -> Iterator[np.ndarray]:
        if not expr.anno_ids:
            raise DatasetError(
                f"{self.meta_path}: {expr.entry}: no object id: its ground truth cannot be found"
            )
        per_object = [self._png_union(expr, self._ann_dir(a), None) for a in expr.anno_ids]
        for masks in zip(*per_object):
            yield np.sum(masks, axis=0).astype(np.uint8)


def reformat_reasonvos_video(
    video: str,
    data: dict[str, Any],
    path: Path | str = "meta_expressions.json",
    problems: Problems | None = None,
) -> dict[str, Any]:
    """One video of the original ReasonVOS JSON in DecAF's v2 dict form (same exp_id renumbering).

    A repeated exp_id takes the id, and the expression it displaces moves to the first free id above the
    current maximum — so the ids, and the prediction folders, match DecAF's meta_expressions_v2.json.
    Malformed items go to `problems` (raised at once without it) and are left out.
    """
    own = problems is None
    problems = Problems() if problems is None else problems
    source = data.get("source", "")
    items = data["expressions"]
    exprs: dict[str, dict[str, Any]] = {}
    if not isinstance(items, list):
        problems.add(path, f"video {video!r}", f"'expressions' is a {type(items).__name__}, expected a list")
        items = []
    for n, item in enumerate(items):
        ok = isinstance(item, dict) and all(k in item for k in ("exp_id", "obj_id", "exp_text"))
        if not ok or id_list(item["exp_id"]) is None or id_list(item["obj_id"]) is None:
            problems.add(path, f"video {video!r} expression #{n}", "needs 'exp_id', 'obj_id' and 'exp_text'")
            continue
        if not str(item["exp_id"]).lstrip("-").isdigit():
            problems.add(
                path, f"video {video!r} expression #{n}", f"exp_id {item['exp_id']!r} is not a number"
            )
            continue
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
    if own:
        problems.raise_if_any(str(path))
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

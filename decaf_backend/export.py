"""Masks in the formats teams use: Label Studio brush results ↔ DAVIS indexed PNG folders ↔ COCO RLE JSON.

Label Studio side (label-studio.md §3, image-sequence tasks): one `brushlabels` result per object and frame,
`item_index` = frame, `value = {"format": "rle", "rle": [...], "brushlabels": [label]}`, with
`original_width/height`. Objects are told apart by their label. The LS RLE codec comes from
label_studio_sdk.converter.brush, imported lazily so that the method core never loads Label Studio.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from .errors import DecafError
from .overlay import read_indexed_png, save_indexed_png
from .types import FrameMasks

DEFAULT_FROM_NAME = "mask"
DEFAULT_TO_NAME = "image"
DEFAULT_DATA_KEY = "frames"


class ExportError(DecafError):
    """An export/import input is not in the expected format."""


class ExportProblems(ExportError):
    """Every bad entry of an export/import input, one line each (`<file>: <entry>: <what is wrong>`)."""

    def __init__(self, problems: Sequence[str], what: str) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {what}:\n{lines}")


@dataclass
class VideoMasks:
    """Binary masks of the objects of one video; `objects` keeps object order (object k ↔ PNG index k+1)."""

    name: str
    height: int
    width: int
    frame_names: list[str]
    objects: dict[str, FrameMasks] = field(default_factory=dict)
    task_id: int | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def add_object(self, label: str) -> FrameMasks:
        if label not in self.objects:
            self.objects[label] = FrameMasks(self.num_frames, self.height, self.width)
        return self.objects[label]

    def label_map(self, frame: int) -> np.ndarray:
        """DAVIS label map of one frame: 0 background, k+1 object k (a later object wins on overlaps)."""
        if len(self.objects) > 255:
            raise ExportError(f"{len(self.objects)} objects do not fit an 8-bit indexed PNG")
        out = np.zeros((self.height, self.width), dtype=np.uint8)
        for k, masks in enumerate(self.objects.values()):
            out[masks[frame]] = k + 1
        return out


# ------------------------------------------------------------------------------------ Label Studio results


def _ls_brush() -> Any:
    from label_studio_sdk.converter import brush  # heavy import: only when LS data is actually converted

    return brush


def brush_result(
    mask: np.ndarray, frame: int, from_name: str, to_name: str, region_id: str, label: str | None = None
) -> dict[str, Any]:
    """One Label Studio `brushlabels` region: `mask` as LS RLE (0/255) on page `item_index` = frame.

    The browser draws an item without `item_index` on page 0 (docs/ls-browser.md §1), so it is always set.
    """
    mask = np.asarray(mask) > 0
    value: dict[str, Any] = {"format": "rle", "rle": _ls_brush().mask2rle(mask.astype(np.uint8) * 255)}
    if label is not None:
        value["brushlabels"] = [label]
    height, width = mask.shape
    return {
        "id": region_id,
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": to_name,
        "origin": "prediction",
        "item_index": int(frame),
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
    }


def masks_to_brush_results(
    objects: Mapping[str, Sequence[np.ndarray] | FrameMasks],
    from_name: str = DEFAULT_FROM_NAME,
    to_name: str = DEFAULT_TO_NAME,
    score: float | None = None,
    skip_empty: bool = True,
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """LS result items for an image-sequence task: per object (label → per-frame masks), per frame.

    Empty frames are left out unless `skip_empty=False`. Region ids are `<prefix><object>_<frame>`.
    """
    results = []
    for k, (label, masks) in enumerate(objects.items()):
        for frame in range(len(masks)):
            mask = np.asarray(masks[frame]) > 0
            if skip_empty and not mask.any():
                continue
            item = brush_result(mask, frame, from_name, to_name, f"{id_prefix}{k}_{frame}", label)
            if score is not None:
                item["score"] = float(score)
            results.append(item)
    return results


def brush_result_mask(
    item: Mapping[str, Any], height: int | None = None, width: int | None = None
) -> np.ndarray:
    """(H, W) bool mask of one LS `brushlabels` result with an RLE value (size: given, else the item's own)."""
    name = f"result {item.get('id')!r}"
    value = item.get("value")
    if (
        not isinstance(value, Mapping)
        or value.get("format", "rle") != "rle"
        or not isinstance(value.get("rle"), list)
    ):
        raise ExportError(f"{name} has no RLE brush value")
    if height is None or width is None:
        height, width = result_size(item)
    rle = value["rle"]
    if not all(isinstance(b, int) and 0 <= b < 256 for b in rle):
        raise ExportError(f"{name}: value.rle is not a list of bytes")
    # the header's first 32 bits give the number of values: check it before the sdk allocates that many
    count = int.from_bytes(bytes(rle[:4]), "big") if len(rle) >= 4 else -1
    if count != height * width * 4:
        raise ExportError(
            f"{name}: corrupt value.rle (its header does not describe a {width}x{height} RGBA image)"
        )
    try:
        flat = _ls_brush().decode_rle(rle)
    except (ValueError, IndexError, TypeError) as exc:  # the stream ends early or holds garbage
        raise ExportError(f"{name}: corrupt value.rle ({type(exc).__name__}: {exc})") from exc
    if flat.size != height * width * 4:
        raise ExportError(f"{name}: RLE holds {flat.size} values, not {height}x{width}x4")
    return flat.reshape(height, width, 4)[:, :, 3] > 0  # RGBA, the mask is the alpha channel


def result_size(item: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) a result was drawn on (`original_height` / `original_width`)."""
    size = item.get("original_height"), item.get("original_width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ExportError(
            f"result {item.get('id')!r}: original_height/original_width {size[0]!r}/{size[1]!r} are not sizes"
        )
    return size[0], size[1]


def _item_index(item: Mapping[str, Any]) -> int:
    index = item.get("item_index") or 0
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ExportError(f"result {item.get('id')!r}: item_index {index!r} is not a frame number")
    return index


def read_ls_export(path: str | Path) -> list[dict[str, Any]]:
    """Tasks of a Label Studio JSON export (a list of tasks, or one task)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read Label Studio export {path}: {exc}") from exc
    tasks = [data] if isinstance(data, dict) else data
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ExportError(f"{path} is not a Label Studio JSON export (a list of tasks)")
    return tasks


def select_results(task: Mapping[str, Any], source: str = "auto") -> list[dict[str, Any]]:
    """Result items of a task: its latest non-cancelled annotation, or latest prediction (`source` auto).

    source: "annotations", "predictions" or "auto" (annotation when there is one, else prediction).
    """
    if source not in ("auto", "annotations", "predictions"):
        raise ExportError(f"unknown result source {source!r}")
    if source in ("auto", "annotations"):
        done = [a for a in _dicts(task.get("annotations")) if not a.get("was_cancelled")]
        if done:
            return _dicts(done[-1].get("result"))
        if source == "annotations":
            return []
    predictions = _dicts(task.get("predictions"))
    return _dicts(predictions[-1].get("result")) if predictions else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list from an export (anything else in it cannot be a result)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _frame_list(task: Mapping[str, Any], data_key: str | None) -> list[str] | None:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    if data_key:
        value = data.get(data_key)
        return [str(v) for v in value] if isinstance(value, list) else None
    for value in data.values():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return None


def _url_path(url: str) -> PurePosixPath:
    """Path inside a frame URL: the `d=` of /data/local-files/?d=…, else the URL path."""
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    return PurePosixPath(local[0] if local else parsed.path)


def ls_task_to_masks(
    task: Mapping[str, Any],
    source: str = "auto",
    from_name: str | None = None,
    data_key: str | None = None,
    name: str | None = None,
) -> VideoMasks:
    """Per-object masks of every frame of one LS image-sequence task (regions of one label are unioned)."""
    items = [r for r in select_results(task, source) if r.get("type") == "brushlabels"]
    if from_name:
        items = [r for r in items if r.get("from_name") == from_name]
    urls = _frame_list(task, data_key)
    tid = task.get("id")
    try:
        if items:
            height, width = result_size(items[0])
        elif urls:
            raise ExportError("no brush results to take the frame size from")
        else:
            raise ExportError("neither brush results nor a frame list")
        last = max((_item_index(r) for r in items), default=-1)
        if urls is not None and last >= len(urls):
            raise ExportError(f"result on frame {last} but only {len(urls)} frames")
        frame_names = _frame_names(urls) if urls else [f"{i:05d}" for i in range(last + 1)]
        video = VideoMasks(name or f"task_{tid}", height, width, frame_names, task_id=tid)
        for item in items:
            if result_size(item) != (height, width):
                raise ExportError(
                    f"result {item.get('id')!r}: its frame size differs from the task's other results"
                )
            mask = brush_result_mask(item)
            labels = item["value"].get("brushlabels") or [item.get("from_name", "object")]
            video.add_object(str(labels[0])).union(_item_index(item), mask)
    except ExportError as exc:
        raise ExportError(f"task {tid}: {exc}") from exc
    return video


def _frame_names(urls: Sequence[str]) -> list[str]:
    names = [_url_path(u).stem for u in urls]
    if len(set(names)) != len(names) or not all(names):
        return [f"{i:05d}" for i in range(len(urls))]
    return names


def ls_export_to_masks(
    tasks: Iterable[Mapping[str, Any]],
    source: str = "auto",
    from_name: str | None = None,
    data_key: str | None = None,
) -> list[VideoMasks]:
    """Masks of every task that has brush results; videos are named by their frames folder when unique.

    Every bad task is reported at once (ExportProblems), so one fix-and-rerun is enough.
    """
    tasks = [t for t in tasks if any(r.get("type") == "brushlabels" for r in select_results(t, source))]
    folders = []
    for task in tasks:
        urls = _frame_list(task, data_key)
        folders.append(_url_path(urls[0]).parent.name if urls else "")
    use_folders = all(folders) and len(set(folders)) == len(folders)
    videos, problems = [], []
    for task, folder in zip(tasks, folders):
        try:
            videos.append(
                ls_task_to_masks(task, source, from_name, data_key, name=folder if use_folders else None)
            )
        except ExportError as exc:
            problems.append(str(exc))
    if problems:
        raise ExportProblems(problems, "the Label Studio export")
    return videos


# --------------------------------------------------------------------------------------- PNG folders


def write_png_folders(videos: Iterable[VideoMasks], out_dir: str | Path) -> Path:
    """DAVIS layout: `<out>/<video>/<frame>.png` palette label maps + `<out>/objects.json` (index → label)."""
    videos = list(videos)
    for video in videos:
        write_png_video(video, out_dir)
    write_png_index(videos, out_dir)
    return Path(out_dir)


def write_png_video(video: VideoMasks, out_dir: str | Path) -> Path:
    """One video's folder of palette label maps (0 background, k+1 object k)."""
    folder = Path(out_dir) / _safe_name(video.name)
    try:
        maps = [video.label_map(i) for i in range(video.num_frames)]  # > 255 objects fail before any file
    except ExportError as exc:
        raise ExportError(f"{video.name}: {exc}") from exc
    for frame, label_map in zip(video.frame_names, maps):
        save_indexed_png(folder / f"{frame}.png", label_map)
    return folder


def write_png_index(videos: Iterable[VideoMasks], out_dir: str | Path) -> Path:
    """`<out>/objects.json`: the label of every PNG index, per video."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "objects.json"
    path.write_text(json.dumps({v.name: list(v.objects) for v in videos}, indent=1))
    return path


def read_png_folders(root: str | Path, labels: Sequence[str] | None = None) -> list[VideoMasks]:
    """Videos of a DAVIS-style folder (`<root>/<video>/<frame>.png`, or `root` itself holding the PNGs).

    Object k is pixel value k (k ≥ 1; 255 is DAVIS void and ignored); labels from `<root>/objects.json`
    (as written by `write_png_folders`), else `labels`, else "object_<k>".
    """
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a folder")
    index_file = root / "objects.json"
    known: Any = {}
    if index_file.is_file():
        try:
            known = json.loads(index_file.read_text())
        except json.JSONDecodeError as exc:
            raise ExportError(f"{index_file} is not valid JSON: {exc}") from exc
        if not isinstance(known, dict) or not all(isinstance(v, list) for v in known.values()):
            raise ExportError(f"{index_file}: expected {{video: [label of index 1, 2, ...]}}")
    folders = [root] if any(root.glob("*.png")) else sorted(p for p in root.iterdir() if p.is_dir())
    videos = []
    for folder in folders:
        pngs = sorted(folder.glob("*.png"))
        if not pngs:
            continue
        maps = [_read_label_map(p) for p in pngs]
        height, width = maps[0].shape
        bad = next((p for p, m in zip(pngs, maps) if m.shape != (height, width)), None)
        if bad is not None:
            raise ExportError(f"{bad}: {bad.name} differs in size from {pngs[0].name}")
        ids = sorted(int(v) for v in np.unique(np.stack(maps)) if 0 < v < 255)
        names = known.get(folder.name) or labels or []
        count = max(ids[-1] if ids else 0, len(names))
        video = VideoMasks(folder.name, height, width, [p.stem for p in pngs])
        for k in range(1, count + 1):
            masks = video.add_object(names[k - 1] if k - 1 < len(names) else f"object_{k}")
            for i, m in enumerate(maps):
                if (m == k).any():
                    masks[i] = m == k
        videos.append(video)
    if not videos:
        raise ExportError(f"no PNG masks under {root}")
    return videos


def _read_label_map(path: Path) -> np.ndarray:
    try:
        label_map = read_indexed_png(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable palette or grayscale PNG ({exc})") from exc
    if label_map.ndim != 2:
        raise ExportError(f"{path}: not a single-channel label map")
    return label_map


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "video"


# ------------------------------------------------------------------------------------------- COCO RLE


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """pycocotools RLE of a binary (H, W) mask, counts as str (JSON-ready; column-major like COCO)."""
    from pycocotools import mask as cocomask

    rle = cocomask.encode(np.asfortranarray(np.asarray(mask) > 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def write_coco_rle(videos: Iterable[VideoMasks], path: str | Path) -> Path:
    """One JSON for all videos: per video, per object, a per-frame list of COCO RLEs (null when absent).

    `{"videos": [{"name", "task_id", "height", "width", "frames": [names],
                  "objects": [{"id": k, "label", "masks": [rle | null per frame]}]}]}`
    — the MeViS / ReVOS mask_dict convention, decodable with pycocotools.mask.decode.
    """
    out = []
    for video in videos:
        objects = []
        for k, (label, masks) in enumerate(video.objects.items()):
            rles = [encode_coco_rle(m) if m.any() else None for m in masks]
            objects.append({"id": k + 1, "label": label, "masks": rles})
        out.append(
            {
                "name": video.name,
                "task_id": video.task_id,
                "height": video.height,
                "width": video.width,
                "frames": video.frame_names,
                "objects": objects,
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"videos": out}))
    return path


def read_coco_rle(path: str | Path) -> list[VideoMasks]:
    """Videos of a JSON written by `write_coco_rle`; every bad entry is reported at once."""
    try:
        data = json.loads(Path(path).read_text())["videos"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"{path} is not a DecAF COCO-RLE mask file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, list):
        raise ExportError(f"{path}: 'videos' is a {type(data).__name__}, expected a list")
    videos, problems = [], []
    for n, v in enumerate(data):
        try:
            videos.append(_coco_video(v))
        except ExportError as exc:
            name = v.get("name") if isinstance(v, dict) else None
            problems.append(f"{path}: video {name if name is not None else f'#{n}'!r}: {exc}")
    if problems:
        raise ExportProblems(problems, str(path))
    return videos


def _coco_video(v: Any) -> VideoMasks:
    from pycocotools import mask as cocomask

    from .eval.schema import rle_problem

    try:
        video = VideoMasks(str(v["name"]), int(v["height"]), int(v["width"]), [str(f) for f in v["frames"]],
                           task_id=v.get("task_id"))  # fmt: skip
        objects = list(v["objects"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"needs name, height, width, frames and objects ({type(exc).__name__}: {exc})"
        ) from exc
    for k, obj in enumerate(objects):
        entry = f"object {obj.get('label') if isinstance(obj, dict) else k!r}"
        rles = obj.get("masks") if isinstance(obj, dict) else None
        if not isinstance(rles, list) or len(rles) != video.num_frames or "label" not in obj:
            raise ExportError(f"{entry}: needs a label and one mask (or null) per frame ({video.num_frames})")
        masks = video.add_object(str(obj["label"]))
        for i, rle in enumerate(rles):
            if not rle:
                continue
            problem = rle_problem(rle, (video.height, video.width))
            if problem:
                raise ExportError(f"{entry} frame {video.frame_names[i]!r}: {problem}")
            masks[i] = cocomask.decode(rle) > 0
    return video


def read_masks(source: str | Path, labels: Sequence[str] | None = None) -> list[VideoMasks]:
    """PNG folder(s) or a COCO-RLE JSON file, by what `source` is."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".json":
        return read_coco_rle(source)
    return read_png_folders(source, labels)


# ---------------------------------------------------------------------------------------------- import


def masks_to_ls_tasks(
    videos: Iterable[VideoMasks],
    url_prefix: str = "",
    data_key: str = DEFAULT_DATA_KEY,
    frame_ext: str = ".jpg",
    from_name: str = DEFAULT_FROM_NAME,
    to_name: str = DEFAULT_TO_NAME,
    model_version: str = "decaf-import",
) -> list[dict[str, Any]]:
    """New LS tasks (image sequences under `<url_prefix>/<video>/<frame><ext>`) with the masks as predictions."""
    tasks = []
    for video in videos:
        frames = [f"{url_prefix.rstrip('/')}/{video.name}/{name}{frame_ext}" for name in video.frame_names]
        result = masks_to_brush_results(video.objects, from_name, to_name)
        tasks.append(
            {"data": {data_key: frames}, "predictions": [{"model_version": model_version, "result": result}]}
        )
    return tasks


def masks_to_ls_predictions(
    videos: Iterable[VideoMasks],
    tasks: Sequence[Mapping[str, Any]],
    data_key: str | None = None,
    from_name: str = DEFAULT_FROM_NAME,
    to_name: str = DEFAULT_TO_NAME,
    model_version: str = "decaf-import",
) -> list[dict[str, Any]]:
    """Predictions for existing LS tasks (body of POST /api/predictions), matched by `task_<id>` or by
    the folder holding the task's frames."""
    matched, unmatched = match_tasks(videos, tasks, data_key)
    if unmatched:
        raise ExportError(f"no task matches masks of {unmatched[0].name!r}")
    return [prediction_for(video, task_id, from_name, to_name, model_version) for video, task_id in matched]


def prediction_for(
    video: VideoMasks, task_id: Any, from_name: str, to_name: str, model_version: str
) -> dict[str, Any]:
    """Body of POST /api/predictions putting `video`'s masks on task `task_id`."""
    result = masks_to_brush_results(video.objects, from_name, to_name)
    return {"task": task_id, "model_version": model_version, "result": result}


def match_tasks(
    videos: Iterable[VideoMasks], tasks: Sequence[Mapping[str, Any]], data_key: str | None = None
) -> tuple[list[tuple[VideoMasks, Any]], list[VideoMasks]]:
    """([(video, task id)], [videos no task matches]): by the video's task id, `task_<id>`, or the folder
    holding the task's frames."""
    by_name: dict[str, Any] = {}
    for task in tasks:
        by_name[f"task_{task.get('id')}"] = task.get("id")
        urls = _frame_list(task, data_key)
        if urls:
            by_name.setdefault(_url_path(urls[0]).parent.name, task.get("id"))
    matched, unmatched = [], []
    for video in videos:
        task_id = video.task_id if video.task_id is not None else by_name.get(video.name)
        if task_id is None:
            unmatched.append(video)
        else:
            matched.append((video, task_id))
    return matched, unmatched


# ------------------------------------------------------------------------------------------------- CLI


EXIT_CODES = "exit code: 0 everything converted, 1 some videos failed (listed at the end), 2 bad input"


def _export_cmd(args: argparse.Namespace) -> int:
    # bad input (unreadable file, any malformed result) stops everything before a file is written
    try:
        videos = ls_export_to_masks(read_ls_export(args.export), args.source, args.from_name, args.data_key)
    except ExportProblems as exc:
        raise ExportProblems(
            [f"{args.export}: {p}" for p in exc.problems], "the Label Studio export"
        ) from exc
    except ExportError as exc:
        raise ExportError(f"{args.export}: {exc}") from exc
    if not videos:
        raise ExportError(f"{args.export}: no brush results ({args.source})")
    failed: list[str] = []
    if args.to == "png":
        written = []
        for video in videos:
            try:
                write_png_video(video, args.out)
                written.append(video)
            except (ExportError, OSError) as exc:  # one video that cannot be written does not stop the rest
                failed.append(f"{exc} (--to coco keeps any number of objects)")
        out = write_png_index(written, args.out).parent
    else:
        written, out = videos, write_coco_rle(videos, args.out)
    print(f"{len(written)} video(s), {sum(len(v.objects) for v in written)} object(s) written to {out}")
    return _report_failures(failed)


def _report_failures(failed: Sequence[str]) -> int:
    """List what failed, with its reason, after the summary line; the exit code says whether anything did."""
    if not failed:
        return 0
    print(f"{len(failed)} failed:")
    for line in failed:
        print(f"  {line}")
    return 1


def _import_cmd(args: argparse.Namespace) -> int:
    videos = read_masks(args.masks, args.label or None)
    failed: list[str] = []
    if args.tasks:
        matched, unmatched = match_tasks(videos, read_ls_export(args.tasks), args.data_key)
        payload = [prediction_for(v, t, args.from_name, args.to_name, args.model_version) for v, t in matched]
        failed = [f"{v.name}: no task in {args.tasks} has this id or frame folder" for v in unmatched]
        what = "prediction(s) for existing tasks (POST each to /api/predictions)"
    else:
        payload = masks_to_ls_tasks(
            videos, args.url_prefix, args.data_key or DEFAULT_DATA_KEY, args.frame_ext,
            args.from_name, args.to_name, args.model_version,
        )  # fmt: skip
        what = "task(s) with predictions (import into the project)"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload))
    print(f"{len(payload)} {what} written to {args.out}")
    return _report_failures(failed)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `export` and `import` to the `python -m decaf_backend` parser."""
    exp = subparsers.add_parser(
        "export", help="Label Studio JSON export → DAVIS PNG folders or COCO RLE JSON", epilog=EXIT_CODES
    )
    exp.add_argument("export", help="Label Studio JSON export file (image-sequence tasks with brush masks)")
    exp.add_argument("--to", choices=["png", "coco"], default="png", help="PNG folders or one COCO-RLE JSON")
    exp.add_argument("--out", required=True, help="output folder (png) or .json file (coco)")
    exp.add_argument("--source", choices=["auto", "annotations", "predictions"], default="auto",
                     help="annotation when there is one, else the latest prediction (auto)")  # fmt: skip
    exp.add_argument("--from-name", default=None, help="only results of this BrushLabels control")
    exp.add_argument(
        "--data-key", default=None, help="task data key of the frame list (default: the first list)"
    )
    exp.set_defaults(func=_export_cmd)

    imp = subparsers.add_parser(
        "import", help="PNG folders or COCO RLE JSON → Label Studio tasks / predictions", epilog=EXIT_CODES
    )
    imp.add_argument("masks", help="DAVIS-style PNG folder (one subfolder per video) or a COCO-RLE JSON")
    imp.add_argument("--out", required=True, help="JSON file to write")
    imp.add_argument(
        "--tasks", default=None, help="LS export of existing tasks: write predictions for them instead"
    )
    imp.add_argument("--url-prefix", default="/data/local-files/?d=frames",
                     help="frame URLs of new tasks: <prefix>/<video>/<frame><ext>")  # fmt: skip
    imp.add_argument("--frame-ext", default=".jpg", help="frame file extension in new tasks")
    imp.add_argument(
        "--data-key", default=None, help=f"task data key of the frame list (new tasks: {DEFAULT_DATA_KEY})"
    )
    imp.add_argument("--from-name", default=DEFAULT_FROM_NAME, help="BrushLabels control name")
    imp.add_argument("--to-name", default=DEFAULT_TO_NAME, help="Image control name")
    imp.add_argument("--label", action="append", default=[], help="label of object 1, 2, … (repeat)")
    imp.add_argument("--model-version", default="decaf-import")
    imp.set_defaults(func=_import_cmd)

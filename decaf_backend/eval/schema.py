"""Reading benchmark files entry by entry: every malformed entry becomes one problem naming its file and
entry, so a dataset check can list all of them at once instead of stopping at the first traceback.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DecafError


class DatasetError(DecafError):
    """A benchmark folder does not have the published layout (missing file, wrong schema)."""


class DatasetProblems(DatasetError):
    """Every problem found in a dataset, one line each (`<file>: <entry>: <what is wrong>`)."""

    def __init__(self, problems: list[str], what: str = "the dataset") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {what}:\n{lines}")


class Problems:
    """Collects problems while a reader goes on with the entries that are fine."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: Path | str, entry: str, message: str) -> None:
        self.items.append(f"{where}: {entry}: {message}" if entry else f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str) -> None:
        if self.items:
            raise DatasetProblems(self.items, what)


def safe_relpath(key: str) -> PurePosixPath:
    """A video key / expression id as a relative path: keys may hold '/' (ReVOS) but never '..' or a root."""
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or not path.parts:
        raise DatasetError(f"unsafe video or expression id {key!r}")
    return path


def read_json_object(path: Path, top_key: str | None = None) -> dict[str, Any]:
    """A JSON file whose top level (or `top_key` inside it) is an object; errors name the file."""
    if not path.is_file():
        raise DatasetError(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if top_key is not None:
        if not isinstance(data, dict) or top_key not in data:
            raise DatasetError(f"{path}: no top-level {top_key!r} object")
        data = data[top_key]
    if not isinstance(data, dict):
        where = f"{top_key!r}" if top_key else "the top level"
        raise DatasetError(f"{path}: {where} is a {type(data).__name__}, expected an object")
    return data


def read_mask_file(path: Path) -> dict[str, Any]:
    """`mask_dict.json` / `.pkl`: {str(anno_id): [RLE or None per frame]} (keys normalised to str)."""
    if not path.is_file():
        raise DatasetError(f"ground-truth mask file {path} not found")
    if path.suffix == ".pkl":
        try:
            with open(path, "rb") as fh:
                data = pickle.load(fh)  # noqa: S301 - the benchmark's own published file
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise DatasetError(f"{path} is not a readable pickle: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: holds a {type(data).__name__}, expected a dict keyed by anno_id")
    else:
        data = read_json_object(path)
    return {str(k): v for k, v in data.items()}


def video_entries(path: Path, videos: dict[str, Any], problems: Problems) -> Iterator[tuple[str, dict, list]]:
    """(video key, entry, frame names) of every well-formed video of an expression file."""
    for vid, data in videos.items():
        entry = f"video {vid!r}"
        try:
            safe_relpath(vid)
        except DatasetError as exc:
            problems.add(path, entry, str(exc))
            continue
        if not isinstance(data, dict):
            problems.add(path, entry, f"is a {type(data).__name__}, expected an object")
            continue
        frames = data.get("frames")
        if not isinstance(frames, list) or not frames:
            problems.add(path, entry, "'frames' must be a non-empty list of frame names")
            continue
        bad = [f for f in frames if not isinstance(f, str) or not _safe_name(f)]
        if bad:
            problems.add(path, entry, f"frame names must be plain strings, got {bad[0]!r}")
            continue
        if len(set(frames)) != len(frames):
            problems.add(path, entry, "'frames' lists a frame twice")
            continue
        if "expressions" not in data:
            problems.add(path, entry, "no 'expressions'")
            continue
        yield vid, data, list(frames)


def _safe_name(name: str) -> bool:
    try:
        safe_relpath(name)
    except DatasetError:
        return False
    return True


def expression_entries(
    path: Path, vid: str, expressions: Any, problems: Problems
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(exp_id, entry) of every well-formed expression of a video: `expressions` must be an object."""
    if not isinstance(expressions, dict):
        problems.add(
            path,
            f"video {vid!r}",
            f"'expressions' is a {type(expressions).__name__}, expected an object keyed by expression id",
        )
        return
    for exp_id, exp in expressions.items():
        entry = f"video {vid!r} expression {exp_id!r}"
        if not _safe_name(str(exp_id)):
            problems.add(path, entry, "unsafe expression id")
        elif not isinstance(exp, dict):
            problems.add(path, entry, f"is a {type(exp).__name__}, expected an object")
        elif not isinstance(exp.get("exp"), str) or not exp["exp"].strip():
            problems.add(path, entry, "no expression text ('exp')")
        else:
            yield str(exp_id), exp


def id_list(value: Any) -> list[str] | None:
    """obj_id / anno_id as a list of strings (a scalar becomes one item); None when not ids at all."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in items):
        return None
    return [str(v) for v in items]


# ---------------------------------------------------------------------------------------------- RLE


def rle_problem(rle: Any, size: tuple[int, int] | None = None) -> str | None:
    """Why `rle` is not a COCO RLE of `size` (None when it is): the runs must cover exactly H×W pixels.

    pycocotools decodes some corrupt strings without complaint (an empty string gives random pixels), so
    the runs are counted here, from the compressed string itself.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "not an RLE object with 'size' and 'counts'"
    dims = rle["size"]
    if (
        not isinstance(dims, (list, tuple))
        or len(dims) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
    ):
        return f"RLE size {dims!r} is not [height, width]"
    if size is not None and tuple(dims) != tuple(size):
        return f"RLE size {list(dims)} differs from the frame size {list(size)}"
    counts = rle["counts"]
    if isinstance(counts, list):
        runs: list[int] | None = counts if all(isinstance(c, int) and c >= 0 for c in counts) else None
    elif isinstance(counts, (str, bytes)):
        runs = coco_runs(counts.encode("ascii", "replace") if isinstance(counts, str) else counts)
    else:
        return f"RLE counts is a {type(counts).__name__}"
    if runs is None:
        return "RLE counts are corrupt"
    if sum(runs) != dims[0] * dims[1]:
        return f"RLE runs cover {sum(runs)} pixels, not {dims[0]}x{dims[1]}"
    return None


def coco_runs(counts: bytes) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString), None when it is corrupt."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                return None  # a value cut off in the middle
            c = counts[pos] - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return runs

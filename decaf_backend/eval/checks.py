"""Up-front dataset check: every expression entry parses, every listed frame exists, every expression's
ground truth is there and consistent — all problems at once, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

from .datasets import Expression, RVOSDataset, find_frame_files
from .schema import DatasetError, DatasetProblems, Problems


@dataclass
class DatasetCheck:
    """What a check found: the expressions that parsed, and every problem (empty when the split is sound)."""

    expressions: list[Expression]
    problems: list[str]

    @property
    def num_videos(self) -> int:
        return len({e.video for e in self.expressions})

    @property
    def num_frames(self) -> int:
        return sum(len(frames) for frames in {e.video: e.frames for e in self.expressions}.values())

    def raise_if_any(self, dataset: RVOSDataset) -> None:
        if self.problems:
            raise DatasetProblems(self.problems, f"{dataset.name} {dataset.split} under {dataset.root}")


def check_dataset(dataset: RVOSDataset) -> DatasetCheck:
    """Parse the split's expression file, look for every listed frame and every annotation it needs."""
    problems = Problems()
    try:
        exprs = dataset.parse(problems)
    except DatasetError as exc:  # the file itself is missing or not an expression file
        return DatasetCheck([], [str(exc)])
    if not exprs and not problems:
        problems.add(dataset.meta_path, "", "lists no expressions (with frames on disk)")
    _check_frames(dataset, exprs, problems)
    if dataset.has_gt:
        dataset.annotation_problems(exprs, problems)
    return DatasetCheck(exprs, problems.items)


def _check_frames(dataset: RVOSDataset, exprs: list[Expression], problems: Problems) -> None:
    videos = {(e.video, e.frame_dir): e.frames for e in exprs}
    for (vid, frame_dir), frames in videos.items():
        if not frame_dir.is_dir():
            problems.add(dataset.meta_path, f"video {vid!r}", f"frame folder {frame_dir} not found")
            continue
        _, missing = find_frame_files(frame_dir, frames)
        if missing:
            more = f" and {len(missing) - 1} more listed frame(s)" if len(missing) > 1 else ""
            problems.add(
                dataset.meta_path, f"video {vid!r} frame {missing[0]!r}", f"not found in {frame_dir}{more}"
            )

"""Tiny synthetic benchmarks in each published layout (shared/docs/datasets.md), built by test fixtures.

Each builder writes a few frames of moving shapes, the expression JSON and the ground truth in that
benchmark's format, and returns `truth`: {"<video>/<exp_id>": (text, (T, H, W) bool union mask)} for the
expressions of the GT-bearing split — computed here, independently of the readers under test.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask

H, W = 24, 32

Truth = dict[str, tuple[str, np.ndarray]]


def scene(num_frames: int, num_objects: int = 3) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Frames (T, H, W, 3) and object masks {1: rect moving right, 2: disc moving down (absent on frame 2),
    3: a small square in a corner}."""
    yy, xx = np.mgrid[0:H, 0:W]
    objects = {k: np.zeros((num_frames, H, W), bool) for k in range(1, num_objects + 1)}
    rng = np.random.default_rng(1)
    frames = np.empty((num_frames, H, W, 3), np.uint8)
    for t in range(num_frames):
        objects[1][t, 3:10, 2 + 3 * t : 10 + 3 * t] = True
        if num_objects >= 2 and t != 2:
            objects[2][t] = (yy - (8 + 2 * t)) ** 2 + (xx - 22) ** 2 <= 16
        if num_objects >= 3:
            objects[3][t, 18:22, 2:6] = True
        frame = rng.integers(30, 90, (H, W, 3)).astype(np.uint8)
        for k, masks in objects.items():
            frame[masks[t]] = (60 * k + 40, 200 - 50 * k, 90)
        frames[t] = frame
    return frames, objects


def write_frames(folder: Path, names: list[str], frames: np.ndarray, ext: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(folder / f"{name}{ext}")


def write_palette_pngs(folder: Path, names: list[str], objects: dict[int, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, name in enumerate(names):
        label = np.zeros((H, W), np.uint8)
        for k, masks in objects.items():
            label[masks[t]] = k
        img = Image.fromarray(label, mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
        img.save(folder / f"{name}.png")


def rle(mask: np.ndarray, as_str: bool = True) -> dict | None:
    if not mask.any():
        return None
    out = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(out["size"]), "counts": out["counts"].decode() if as_str else out["counts"]}


def names(n: int, stride: int = 1) -> list[str]:
    return [f"{i * stride:05d}" for i in range(n)]


def union(objects: dict[int, np.ndarray], ids: list[int]) -> np.ndarray:
    return np.any([objects[k] for k in ids], axis=0)


def dump(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------------------- builders


def build_ytvos(root: Path, n: int = 4) -> Truth:
    """train (palette Annotations, obj_id strings, stride-5 names) and valid (no GT, one listed test video
    without frames, which readers must skip)."""
    frames, objects = scene(n, 2)
    fr = names(n, stride=5)
    train = {"vid_a": {"expressions": {"0": {"exp": "the box moving right", "obj_id": "1"},
                                       "1": {"exp": "the round thing", "obj_id": "2"}}, "frames": fr}}  # fmt: skip
    dump(root / "meta_expressions" / "train" / "meta_expressions.json", {"videos": train})
    write_frames(root / "train" / "JPEGImages" / "vid_a", fr, frames)
    write_palette_pngs(root / "train" / "Annotations" / "vid_a", fr, objects)
    valid = {
        "vid_v": {"expressions": {"0": {"exp": "a red box"}, "1": {"exp": "a disc"}}, "frames": fr},
        "test_only": {"expressions": {"0": {"exp": "not downloadable"}}, "frames": fr},
    }
    dump(root / "meta_expressions" / "valid" / "meta_expressions.json", {"videos": valid})
    write_frames(root / "valid" / "JPEGImages" / "vid_v", fr, frames)
    return {"vid_a/0": ("the box moving right", objects[1]), "vid_a/1": ("the round thing", objects[2])}


def build_davis(root: Path, n: int = 4) -> Truth:
    """valid: 'bike' with 3 objects × 4 expressions (ids 0..11: the lexicographic anno_id counter matters)
    and 'cars' with 1 object; GT in mask_dict.pkl (bytes RLE) and Annotations; train: Annotations only."""
    frames, objects = scene(n, 3)
    fr = names(n)
    truth: Truth = {}
    meta = {}
    for vid, num_obj in (("bike", 3), ("cars", 1)):
        exps = {}
        for k in range(num_obj):
            for a in range(4):
                text = f"object {k + 1} annotator {a // 2 + 1} {'full' if a % 2 else 'first'}"
                exps[str(4 * k + a)] = {"exp": text, "obj_id": str(k + 1)}
                truth[f"{vid}/{4 * k + a}"] = (text, objects[k + 1])
        meta[vid] = {"expressions": exps, "frames": fr}
    for split in ("valid", "train"):
        dump(root / "meta_expressions" / split / "meta_expressions.json", {"videos": meta})
        for vid in meta:
            write_frames(root / split / "JPEGImages" / vid, fr, frames)
            used = {k: objects[k] for k in range(1, 4 if vid == "bike" else 2)}
            write_palette_pngs(root / split / "Annotations" / vid, fr, used)
    mask_dict, counter = {}, 0
    for vid in sorted(meta):
        for exp_id in sorted(meta[vid]["expressions"]):  # DecAF: lexicographic "0", "1", "10", "11", "2", …
            masks = truth[f"{vid}/{exp_id}"][1]
            mask_dict[str(counter)] = [rle(m, as_str=False) for m in masks]
            counter += 1
    with open(root / "valid" / "mask_dict.pkl", "wb") as fh:
        pickle.dump(mask_dict, fh)
    return truth


def build_mevis(root: Path, n: int = 5) -> Truth:
    """valid_u (GT in mask_dict.json, a two-object expression, null RLEs) and valid (no GT)."""
    frames, objects = scene(n, 2)
    fr = names(n)
    exps = {
        "0": {"exp": "two things moving", "obj_id": [0, 1], "anno_id": [10, 11]},
        "1": {"exp": "the disc that disappears", "obj_id": [1], "anno_id": [11]},
    }
    dump(
        root / "valid_u" / "meta_expressions.json",
        {"videos": {"clip1": {"vid_id": 3, "frames": fr, "expressions": exps}}},
    )
    write_frames(root / "valid_u" / "JPEGImages" / "clip1", fr, frames)
    dump(
        root / "valid_u" / "mask_dict.json",
        {"10": [rle(m) for m in objects[1]], "11": [rle(m) for m in objects[2]]},
    )
    dump(root / "valid" / "meta_expressions.json",
         {"videos": {"clip9": {"frames": fr, "expressions": {"0": {"exp": "a box"}, "1": {"exp": "a disc"}}}}})  # fmt: skip
    write_frames(root / "valid" / "JPEGImages" / "clip9", fr, frames)
    return {
        "clip1/0": ("two things moving", union(objects, [1, 2])),
        "clip1/1": ("the disc that disappears", objects[2]),
    }


def build_revos(root: Path, n: int = 4) -> Truth:
    """Nested video key, frame names that are not numbers, type_id 0/1/2, foreground masks."""
    frames, objects = scene(n, 3)
    fr = [f"img_{i:04d}" for i in range(n)]
    vid = "UVO/all/-x_Y1"
    exps = {
        "0": {"exp": "the box", "obj_id": [0], "anno_id": [3001], "type_id": 0},
        "1": {
            "exp": "which shapes could roll away?",
            "obj_id": [0, 1],
            "anno_id": [3001, 3002],
            "type_id": 1,
        },
        "2": {"exp": "what is in the corner?", "obj_id": [2], "anno_id": [3003], "type_id": 1},
        "3": {"exp": "the missing giraffe", "obj_id": [2], "anno_id": [3003], "type_id": 2},
    }
    dump(root / "meta_expressions_valid_.json",
         {"videos": {vid: {"vid_id": "7", "height": H, "width": W, "frames": fr, "expressions": exps}}})  # fmt: skip
    write_frames(root / "JPEGImages" / vid, fr, frames)
    dump(root / "mask_dict.json", {str(3000 + k): [rle(m) for m in objects[k]] for k in (1, 2, 3)})
    fg = union(objects, [1, 2, 3])
    dump(root / "mask_dict_foreground.json",
         {vid: {"masks_rle": [rle(m) for m in fg], "foreground_ratio": [float(m.mean()) for m in fg]}})  # fmt: skip
    return {
        f"{vid}/0": ("the box", objects[1]),
        f"{vid}/1": ("which shapes could roll away?", union(objects, [1, 2])),
        f"{vid}/2": ("what is in the corner?", objects[3]),
        f"{vid}/3": ("the missing giraffe", objects[3]),
    }


def build_reasonvos(root: Path, n: int = 4, v2: bool = False) -> Truth:
    """Original release (expression list with a duplicate exp_id, Annotations/<source>_<video>_<obj>/) or
    DecAF's v2 re-format (dict, mask_dict_v2.pkl). The video name contains '_'."""
    frames, objects = scene(n, 2)
    fr = names(n)
    vid = "dog_park_01"
    original = [
        {"exp_id": 0, "obj_id": 1, "exp_text": "Which thing moves right?", "is_sent": True},
        {"exp_id": 1, "obj_id": 1, "exp_text": "box", "is_sent": False},
        {"exp_id": 0, "obj_id": 2, "exp_text": "Which thing vanishes?", "is_sent": True},  # duplicate id 0
    ]
    write_frames(root / "JPEGImages" / vid, fr, frames)
    # DecAF renumbering: the later "0" keeps id 0, the displaced first one moves to max + 1 = 2
    truth = {f"{vid}/0": ("Which thing vanishes?", objects[2]), f"{vid}/1": ("box", objects[1]),
             f"{vid}/2": ("Which thing moves right?", objects[1])}  # fmt: skip
    if not v2:
        dump(
            root / "meta_expressions.json",
            {"videos": {vid: {"source": "MeViS", "frames": fr, "expressions": original}}},
        )
        for k in (1, 2):
            folder = root / "Annotations" / f"MeViS_{vid}_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for t, name in enumerate(fr):
                Image.fromarray(objects[k][t].astype(np.uint8) * 255).save(folder / f"{name}.png")
        return truth
    exps = {eid: {"exp": text, "obj_id": [k], "anno_id": [f"MeViS_{vid}_{k}"], "is_sent": True}
            for eid, (text, k) in (("0", (truth[f"{vid}/0"][0], 2)), ("1", ("box", 1)), ("2", (truth[f"{vid}/2"][0], 1)))}  # fmt: skip
    dump(
        root / "meta_expressions_v2.json",
        {"videos": {vid: {"source": "MeViS", "frames": fr, "expressions": exps}}},
    )
    empty = np.zeros((H, W), np.uint8)
    mask_dict = {f"MeViS_{vid}_{k}": [cocomask.encode(np.asfortranarray(m.astype(np.uint8) if m.any() else empty))
                                      for m in objects[k]] for k in (1, 2)}  # fmt: skip
    with open(root / "mask_dict_v2.pkl", "wb") as fh:
        pickle.dump(mask_dict, fh)
    return truth


BUILDERS = {
    "ref-youtube-vos": (build_ytvos, "train"),
    "ref-davis17": (build_davis, "valid"),
    "mevis": (build_mevis, "valid_u"),
    "revos": (build_revos, "valid"),
    "reasonvos": (build_reasonvos, "test"),
}


@dataclass
class TruthSegmenter:
    """Answers each expression with the builder's own masks (so J&F = 1 proves the readers right)."""

    truth: Truth

    def __call__(self, expr):  # noqa: ANN001, ANN204 - the Segmenter protocol
        return self.truth[expr.key][1]


@dataclass
class RendezvousOracleFactory:
    """Picklable factory for Ray workers: the oracle, answering only once `workers` worker processes have
    each taken an expression (so a test sees them all at work), with "<pid>:<CUDA_VISIBLE_DEVICES>" as
    object name; `fail` names expressions that raise instead."""

    name: str
    root: str
    split: str
    meeting: str  # a folder where each worker leaves its pid
    workers: int
    fail: tuple[str, ...] = ()

    def __call__(self):  # noqa: ANN204
        from decaf_backend.eval.datasets import load_dataset
        from decaf_backend.eval.segmenters import OracleSegmenter

        oracle = OracleSegmenter(load_dataset(self.name, self.root, self.split))
        met = []

        def segment(expr):  # noqa: ANN001, ANN202
            if not met:
                folder = Path(self.meeting)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / str(os.getpid())).touch()
                deadline = time.monotonic() + 300
                while len(list(folder.iterdir())) < self.workers and time.monotonic() < deadline:
                    time.sleep(0.05)
                met.append(True)
            if expr.key in self.fail:
                raise RuntimeError(f"{expr.key} fell over")
            return SimpleNamespace(
                masks=oracle(expr), object_name=f"{os.getpid()}:{os.environ.get('CUDA_VISIBLE_DEVICES')}"
            )

        return segment

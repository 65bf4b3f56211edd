"""Masks ↔ Label Studio brush results ↔ DAVIS PNG folders / COCO RLE JSON, losslessly, and the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from decaf_backend.cli import main
from decaf_backend.export import (
    ExportError,
    VideoMasks,
    brush_result_mask,
    ls_export_to_masks,
    ls_task_to_masks,
    masks_to_brush_results,
    read_coco_rle,
    read_masks,
    read_png_folders,
    select_results,
    write_coco_rle,
    write_png_folders,
)
from decaf_backend.types import FrameMasks

from .synthetic_rvos import scene

N = 5


@pytest.fixture(scope="module")
def objects() -> dict[str, np.ndarray]:
    """Three non-overlapping objects, one absent on a frame, on 5 frames of 24×32."""
    _, masks = scene(N, 3)
    return {"box": masks[1], "disc": masks[2], "corner": masks[3]}


def ls_task(objects, task_id=7, folder="clip_a", overlap_label=None) -> dict:
    frames = [f"/data/local-files/?d=frames/{folder}/{i:05d}.jpg" for i in range(N)]
    result = masks_to_brush_results(objects, from_name="mask", to_name="image", score=0.9)
    return {
        "id": task_id,
        "data": {"frames": frames},
        "annotations": [],
        "predictions": [{"model_version": "decaf", "score": 0.9, "result": result}],
    }


def assert_same(video: VideoMasks, objects: dict[str, np.ndarray]) -> None:
    assert list(video.objects) == list(objects)
    assert video.num_frames == N and (video.height, video.width) == objects["box"].shape[1:]
    for label, masks in objects.items():
        np.testing.assert_array_equal(video.objects[label].to_array(), masks, err_msg=label)


def test_brush_results_shape_and_values(objects):
    results = masks_to_brush_results(objects, score=0.5)
    # one region per object and frame where the object is present
    assert len(results) == sum(int(m.any(axis=(1, 2)).sum()) for m in objects.values()) == 3 * N - 1
    item = results[0]
    assert item["type"] == "brushlabels" and item["item_index"] == 0 and item["value"]["format"] == "rle"
    assert item["value"]["brushlabels"] == ["box"] and item["original_height"] == 24 and item["score"] == 0.5
    np.testing.assert_array_equal(brush_result_mask(item), objects["box"][0])
    assert len({r["id"] for r in results}) == len(results)


def test_round_trip_masks_ls_png_coco_masks(objects, tmp_path):
    task = ls_task(objects)
    video = ls_task_to_masks(json.loads(json.dumps(task)))  # through JSON, as an LS export would be
    assert_same(video, objects)
    assert video.frame_names == [f"{i:05d}" for i in range(N)] and video.task_id == 7

    png_root = write_png_folders([video], tmp_path / "png")
    pngs = sorted((png_root / "task_7").glob("*.png"))
    assert len(pngs) == N and Image.open(pngs[0]).mode == "P"
    label = np.asarray(Image.open(pngs[0]))
    assert set(np.unique(label)) == {0, 1, 2, 3}
    (back,) = read_png_folders(png_root)
    assert_same(back, objects)

    coco_path = write_coco_rle([video], tmp_path / "masks.json")
    data = json.loads(coco_path.read_text())["videos"][0]
    assert data["frames"] == video.frame_names and data["objects"][1]["masks"][2] is None  # disc absent
    decoded = cocomask.decode(data["objects"][0]["masks"][3])  # plain pycocotools reads it
    np.testing.assert_array_equal(decoded.astype(bool), objects["box"][3])
    (back,) = read_coco_rle(coco_path)
    assert_same(back, objects)

    # and back into LS results: the same regions
    again = masks_to_brush_results(back.objects, score=0.9)
    assert again == task["predictions"][0]["result"]


def test_overlapping_objects_survive_coco(objects, tmp_path):
    overlapping = dict(objects)
    overlapping["big"] = np.ones_like(objects["box"])
    (video,) = ls_export_to_masks([ls_task(overlapping)])
    (back,) = read_coco_rle(write_coco_rle([video], tmp_path / "o.json"))
    assert_same(back, overlapping)


def test_annotation_preferred_and_regions_of_a_label_unioned(objects):
    task = ls_task(objects)
    halves = masks_to_brush_results({"box": objects["box"] & (np.arange(32) < 8)})
    halves += masks_to_brush_results({"box": objects["box"] & (np.arange(32) >= 8)}, id_prefix="b")
    task["annotations"] = [
        {"id": 1, "was_cancelled": True, "result": []},
        {"id": 2, "was_cancelled": False, "result": halves},
    ]
    assert select_results(task) == halves and select_results(task, "predictions") != halves
    video = ls_task_to_masks(task)
    assert list(video.objects) == ["box"]
    np.testing.assert_array_equal(video.objects["box"].to_array(), objects["box"])


def test_export_names_videos_by_their_frame_folder(objects):
    videos = ls_export_to_masks([ls_task(objects, 1, "clip_a"), ls_task(objects, 2, "clip_b"), {"id": 3}])
    assert [v.name for v in videos] == ["clip_a", "clip_b"]
    same = ls_export_to_masks([ls_task(objects, 1, "x"), ls_task(objects, 2, "x")])
    assert [v.name for v in same] == ["task_1", "task_2"]


def test_bad_inputs_raise_clear_errors(tmp_path, objects):
    with pytest.raises(ExportError, match="frames"):
        task = ls_task(objects)
        task["data"]["frames"] = task["data"]["frames"][:2]
        ls_task_to_masks(task)
    (tmp_path / "bad.json").write_text('{"videos": 3}')
    with pytest.raises(ExportError):
        read_coco_rle(tmp_path / "bad.json")
    with pytest.raises(ExportError, match="no PNG"):
        read_png_folders(tmp_path)
    many = VideoMasks("v", 2, 2, ["0"], {str(i): FrameMasks(1, 2, 2) for i in range(256)})
    with pytest.raises(ExportError, match="8-bit"):
        many.label_map(0)


def test_cli_export_and_import(objects, tmp_path, capsys):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([ls_task(objects, 11, "clip_a")]))
    assert main(["export", str(export), "--to", "png", "--out", str(tmp_path / "png")]) == 0
    assert main(["export", str(export), "--to", "coco", "--out", str(tmp_path / "m.json")]) == 0
    (png_video,) = read_masks(tmp_path / "png")
    (coco_video,) = read_masks(tmp_path / "m.json")
    assert_same(png_video, objects)
    assert_same(coco_video, objects)

    # new tasks with predictions, from PNG folders
    assert main(["import", str(tmp_path / "png"), "--out", str(tmp_path / "tasks.json"),
                 "--url-prefix", "/data/local-files/?d=frames"]) == 0  # fmt: skip
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert tasks[0]["data"]["frames"][0] == "/data/local-files/?d=frames/clip_a/00000.jpg"
    assert_same(ls_task_to_masks(tasks[0]), objects)

    # predictions for the existing tasks, from COCO RLE
    assert (
        main(
            [
                "import",
                str(tmp_path / "m.json"),
                "--out",
                str(tmp_path / "preds.json"),
                "--tasks",
                str(export),
            ]
        )
        == 0
    )
    (pred,) = json.loads((tmp_path / "preds.json").read_text())
    assert pred["task"] == 11 and pred["model_version"] == "decaf-import"
    assert_same(ls_task_to_masks({"id": 11, "data": {}, "predictions": [pred]}), objects)
    assert "written to" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------ bad input (2) and partial failures (1)


def refused(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err, captured.err
    return captured.err


def test_corrupt_rle_in_an_export_is_bad_input(objects, tmp_path, capsys):
    good, bad = ls_task(objects, 11, "clip_a"), ls_task(objects, 12, "clip_b")
    bad["predictions"][0]["result"][2]["value"]["rle"] = [1, 2, 3]
    region = bad["predictions"][0]["result"][2]["id"]
    header = ls_task(objects, 13, "clip_c")
    header["predictions"][0]["result"][0]["value"]["rle"][:4] = [255, 255, 255, 255]  # 4 G values claimed
    no_size = ls_task(objects, 14, "clip_d")
    del no_size["predictions"][0]["result"][1]["original_width"]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([good, bad, header, no_size]))
    assert main(["export", str(export), "--to", "png", "--out", str(tmp_path / "png")]) == 2
    err = refused(capsys)
    assert "3 problem(s) in the Label Studio export" in err
    assert f"{export}: task 12: result '{region}': corrupt value.rle" in err
    assert f"{export}: task 13: result '0_0': corrupt value.rle" in err
    assert f"{export}: task 14: result '0_1': original_height/original_width 24/None are not sizes" in err
    assert not (tmp_path / "png").exists()  # nothing written from a bad export

    export.write_text("[{")
    assert main(["export", str(export), "--to", "coco", "--out", str(tmp_path / "m.json")]) == 2
    assert f"cannot read Label Studio export {export}" in refused(capsys)


def test_export_that_cannot_write_a_video_exits_1(objects, tmp_path, capsys):
    many = {f"object {k}": objects["corner"] for k in range(256)}  # more than an 8-bit palette holds
    export = tmp_path / "export.json"
    export.write_text(json.dumps([ls_task(objects, 1, "clip_a"), ls_task(many, 2, "clip_b")]))
    assert main(["export", str(export), "--to", "png", "--out", str(tmp_path / "png")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"1 video(s), 3 object(s) written to {tmp_path / 'png'}"
    assert lines[1] == "1 failed:" and lines[2].startswith("  clip_b: 256 objects do not fit")
    assert "--to coco" in lines[2] and not (tmp_path / "png" / "clip_b").exists()
    assert list(json.loads((tmp_path / "png" / "objects.json").read_text())) == ["clip_a"]
    assert main(["export", str(export), "--to", "coco", "--out", str(tmp_path / "m.json")]) == 0


def test_import_bad_masks_is_bad_input_and_unmatched_videos_exit_1(objects, tmp_path, capsys):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([ls_task(objects, 11, "clip_a"), ls_task(objects, 12, "clip_b")]))
    assert main(["export", str(export), "--to", "coco", "--out", str(tmp_path / "m.json")]) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    data["videos"][1]["objects"][2]["masks"][3]["counts"] = "zzzz"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert main(["import", str(tmp_path / "bad.json"), "--out", str(tmp_path / "t.json")]) == 2
    err = refused(capsys)
    assert (
        f"{tmp_path / 'bad.json'}: video 'clip_b': object 'corner' frame '00003': RLE counts are corrupt"
        in err
    )
    assert not (tmp_path / "t.json").exists()

    (tmp_path / "png" / "clip_a").mkdir(parents=True)
    (tmp_path / "png" / "clip_a" / "00000.png").write_bytes(b"not a png")
    assert main(["import", str(tmp_path / "png"), "--out", str(tmp_path / "t.json")]) == 2
    assert f"{tmp_path / 'png' / 'clip_a' / '00000.png'}: not a readable palette or grayscale PNG" in refused(
        capsys
    )

    # masks of two videos, but the project holds a task for only one of them
    capsys.readouterr()
    tasks = tmp_path / "tasks.json"
    tasks.write_text(
        json.dumps([{"id": 5, "data": {"frames": [f"/x/clip_a/{i:05d}.jpg" for i in range(N)]}}])
    )
    untied = json.loads((tmp_path / "m.json").read_text())
    for video in untied["videos"]:
        video["task_id"] = None  # matched by frame folder only
    (tmp_path / "untied.json").write_text(json.dumps(untied))
    args = ["import", str(tmp_path / "untied.json"), "--out", str(tmp_path / "p.json"), "--tasks", str(tasks)]
    assert main(args) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == ["1 failed:", f"  clip_b: no task in {tasks} has this id or frame folder"]
    (pred,) = json.loads((tmp_path / "p.json").read_text())
    assert pred["task"] == 5
    assert_same(ls_task_to_masks({"id": 5, "data": {}, "predictions": [pred]}), objects)

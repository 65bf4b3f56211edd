"""Dataset readers on tiny synthetic benchmarks written in each published layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decaf_backend.eval.datasets import DatasetError, load_dataset, reformat_reasonvos_video

from .synthetic_rvos import H, W, build_davis, build_mevis, build_reasonvos, build_revos, build_ytvos


def gt_stack(dataset, expr) -> np.ndarray:
    return np.stack([m > 0 for m in dataset.gt_masks(expr)])


def check_against_truth(dataset, truth) -> None:
    exprs = dataset.expressions()
    assert sorted(e.key for e in exprs) == sorted(truth)
    for expr in exprs:
        text, masks = truth[expr.key]
        assert expr.text == text
        np.testing.assert_array_equal(gt_stack(dataset, expr), masks, err_msg=expr.key)


def test_ref_youtube_vos_train_and_valid(tmp_path):
    truth = build_ytvos(tmp_path)
    train = load_dataset("ytvos", tmp_path, "train")
    assert train.name == "ref-youtube-vos" and train.has_gt
    check_against_truth(train, truth)
    expr = train.expressions()[0]
    assert expr.frames == ["00000", "00005", "00010", "00015"] and expr.obj_ids == ["1"]
    reader = expr.reader()
    assert len(reader) == 4 and reader[1].shape == (H, W, 3) and reader.info.width == W

    valid = load_dataset("ref-youtube-vos", tmp_path)  # default split: valid, no public GT
    assert valid.split == "valid" and not valid.has_gt and valid.submission_prefix == "Annotations"
    # the listed test video has no frames and is skipped
    assert [e.key for e in valid.expressions()] == ["vid_v/0", "vid_v/1"]
    with pytest.raises(DatasetError, match="no public ground truth"):
        next(iter(valid.gt_masks(valid.expressions()[0])))


def test_ref_davis_uses_the_lexicographic_anno_counter(tmp_path):
    truth = build_davis(tmp_path)
    valid = load_dataset("davis17", tmp_path)
    check_against_truth(valid, truth)  # GT through mask_dict.pkl
    ids = {e.key: e.anno_ids[0] for e in valid.expressions()}
    assert ids["bike/10"] == "2" and ids["bike/2"] == "4" and ids["cars/0"] == "12"
    check_against_truth(load_dataset("ref-davis17", tmp_path, "train"), truth)  # GT through Annotations PNGs


def test_mevis_union_of_instances_and_null_frames(tmp_path):
    truth = build_mevis(tmp_path)
    ds = load_dataset("mevis", tmp_path)
    assert ds.split == "valid_u" and ds.aggregation == "mevis"
    check_against_truth(ds, truth)
    expr = [e for e in ds.expressions() if e.exp_id == "0"][0]
    assert expr.anno_ids == ["10", "11"] and expr.obj_ids == ["0", "1"]
    valid = load_dataset("mevis", tmp_path, "valid")
    assert not valid.has_gt and valid.submission_prefix == "" and len(valid.expressions()) == 2
    assert valid.expressions()[0].anno_ids == []


def test_revos_nested_keys_types_and_foreground(tmp_path):
    truth = build_revos(tmp_path)
    ds = load_dataset("revos", tmp_path)
    check_against_truth(ds, truth)
    exprs = ds.expressions()
    assert [e.type_id for e in exprs] == [0, 1, 1, 2]
    assert exprs[0].video == "UVO/all/-x_Y1" and exprs[0].size == (H, W)
    assert exprs[0].frame_paths()[0].name == "img_0000.jpg"
    fg = np.stack(list(ds.foreground_masks(exprs[0])))
    np.testing.assert_array_equal(fg > 0, truth[exprs[1].key][1] | truth[exprs[2].key][1])


@pytest.mark.parametrize("v2", [False, True])
def test_reasonvos_original_and_decaf_v2(tmp_path, v2):
    truth = build_reasonvos(tmp_path, v2=v2)
    ds = load_dataset("reasonvos", tmp_path)
    check_against_truth(ds, truth)
    assert {e.anno_ids[0] for e in ds.expressions()} == {"MeViS_dog_park_01_1", "MeViS_dog_park_01_2"}


def test_reasonvos_renumbering_matches_decaf():
    data = {"source": "BURST", "frames": ["0"], "expressions": [
        {"exp_id": 0, "obj_id": 1, "exp_text": "a", "is_sent": True},
        {"exp_id": 3, "obj_id": 2, "exp_text": "b", "is_sent": True},
        {"exp_id": 0, "obj_id": 3, "exp_text": "c", "is_sent": True},
        {"exp_id": 3, "obj_id": 4, "exp_text": "d", "is_sent": True},
    ]}  # fmt: skip
    exprs = reformat_reasonvos_video("v", data)["expressions"]
    assert {k: v["exp"] for k, v in exprs.items()} == {"0": "c", "3": "d", "4": "a", "5": "b"}
    assert exprs["4"]["anno_id"] == ["BURST_v_1"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("kinetics", tmp_path)
    with pytest.raises(DatasetError, match="no split"):
        load_dataset("mevis", tmp_path, "test")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("mevis", tmp_path).expressions()
    (tmp_path / "meta_expressions_valid_.json").write_text(json.dumps({"videos": {"../../etc": {
        "frames": ["a"], "expressions": {"0": {"exp": "x", "anno_id": [1], "type_id": 0}}}}}))  # fmt: skip
    with pytest.raises(DatasetError, match="unsafe"):
        load_dataset("revos", tmp_path).expressions()

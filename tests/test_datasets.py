"""Dataset readers on tiny synthetic benchmarks written in each published layout."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from decaf_backend.eval.checks import check_dataset
from decaf_backend.eval.datasets import DatasetError, DatasetProblems, load_dataset, reformat_reasonvos_video

from .synthetic_rvos import (
    BUILDERS,
    H,
    W,
    build_davis,
    build_mevis,
    build_reasonvos,
    build_revos,
    build_ytvos,
)


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


# ------------------------------------------------------------------------------- up-front dataset check


@pytest.mark.parametrize("name", list(BUILDERS))
def test_sound_datasets_pass_the_check(name, tmp_path):
    build, split = BUILDERS[name]
    truth = build(tmp_path)
    check = check_dataset(load_dataset(name, tmp_path, split))
    assert check.problems == [] and sorted(e.key for e in check.expressions) == sorted(truth)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_check_reports_each_broken_entry_of_ytvos_and_davis(tmp_path):
    build_ytvos(tmp_path / "yt")
    meta = tmp_path / "yt" / "meta_expressions" / "train" / "meta_expressions.json"
    edit_json(meta, lambda d: d["videos"]["vid_a"]["expressions"]["1"].pop("obj_id"))
    edit_json(meta, lambda d: d["videos"]["vid_a"]["expressions"].update({"2": {"obj_id": "1"}, "3": "text"}))
    problems = check_dataset(load_dataset("ytvos", tmp_path / "yt", "train")).problems
    assert problems == [
        f"{meta}: video 'vid_a' expression '2': no expression text ('exp')",
        f"{meta}: video 'vid_a' expression '3': is a str, expected an object",
        f"{meta}: video 'vid_a' expression '1': obj_id [] is not a palette index",
    ]

    build_davis(tmp_path / "davis")
    pkl = tmp_path / "davis" / "valid" / "mask_dict.pkl"
    mask_dict = pickle.loads(pkl.read_bytes())
    del mask_dict["5"]  # counter 5 = bike's 6th exp_id in lexicographic order: "3"
    mask_dict["0"] = mask_dict["0"][:-1]
    pkl.write_bytes(pickle.dumps(mask_dict))
    problems = check_dataset(load_dataset("davis17", tmp_path / "davis")).problems
    assert problems == [
        f"{pkl}: anno_id 0: 3 masks, but video 'bike' lists 4 frames",
        f"{pkl}: anno_id 5: missing (needed by video 'bike' expression '3')",
    ]
    import shutil

    shutil.rmtree(tmp_path / "davis" / "train" / "Annotations" / "cars")
    problems = check_dataset(load_dataset("davis17", tmp_path / "davis", "train")).problems
    cars = tmp_path / "davis" / "train" / "Annotations" / "cars"
    assert problems == [f"{cars}: annotation folder missing (first needed by video 'cars' expression '0')"]


def test_check_reports_bad_revos_and_mevis_entries(tmp_path):
    build_revos(tmp_path / "revos")
    meta = tmp_path / "revos" / "meta_expressions_valid_.json"

    def break_meta(d):
        video = d["videos"]["UVO/all/-x_Y1"]
        video["expressions"]["1"]["type_id"] = "reasoning"
        video["expressions"]["2"]["anno_id"] = [{"id": 3}]
        d["videos"]["other"] = {"frames": "img_0000", "expressions": {}}
        d["videos"]["../up"] = {"frames": ["a"], "expressions": {}}

    edit_json(meta, break_meta)
    problems = check_dataset(load_dataset("revos", tmp_path / "revos")).problems
    assert problems == [
        f"{meta}: video 'UVO/all/-x_Y1' expression '1': type_id 'reasoning' is not 0 (referring), 1 (reasoning) or 2",
        f"{meta}: video 'UVO/all/-x_Y1' expression '2': anno_id [{{'id': 3}}] is not an id or a list of ids",
        f"{meta}: video 'other': 'frames' must be a non-empty list of frame names",
        f"{meta}: video '../up': unsafe video or expression id '../up'",
    ]
    with pytest.raises(DatasetProblems, match="4 problem"):
        load_dataset("revos", tmp_path / "revos").expressions()

    build_mevis(tmp_path / "mevis")
    mask_file = tmp_path / "mevis" / "valid_u" / "mask_dict.json"
    edit_json(mask_file, lambda d: d["10"].__setitem__(0, {"size": [12, 32], "counts": "0"}))
    edit_json(mask_file, lambda d: d["11"].__setitem__(1, {"size": [24, 32], "counts": "0"}))
    problems = check_dataset(load_dataset("mevis", tmp_path / "mevis")).problems
    assert problems == [
        f"{mask_file}: anno_id 10 frame '00000': RLE size [12, 32] differs from the frame size [24, 32]",
        f"{mask_file}: anno_id 11 frame '00001': RLE runs cover 0 pixels, not 24x32",
    ]


@pytest.mark.parametrize("v2", [False, True])
def test_check_reports_bad_reasonvos_entries(tmp_path, v2):
    build_reasonvos(tmp_path, v2=v2)
    if v2:
        pkl = tmp_path / "mask_dict_v2.pkl"
        mask_dict = pickle.loads(pkl.read_bytes())
        del mask_dict["MeViS_dog_park_01_2"]
        pkl.write_bytes(pickle.dumps(mask_dict))
        expected = [
            f"{pkl}: anno_id MeViS_dog_park_01_2: missing (needed by video 'dog_park_01' expression '0')"
        ]
    else:
        meta = tmp_path / "meta_expressions.json"
        edit_json(meta, lambda d: d["videos"]["dog_park_01"]["expressions"][1].pop("exp_text"))
        (tmp_path / "Annotations" / "MeViS_dog_park_01_2" / "00000.png").unlink()
        (tmp_path / "Annotations" / "MeViS_dog_park_01_2" / "00001.png").unlink()
        import shutil

        shutil.rmtree(tmp_path / "Annotations" / "MeViS_dog_park_01_1")
        ann = tmp_path / "Annotations" / "MeViS_dog_park_01_1"
        expected = [
            f"{meta}: video 'dog_park_01' expression #1: needs 'exp_id', 'obj_id' and 'exp_text'",
            f"{ann}: annotation folder missing (first needed by video 'dog_park_01' expression '1')",
        ]  # a missing PNG in an existing folder is an unannotated frame, as in VideoLISA's evaluator
    assert check_dataset(load_dataset("reasonvos", tmp_path)).problems == expected

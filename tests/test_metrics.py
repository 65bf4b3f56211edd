"""J / F / statistics / benchmark aggregation against values computed by the official evaluation code.

Every input and expected number comes from golden/jf (cases.npz, expected.json); the README's checks are
replayed: per pair J, F and boundary maps, absolute tolerances, db_statistics (numpy-2 quirks included),
DAVIS semi-supervised and unsupervised evaluation, MeViS and ReVOS aggregation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from decaf_backend.eval.metrics import (
    boundary_tolerance,
    davis_global_metrics,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk,
    evaluate_davis_sequence,
    expression_percent,
    f_measure,
    frame_scores,
    mevis_aggregate,
    pooled_percent_aggregate,
    r2vos_accuracy,
    r2vos_robustness,
    revos_aggregate,
    seg2bmap,
)
from tests.golden import golden_file

TOL = 1e-9  # golden/jf/README.md checks every value to 1e-9 (the stored values agree to 1e-12)


@pytest.fixture(scope="module")
def jf() -> tuple[np.lib.npyio.NpzFile, dict]:
    cases, expected = golden_file("jf", "cases.npz"), golden_file("jf", "expected.json")
    return np.load(cases), json.loads(expected.read_text())


def close(value: float, expected: float | None) -> bool:
    """Strict JSON null means NaN in expected.json."""
    if expected is None:
        return math.isnan(value)
    return abs(value - expected) <= TOL


def test_pairs_j_f_and_boundary_maps(jf):
    cases, expected = jf
    assert len(expected["pairs"]) > 0
    for pair in expected["pairs"]:
        gt, pred = cases[pair["key"] + "_gt"], cases[pair["key"] + "_pred"]
        void = cases[pair["key"] + "_void"] if pair["has_void"] else None
        assert list(gt.shape) == pair["shape"]
        assert (
            int(gt.astype(bool).sum()) == pair["gt_area"]
            and int(pred.astype(bool).sum()) == pair["pred_area"]
        )
        assert boundary_tolerance(gt.shape) == pair["bound_pix"], pair["name"]
        j = db_eval_iou(gt, pred, void)
        f = db_eval_boundary(gt, pred, void)
        assert close(j, pair["J"]), (pair["name"], j, pair["J"])
        assert close(f, pair["F"]), (pair["name"], f, pair["F"])
        assert close((j + f) / 2, pair["JF"])
        keep = 1 - void if void is not None else 1
        bmap_gt, bmap_pred = seg2bmap(gt * keep), seg2bmap(pred * keep)
        assert int(bmap_gt.sum()) == pair["n_boundary_gt"] and int(bmap_pred.sum()) == pair["n_boundary_pred"]
        if pair["bmap_stored"]:
            np.testing.assert_array_equal(
                bmap_gt, cases[pair["key"] + "_bmap_gt"].astype(bool), err_msg=pair["name"]
            )
            np.testing.assert_array_equal(bmap_pred, cases[pair["key"] + "_bmap_pred"].astype(bool))


def test_pairs_with_absolute_and_relative_tolerances(jf):
    cases, expected = jf
    for case in expected["pairs_absolute_tolerance"]:
        gt, pred = cases[case["key"] + "_gt"], cases[case["key"] + "_pred"]
        f = db_eval_boundary(gt, pred, bound_th=case["bound_th"])
        assert close(f, case["F"]), (case["name"], case["bound_th"], f, case["F"])


def test_f_measure_argument_order_and_stack_form(jf):
    cases, expected = jf
    pairs = [p for p in expected["pairs"] if list(p["shape"]) == [48, 64] and not p["has_void"]]
    gt = np.stack([cases[p["key"] + "_gt"] for p in pairs])
    pred = np.stack([cases[p["key"] + "_pred"] for p in pairs])
    np.testing.assert_allclose(db_eval_iou(gt, pred), [p["J"] for p in pairs], rtol=0, atol=TOL)
    np.testing.assert_allclose(db_eval_boundary(gt, pred), [p["F"] for p in pairs], rtol=0, atol=TOL)
    for p, g, s in zip(pairs, gt, pred):
        assert close(f_measure(s, g), p["F"]) and close(frame_scores(g, s)[1], p["F"])


def test_disk_kernel_sizes():
    # README: 5-pixel plus for r=1, 13 pixels for r=2, 197 for r=8
    assert disk(1).sum() == 5 and disk(2).sum() == 13 and disk(8).sum() == 197
    assert disk(8.0).shape == (17, 17)


def test_db_statistics_including_uint8_quirks(jf):
    cases, expected = jf
    for name, case in expected["db_statistics"].items():
        values = cases[case["key"]]
        assert len(values) == case["length"]
        mean, recall, decay = db_statistics(values)
        assert close(mean, case["mean"]) and close(recall, case["recall"]), name
        assert close(decay, case["decay"]), (name, decay, case["decay"])
        if "decay_numpy_lt_2" in case:
            assert close(db_statistics(values, numpy1_promotion=True)[2], case["decay_numpy_lt_2"])


@pytest.mark.parametrize("task", ["davis_semi_supervised", "davis_unsupervised"])
def test_davis_evaluation_per_object_and_global(jf, task):
    cases, expected = jf
    spec = expected[task]
    objects = []
    for seq, seq_spec in spec["per_sequence"].items():
        gt = cases[expected["sequences"][seq]["gt_key"]]
        pred = cases[seq + spec["pred_key_suffix"]]
        result = evaluate_davis_sequence(gt, pred, task=spec["task"], name=seq)
        assert len(result) == seq_spec["n_objects"] == len(seq_spec["objects"])
        for got, want in zip(result, seq_spec["objects"]):
            assert got.name == want["official_name"]
            assert len(got.J) == len(seq_spec["evaluated_frame_indices"])
            np.testing.assert_allclose(got.J, want["J_per_frame"], rtol=0, atol=TOL)
            np.testing.assert_allclose(got.F, want["F_per_frame"], rtol=0, atol=TOL)
            for key in ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay"):
                assert close(getattr(got, key), want[key]), (seq, got.name, key)
        objects += result
    metrics = davis_global_metrics(objects)
    for key, value in spec["global_metrics"].items():
        assert close(metrics[key], value), (task, key, metrics[key], value)
    for key, value in spec["script_global_csv_3dp"].items():
        assert float(f"{metrics[key]:.3f}") == value  # what evaluation_method.py printed


def test_semi_supervised_rejects_extra_predicted_ids():
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, 2:4, 2:4] = 1
    pred = gt.copy()
    pred[1, 5, 5] = 2
    with pytest.raises(ValueError, match="exceeds"):
        evaluate_davis_sequence(gt, pred, task="semi-supervised")


def _expression_targets(cases, expected):
    """Every object and every union of a golden sequence as one MeViS-style expression (255 → background)."""
    for seq in expected["sequences"].values():
        gt, pred = cases[seq["gt_key"]], cases[seq["pred_key"]]
        gt = np.where(gt == 255, 0, gt)
        n = seq["n_objects"]
        for target in seq["mevis_style_all_frames"]:
            if target["target"] == "union_all_objects":
                yield target, (gt >= 1) & (gt <= n), (pred >= 1) & (pred <= n)
            else:
                k = int(target["target"].rsplit("_", 1)[1])
                yield target, gt == k, pred == k


def test_mevis_and_revos_expression_scores_and_aggregates(jf):
    cases, expected = jf
    js, fs, rows = [], [], []
    for target, gt, pred in _expression_targets(cases, expected):
        scores = [frame_scores(g, p) for g, p in zip(gt, pred)]
        j_frames, f_frames = [s[0] for s in scores], [s[1] for s in scores]
        np.testing.assert_allclose(j_frames, target["J_per_frame"], rtol=0, atol=TOL)
        np.testing.assert_allclose(f_frames, target["F_per_frame"], rtol=0, atol=TOL)
        j, f = float(np.mean(j_frames)), float(np.mean(f_frames))
        assert close(j, target["J"]) and close(f, target["F"]) and close((j + f) / 2, target["JF"])
        assert expression_percent(j, f) == target["revos_rounded_percent"]
        js.append(j)
        fs.append(f)
        rows.append({"j": j, "f": f, "type_id": 0})
    want = expected["mevis_style_aggregate"]
    got = mevis_aggregate(js, fs)
    assert got["count"] == want["n_expressions"]
    assert close(got["J"], want["J"]) and close(got["F"], want["F"]) and close(got["JF"], want["JF"])
    want = expected["revos_style_aggregate_single_split"]
    for got in (pooled_percent_aggregate(rows), revos_aggregate(rows)["referring"]):
        assert got["count"] == want["n_expressions"]
        assert close(got["J"], want["J"]) and close(got["F"], want["F"]) and close(got["JF"], want["JF"])


def test_revos_splits_are_averaged_not_pooled():
    rows = [
        {"j": 1.0, "f": 1.0, "type_id": 0},
        {"j": 0.5, "f": 0.25, "type_id": 1},
        {"j": 0.0, "f": 0.0, "type_id": 1},
        {"j": 0.9, "f": 0.9, "type_id": 2},  # type 2 enters no mean
    ]
    out = revos_aggregate(rows)
    assert out["referring"]["J"] == 100.0 and out["reason"]["J"] == 25.0 and out["reason"]["F"] == 12.5
    assert out["overall"]["J"] == 62.5 and out["overall"]["count"] == 3
    assert out["overall"]["JF"] == (out["referring"]["JF"] + out["reason"]["JF"]) / 2


def test_r2vos_accuracy_and_robustness_use_raw_values():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    fg = np.ones((4, 4), np.uint8)
    pred01 = gt.copy()
    assert r2vos_accuracy(gt, pred01) == 1.0 and r2vos_robustness(gt, pred01, fg) == 1.0
    pred = pred01.copy()
    pred[3, 3] = 1  # one false-positive pixel out of 16 foreground pixels
    assert math.isclose(r2vos_robustness(gt, pred, fg), 1 - 1 / (16 + 1e-6))
    # a 0/255 prediction (what DecAF/VISA write) matches only background pixels and counts 255 per miss
    assert r2vos_accuracy(gt, pred01 * 255) == 12 / 16
    assert r2vos_robustness(gt, pred * 255, fg) == 0.0

"""`evaluate` end to end on tiny synthetic benchmarks in each published layout.

The segmenter is injected: `TruthSegmenter` answers with the fixture's own masks (J&F of ground truth
against itself must be exactly 100, which also proves the readers right), the oracle reads the dataset's
GT. `test_tiny_models_end_to_end` runs the real DecafPipeline on the tiny random models.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from decaf_backend.cli import main
from decaf_backend.errors import DecafError
from decaf_backend.eval.datasets import load_dataset
from decaf_backend.eval.report import format_table
from decaf_backend.eval.runner import EvaluationRunner
from decaf_backend.eval.segmenters import OracleSegmenter, PipelineFactory

from .synthetic_rvos import (
    BUILDERS,
    RendezvousOracleFactory,
    TruthSegmenter,
    build_davis,
    build_mevis,
    build_revos,
    build_ytvos,
)

REPO = Path(__file__).resolve().parents[1]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_ground_truth_scores_100_in_every_layout(name, tmp_path):
    build, split = BUILDERS[name]
    truth = build(tmp_path / "data")
    dataset = load_dataset(name, tmp_path / "data", split)
    report = EvaluationRunner(dataset, tmp_path / "out").run(TruthSegmenter(truth), progress=False)

    assert not report.failed and len(report.records) == len(truth)
    rows = read_csv(report.csv_path)
    assert sorted(f"{r['video']}/{r['exp_id']}" for r in rows) == sorted(truth)
    for row in rows:
        assert row["status"] == "ok" and float(row["J"]) == float(row["F"]) == float(row["JF"]) == 100.0
        assert row["expression"] == truth[f"{row['video']}/{row['exp_id']}"][0]
        assert int(row["frames"]) == len(truth[f"{row['video']}/{row['exp_id']}"][1])
    for record in report.records:
        assert record.j_frames == [1.0] * record.num_frames == record.f_frames
    overall = report.metrics["overall"]
    assert overall["J"] == overall["F"] == overall["JF"] == 100.0
    table = format_table(report)
    assert "J&F" in table and "100.00" in table
    summary = json.loads(report.summary_path.read_text())
    assert summary["expressions"] == len(truth) and summary["failed"] == 0
    if name == "revos":
        assert set(report.metrics) == {"referring", "reason", "overall"}
        assert report.metrics["referring"]["count"] == 1 and report.metrics["reason"]["count"] == 2
        assert report.metrics["overall"]["R"] == 100.0  # no false positives
        assert all(row["A"] and row["R"] for row in rows)


def test_rerun_skips_finished_expressions_and_retries_failures(tmp_path):
    truth = build_davis(tmp_path / "data")
    dataset = load_dataset("davis17", tmp_path / "data")
    calls: list[str] = []

    def flaky(expr):
        calls.append(expr.key)
        if expr.key == "bike/4":
            raise RuntimeError("GPU fell over")
        return truth[expr.key][1]

    runner = EvaluationRunner(dataset, tmp_path / "out")
    report = runner.run(flaky, limit=6, progress=False)
    assert len(calls) == 6 and [r.video + "/" + r.exp_id for r in report.failed] == ["bike/4"]
    failed = [r for r in read_csv(report.csv_path) if r["status"] == "error"]
    assert len(failed) == 1 and "GPU fell over" in failed[0]["error"] and failed[0]["J"] == ""
    assert report.metrics["overall"]["J"] == pytest.approx(500 / 6)  # a failure scores 0, as officially
    assert "1 failed" in format_table(report)

    calls.clear()
    report = EvaluationRunner(dataset, tmp_path / "out").run(TruthSegmenter(truth), progress=False)
    assert not report.failed and report.metrics["overall"]["JF"] == 100.0 and len(report.records) == 16

    def must_not_run(expr):
        raise AssertionError(f"{expr.key} was cached")

    again = EvaluationRunner(dataset, tmp_path / "out").run(must_not_run, progress=False)
    assert again.metrics == report.metrics
    (tmp_path / "out" / "cache" / "cars" / "3.json").unlink()
    calls.clear()
    EvaluationRunner(dataset, tmp_path / "out").run(
        lambda e: calls.append(e.key) or truth[e.key][1], progress=False
    )
    assert calls == ["cars/3"]


def test_other_run_in_the_same_folder_is_refused(tmp_path):
    truth = build_davis(tmp_path / "data")
    dataset = load_dataset("davis17", tmp_path / "data")
    EvaluationRunner(dataset, tmp_path / "out", signature={"mllm": "a"}).run(
        TruthSegmenter(truth), limit=1, progress=False
    )
    with pytest.raises(DecafError, match="another run"):
        EvaluationRunner(dataset, tmp_path / "out", signature={"mllm": "b"})
    runner = EvaluationRunner(dataset, tmp_path / "out", signature={"mllm": "b"}, restart=True)
    assert runner.cached(dataset.expressions()[0]) is None


@pytest.mark.parametrize(("builder", "name", "prefix"), [(build_ytvos, "ref-youtube-vos", "Annotations"),
                                                         (build_mevis, "mevis", "")])  # fmt: skip
def test_split_without_ground_truth_writes_the_submission_layout(builder, name, prefix, tmp_path):
    builder(tmp_path / "data")
    dataset = load_dataset(name, tmp_path / "data", "valid")
    exprs = dataset.expressions()
    masks = {e.key: np.zeros((len(e.frames), 24, 32), bool) for e in exprs}
    for i, m in enumerate(masks.values()):
        m[:, 2 : 5 + i, 3:9] = True
    report = EvaluationRunner(dataset, tmp_path / "out").run(lambda e: masks[e.key], progress=False)
    assert report.metrics == {} and all(r.status == "submitted" for r in report.records)
    for expr in exprs:
        for t, frame in enumerate(expr.frames):
            path = report.submission_dir / prefix / expr.video / expr.exp_id / f"{frame}.png"
            img = Image.open(path)
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), masks[expr.key][t].astype(np.uint8) * 255)
    with zipfile.ZipFile(report.submission_zip) as zf:
        listed = [n for n in zf.namelist() if n.endswith(".png")]
    first = exprs[0]
    assert len(listed) == sum(len(e.frames) for e in exprs)
    assert f"{prefix + '/' if prefix else ''}{first.video}/{first.exp_id}/{first.frames[0]}.png" in listed
    assert "no public ground truth" in format_table(report)


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray for the worker tests (2 CPUs, 200 MB object store, a private temp dir); workers
    import this checkout (tests and all) through PYTHONPATH."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="er", dir=REPO / "tmp" if (REPO / "tmp").is_dir() else None)
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             _temp_dir=temp, runtime_env={"env_vars": {"PYTHONPATH": python_path}})  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_workers_run_on_ray_and_match_a_single_process(tmp_path, local_ray):
    build_davis(tmp_path / "data")
    dataset = load_dataset("davis17", tmp_path / "data")
    factory = RendezvousOracleFactory("davis17", str(tmp_path / "data"), "valid", str(tmp_path / "meet"), 2,
                                      fail=("bike/4",))  # fmt: skip
    report = EvaluationRunner(dataset, tmp_path / "ray").run(
        factory=factory, workers=2, devices=["cpu", "cpu"], progress=False
    )
    assert [f"{r.video}/{r.exp_id}" for r in report.failed] == ["bike/4"]
    assert report.failed[0].error == "RuntimeError: bike/4 fell over"
    workers = {r.object_name for r in report.records if r.status == "ok"}
    assert len(workers) == 2 and all(w.endswith(":") for w in workers)  # two processes, GPUs hidden

    single = EvaluationRunner(dataset, tmp_path / "single").run(OracleSegmenter(dataset), progress=False)
    drop = ("object_name", "seconds", "status", "error", "JF", "J", "F")
    ray_rows, single_rows = read_csv(report.csv_path), read_csv(single.csv_path)
    assert [{k: v for k, v in r.items() if k not in drop} for r in ray_rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in single_rows
    ]
    for ray_row, single_row in zip(ray_rows, single_rows):
        if ray_row["status"] == "ok":
            assert (ray_row["J"], ray_row["F"], ray_row["JF"]) == (
                single_row["J"],
                single_row["F"],
                single_row["JF"],
            )
    assert report.metrics["overall"]["JF"] == pytest.approx(100 * 15 / 16)  # the failure scores 0


def test_cli_workers_on_ray(tmp_path, local_ray, capsys):
    build_mevis(tmp_path / "data")
    out = tmp_path / "out"
    assert evaluate(tmp_path / "data", out, "--oracle", "--save-masks", "--workers", "2") == 0
    assert "100.00" in capsys.readouterr().out
    (out / "predictions" / "clip1" / "1" / "00002.png").unlink()
    args = ["--predictions", str(out / "predictions"), "--devices", "cpu,cpu"]
    assert evaluate(tmp_path / "data", tmp_path / "again", *args) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "1 expression(s) failed (not cached: a rerun retries them):"
    assert lines[-1].startswith("  clip1/1: DecafError: prediction ") and "00002.png missing" in lines[-1]


def test_cli_evaluate_oracle_with_masks_and_overlays(tmp_path, capsys):
    truth = build_mevis(tmp_path / "data")
    out = tmp_path / "out"
    args = ["evaluate", "--dataset", "mevis", "--root", str(tmp_path / "data"), "--out", str(out), "--oracle",
            "--save-masks", "--overlay", "gif", "--quiet"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "J&F" in printed and "100.00" in printed and "results.csv" in printed
    assert len(read_csv(out / "results.csv")) == len(truth)
    assert len(list((out / "predictions" / "clip1" / "0").glob("*.png"))) == 5
    with Image.open(out / "overlays" / "clip1" / "0.gif") as gif:
        assert gif.n_frames == 5
    assert main(["evaluate", "--dataset", "nope", "--root", str(tmp_path), "--oracle"]) == 2

    # score the written PNGs as existing predictions; a missing PNG fails (and zeroes) its expression
    (out / "predictions" / "clip1" / "1" / "00003.png").unlink()
    args = ["evaluate", "--dataset", "mevis", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "again"),
            "--predictions", str(out / "predictions"), "--quiet"]  # fmt: skip
    assert main(args) == 1
    rows = {r["exp_id"]: r for r in read_csv(tmp_path / "again" / "results.csv")}
    assert rows["0"]["JF"] == "100.0" and rows["1"]["status"] == "error" and "00003.png" in rows["1"]["error"]
    assert "1 failed" in capsys.readouterr().out


def test_tiny_models_end_to_end(tmp_path, request):
    """The real DecafPipeline with the tiny random models on a synthetic Ref-DAVIS split (random masks:
    only completeness and ranges are checked)."""
    tiny = request.getfixturevalue("tiny_models")
    build_davis(tmp_path / "data", n=4)
    dataset = load_dataset("davis17", tmp_path / "data")
    factory = PipelineFactory(
        mllm=str(tiny["qwen2_5_vl"]), sam2=str(tiny["sam2"]), device="cpu", dtype="fp32"
    )
    report = EvaluationRunner(dataset, tmp_path / "out", overlay="gif").run(
        factory=factory, limit=2, progress=False
    )
    assert not report.failed, [r.error for r in report.failed]
    rows = read_csv(report.csv_path)
    assert len(rows) == 2 and all(0.0 <= float(r["JF"]) <= 100.0 for r in rows)
    assert all(r.object_name for r in report.records)
    assert len(list((tmp_path / "out" / "overlays").rglob("*.gif"))) == 2
    assert "random-weight" in format_table(report)


def test_pipeline_style_results_are_reduced_and_reported(tmp_path):
    """A VideoSegmentation (with an unpicklable live session) gives its masks, object name, score and points."""
    import threading

    from decaf_backend.types import FrameMasks, VideoInfo, VideoSegmentation

    truth = build_mevis(tmp_path / "data")

    def segment(expr):
        masks = truth[expr.key][1]
        return VideoSegmentation(
            prompt=expr.text,
            object_name="lizard",
            video=VideoInfo(len(masks), 0.0, 32, 24),
            key_frame_indices=[0, 2],
            masks=FrameMasks.from_array(masks),
            points=[{"frame": 0, "x": 4.0, "y": 5.0, "value": 0.9}],
            scores={"score": 0.75},
            session=threading.Lock(),
        )

    dataset = load_dataset("mevis", tmp_path / "data")
    report = EvaluationRunner(dataset, tmp_path / "out", overlay="mp4").run(segment, progress=False)
    rows = read_csv(report.csv_path)
    assert all(r["object_name"] == "lizard" and r["score"] == "0.75" and r["JF"] == "100.0" for r in rows)
    assert sorted(p.name for p in (tmp_path / "out" / "overlays" / "clip1").iterdir()) == ["0.mp4", "1.mp4"]


# ------------------------------------------------------------------------------- bad input: exit code 2


def evaluate(root, out, *extra, dataset="mevis"):
    return main(["evaluate", "--dataset", dataset, "--root", str(root), "--out", str(out), "--quiet", *extra])


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def bad_input_message(capsys) -> str:
    """stderr of a refused run: one clear message, no traceback, nothing on stdout."""
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err, captured.err
    assert "J&F" not in captured.out
    return captured.err


def test_expressions_given_as_a_list_is_bad_input(tmp_path, capsys):
    build_mevis(tmp_path / "data")
    meta = tmp_path / "data" / "valid_u" / "meta_expressions.json"
    edit_json(
        meta,
        lambda d: d["videos"]["clip1"].update(expressions=list(d["videos"]["clip1"]["expressions"].values())),
    )
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle") == 2
    err = bad_input_message(capsys)
    assert f"{meta}: video 'clip1': 'expressions' is a list, expected an object keyed by expression id" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written

    meta.write_text('{"videos": {"clip1": ')
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle") == 2
    assert f"{meta} is not valid JSON" in bad_input_message(capsys)


def test_corrupt_rle_in_the_mask_file_is_bad_input(tmp_path, capsys):
    build_mevis(tmp_path / "data")
    mask_file = tmp_path / "data" / "valid_u" / "mask_dict.json"
    edit_json(mask_file, lambda d: d["11"].__setitem__(3, {"size": [24, 32], "counts": "zzzz"}))
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle") == 2
    assert f"{mask_file}: anno_id 11 frame '00003': RLE counts are corrupt" in bad_input_message(capsys)

    # an empty counts string decodes to random pixels in pycocotools: caught by counting the runs
    edit_json(mask_file, lambda d: d["11"].__setitem__(3, {"size": [24, 32], "counts": ""}))
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle") == 2
    assert "anno_id 11 frame '00003': RLE runs cover 0 pixels, not 24x32" in bad_input_message(capsys)


def test_missing_listed_frame_is_bad_input_even_if_never_read(tmp_path, capsys):
    build_mevis(tmp_path / "data")
    frame = tmp_path / "data" / "valid_u" / "JPEGImages" / "clip1" / "00003.jpg"
    frame.unlink()  # the oracle never reads frames: only the up-front check can notice
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle") == 2
    meta = tmp_path / "data" / "valid_u" / "meta_expressions.json"
    assert f"{meta}: video 'clip1' frame '00003': not found in {frame.parent}" in bad_input_message(capsys)


def test_missing_ids_are_bad_input(tmp_path, capsys):
    build_mevis(tmp_path / "data")
    mask_file = tmp_path / "data" / "valid_u" / "mask_dict.json"
    edit_json(mask_file, lambda d: d.pop("10"))
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle") == 2
    err = bad_input_message(capsys)
    assert f"{mask_file}: anno_id 10: missing (needed by video 'clip1' expression '0')" in err

    build_revos(tmp_path / "revos")
    meta = tmp_path / "revos" / "meta_expressions_valid_.json"
    edit_json(meta, lambda d: d["videos"]["UVO/all/-x_Y1"]["expressions"]["0"].pop("anno_id"))
    assert evaluate(tmp_path / "revos", tmp_path / "out2", "--oracle", dataset="revos") == 2
    err = bad_input_message(capsys)
    assert (
        f"{meta}: video 'UVO/all/-x_Y1' expression '0': no 'anno_id': its ground truth cannot be found" in err
    )


def test_revos_expression_without_anno_id_is_never_scored_against_nothing(tmp_path):
    """Without the up-front check (library use), the expression fails instead of scoring empty GT."""
    truth = build_revos(tmp_path / "data")
    meta = tmp_path / "data" / "meta_expressions_valid_.json"
    edit_json(meta, lambda d: d["videos"]["UVO/all/-x_Y1"]["expressions"]["2"].pop("anno_id"))
    dataset = load_dataset("revos", tmp_path / "data")
    report = EvaluationRunner(dataset, tmp_path / "out").run(TruthSegmenter(truth), progress=False)
    (failed,) = report.failed
    assert failed.exp_id == "2" and "no 'anno_id'" in failed.error and failed.j is None


def test_every_problem_is_listed_at_once_before_any_model_loads(tmp_path, capsys):
    build_revos(tmp_path / "data")
    root = tmp_path / "data"
    edit_json(root / "meta_expressions_valid_.json",
              lambda d: d["videos"]["UVO/all/-x_Y1"]["expressions"]["0"].pop("anno_id"))  # fmt: skip
    edit_json(root / "mask_dict_foreground.json",
              lambda d: d["UVO/all/-x_Y1"]["masks_rle"].__setitem__(1, {"size": [24, 32], "counts": "P"}))  # fmt: skip
    (root / "JPEGImages" / "UVO" / "all" / "-x_Y1" / "img_0002.jpg").unlink()
    missing_model = str(tmp_path / "no-such-model")
    assert (
        evaluate(root, tmp_path / "out", "--mllm", missing_model, "--sam2", missing_model, dataset="revos")
        == 2
    )
    err = bad_input_message(capsys)
    assert "3 problem(s) in revos valid" in err
    assert "expression '0': no 'anno_id'" in err
    assert "frame 'img_0002': not found in" in err
    assert "mask_dict_foreground.json: video 'UVO/all/-x_Y1' frame 'img_0001': RLE counts are corrupt" in err
    assert "no-such-model" not in err  # the models were never looked for

    assert evaluate(root, tmp_path / "out", "--check-only", dataset="revos") == 2
    assert "3 problem(s)" in bad_input_message(capsys)


def test_check_only_checks_and_stops(tmp_path, capsys):
    build_davis(tmp_path / "data")
    out = tmp_path / "out"
    assert evaluate(tmp_path / "data", out, "--check-only", dataset="davis17") == 0
    printed = capsys.readouterr().out
    assert "16 expressions, 2 videos, 8 frames" in printed and "every listed frame and annotation" in printed
    assert not out.exists()


def test_oracle_without_ground_truth_is_a_direct_error(tmp_path, capsys):
    build_mevis(tmp_path / "data")
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle", "--split", "valid") == 2
    err = bad_input_message(capsys)
    assert "--oracle needs ground truth, and mevis split 'valid' has none" in err and "valid_u" in err
    assert not (tmp_path / "out").exists()


def test_oracle_numbers_that_are_100(tmp_path, capsys):
    """What the README promises: J, F, J&F (and ReVOS's R) are 100 under --oracle; ReVOS's A is not,
    because the official A compares the 0/255 PNG values with 0/1 ground truth."""
    build_revos(tmp_path / "data")
    assert evaluate(tmp_path / "data", tmp_path / "out", "--oracle", dataset="revos") == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics_percent"]
    for split in ("referring", "reason", "overall"):
        assert (
            metrics[split]["J"] == metrics[split]["F"] == metrics[split]["JF"] == metrics[split]["R"] == 100.0
        )
        assert 0 < metrics[split]["A"] < 100.0


def test_failed_expressions_exit_1_and_are_listed_at_the_end(tmp_path, capsys):
    build_mevis(tmp_path / "data")
    preds = tmp_path / "preds"
    assert evaluate(tmp_path / "data", tmp_path / "oracle", "--oracle", "--save-masks") == 0
    (tmp_path / "oracle" / "predictions").rename(preds)
    (preds / "clip1" / "0" / "00001.png").unlink()
    (preds / "clip1" / "1" / "00004.png").unlink()
    capsys.readouterr()
    assert evaluate(tmp_path / "data", tmp_path / "out", "--predictions", str(preds)) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3] == "2 expression(s) failed (not cached: a rerun retries them):"
    assert lines[-2].startswith("  clip1/0: DecafError: prediction ") and lines[-2].endswith(
        "00001.png missing or unreadable"
    )
    assert lines[-1].startswith("  clip1/1: DecafError: prediction ") and "00004.png" in lines[-1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [f["expression"] for f in summary["failures"]] == ["clip1/0", "clip1/1"]
